"""Reading, checking and writing photos.

Conventions: an image is an ``H x W x 3`` ``uint8`` RGB array. Pixel ``(x, y)`` covers the square
``[x, x + 1) x [y, y + 1)``, so its centre is at ``(x + 0.5, y + 0.5)``; a bounding box
``[x1, y1, x2, y2]`` is in these continuous pixel coordinates. EXIF orientation is applied on
reading, so every reader sees the photo upright.

Every reader goes through one loader, which refuses an image with more pixels than a cap
(:data:`MAX_PIXELS`, or the ``DELFX_MAX_PIXELS`` environment variable, or a ``max_pixels``
argument) from its header, before decoding it, and which scales 16-bit, 32-bit and float images
into ``0..255`` rather than clipping them.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from delfx.errors import InputError

log = logging.getLogger(__name__)

#: File name suffixes taken for photos (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

#: Default cap on the pixels decoded per image (40 megapixels: about 120 MB as RGB ``uint8``).
MAX_PIXELS = 40_000_000

#: Environment variable that overrides :data:`MAX_PIXELS`, read at every call.
MAX_PIXELS_ENV = "DELFX_MAX_PIXELS"

_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

#: EXIF orientation -> the turn that makes the photo upright (as ``ImageOps.exif_transpose``).
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def pixel_cap(max_pixels: int | None = None) -> int:
    """The pixel cap in force: ``max_pixels`` if given, else ``$DELFX_MAX_PIXELS``, else
    :data:`MAX_PIXELS`.

    Raises:
        InputError: the cap is not a whole number of at least 1 (the message names its source).
    """
    if max_pixels is not None:
        source, raw = "max_pixels", str(max_pixels)
    elif os.environ.get(MAX_PIXELS_ENV, "").strip():
        source, raw = MAX_PIXELS_ENV, os.environ[MAX_PIXELS_ENV].strip()
    else:
        source, raw = "delfx.io.images.MAX_PIXELS", str(MAX_PIXELS)
    try:
        cap = int(raw)
    except ValueError:
        try:
            cap = int(float(raw)) if float(raw).is_integer() else 0
        except ValueError:
            cap = 0
    if cap < 1:
        raise InputError(
            f"{source}={raw!r}: expected a whole number of pixels >= 1, e.g. 100000000"
        )
    return cap


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` shrunk so that the longer side is at most ``max_side`` (never grown)."""
    scale = max_side / max(width, height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


class _Opened(NamedTuple):
    image: Image.Image  # decoded and upright; a JPEG may be decoded at reduced scale
    size: tuple[int, int]  # the full upright (width, height), whatever the decode scale
    format: str | None  # the file's format, e.g. "JPEG"
    upright: bool  # the file carries no EXIF rotation


def _cap_error(path: Path, full: tuple[int, int], decoded: tuple[int, int], cap: int) -> InputError:
    w, h = full
    at = "" if decoded == full else f", decoded at {decoded[0]}x{decoded[1]}"
    need = decoded[0] * decoded[1]
    return InputError(
        f"{path}: {w}x{h} image{at} ({need / 1e6:.1f} megapixels) exceeds the cap of "
        f"{cap / 1e6:g} megapixels; to read it, raise the cap, e.g. {MAX_PIXELS_ENV}={need}"
    )


def _open_checked(
    path: Path,
    *,
    max_pixels: int | None = None,
    max_side: int | None = None,
    data: bytes | None = None,
) -> _Opened:
    """Open an image, check its size against the pixel cap from the header, then fully decode it.

    Every decoder complaint becomes one :class:`InputError` line naming the file. With
    ``max_side``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps at
    least twice the pixels needed (Pillow's ``thumbnail`` does the same), then resized with
    Lanczos to :func:`fit_size`; other formats are decoded in full and left at full size.
    """
    cap = pixel_cap(max_pixels)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < cap:  # PIL refuses above 2 x its limit: keep that above ours
        Image.MAX_IMAGE_PIXELS = cap
    try:
        with warnings.catch_warnings():  # PIL's raw bomb warning: our cap check replaces it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as img:
                full = img.size
                target = fit_size(*full, max_side) if max_side is not None else full
                drafted = None
                if target != full:  # JPEG only; nothing is decoded yet
                    drafted = img.draft(None, (2 * target[0], 2 * target[1]))
                if img.size[0] * img.size[1] > cap:
                    raise _cap_error(path, full, img.size, cap)
                img.load()  # full decode: a truncated file fails here, not later
                fmt = img.format
                orientation = img.getexif().get(0x0112, 1)
                out: Image.Image = img
                if drafted is not None and img.size != target:  # box: the file's extent
                    out = img.resize(target, Image.Resampling.LANCZOS, box=drafted[1])
                if orientation in _TURNS:
                    out = out.transpose(_TURNS[orientation])
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file (cannot identify its format)") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise InputError(
            f"{path}: image of more than {limit / 1e6:g} megapixels exceeds the cap of "
            f"{cap / 1e6:g} megapixels; to read it, raise the cap with {MAX_PIXELS_ENV}"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: unreadable or truncated image ({exc})") from None
    size = (full[1], full[0]) if orientation in (5, 6, 7, 8) else full  # these turn by 90 degrees
    return _Opened(out, size, fmt, orientation in (0, 1))


def _scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly onto ``0..255``: ``H x W`` any dtype -> ``H x W`` ``uint8``."""
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    out = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.rint(np.clip(out, 0.0, 255.0, out=out), out=out).astype(np.uint8)


def _grey_to_uint8(img: Image.Image) -> np.ndarray:
    """A high bit-depth or float grey image as ``H x W`` ``uint8``, scaled rather than clipped.

    16-bit modes map ``0..65535`` onto ``0..255`` (divide by 257); ``"I"`` (32-bit integer) does
    the same when its values lie in ``0..65535``, else maps its ``min..max``; ``"F"`` maps
    ``[0, 1]`` when its values lie there, else its finite ``min..max`` (NaN becomes 0).
    """
    if img.mode not in (*_UINT16_MODES, "I", "F"):
        img = img.convert("I")  # any other 16-bit integer layout
    values = np.asarray(img)
    if values.dtype.kind in "ui" and values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= 65535:  # rint(v / 257) exactly, in integers
            return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return _scale_to_uint8(values, lo, hi)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    values = np.where(finite, values, np.float32(0.0)) if not finite.all() else values
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    return _scale_to_uint8(values, lo, hi)


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    """A decoded image of any mode as an ``H x W x 3`` ``uint8`` RGB array.

    High bit-depth and float grey modes (``"I;16*"``, ``"I"``, ``"F"``) are scaled into
    ``0..255`` (see :func:`_grey_to_uint8`); PIL already reduces 48- and 64-bit PNG and TIFF to
    8 bits per channel by their high byte. Every other mode (``"1"``, ``"L"``, ``"LA"``, ``"P"``,
    ``"PA"``, ``"RGBA"``, ``"CMYK"``, ...) goes through PIL's conversion, alpha dropped.

    Raises:
        InputError: PIL cannot convert the mode to RGB (the message names the file).
    """
    try:
        if img.mode in ("I", "F") or img.mode.startswith("I;16"):
            log.debug("%s: scaling a %s image into 0..255", path, img.mode)
            return np.repeat(_grey_to_uint8(img)[:, :, None], 3, axis=2)
        return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot convert a {img.mode} image to RGB ({exc})") from None


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = None,
    max_side: int | None = None,
    data: bytes | None = None,
) -> np.ndarray:
    """Read a photo as an upright RGB array.

    Args:
        path: an image file (with ``data``: only the name errors give, e.g. an upload's).
        max_pixels: the pixel cap (default: :func:`pixel_cap`, i.e. ``$DELFX_MAX_PIXELS`` or
            :data:`MAX_PIXELS`); checked from the header, before decoding.
        max_side: when given, shrink on load so that the longer side is at most ``max_side``,
            to the same size as :func:`resize_max` of the full image and close to it in value:
            a JPEG is decoded at reduced DCT scale, then resized with Lanczos. Keypoints found
            on the result are in its pixels, not the file's: scale them by the ratio of
            :func:`image_size` to the result's size.
        data: the encoded image itself (bytes of a file), decoded with the same checks.

    Returns:
        ``H x W x 3`` ``uint8`` RGB array (``max(H, W) <= max_side`` when given).

    Raises:
        InputError: the file is missing, not an image, truncated, or over the pixel cap; the
            message names it.
    """
    path = Path(path)
    if max_side is not None and (int(max_side) != max_side or max_side < 1):
        raise InputError(f"{path}: max_side must be a whole number >= 1, got {max_side!r}")
    opened = _open_checked(path, max_pixels=max_pixels, max_side=max_side, data=data)
    image = _to_rgb(opened.image, path)
    if max_side is None:
        return image
    target = fit_size(*opened.size, int(max_side))  # from the full size, as resize_max would
    del opened  # free the decoded PIL image before resizing
    if (image.shape[1], image.shape[0]) == target:
        return image
    return np.asarray(Image.fromarray(image).resize(target, Image.Resampling.LANCZOS))


def image_size(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> tuple[int, int]:
    """Return ``(width, height)`` of an upright photo, checking that it decodes.

    Raises:
        InputError: as :func:`read_image`.
    """
    return _open_checked(Path(path), max_pixels=max_pixels).size


def has_image_suffix(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` ends with one of :data:`IMAGE_SUFFIXES`."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_photos(folder: str | os.PathLike[str], ignore: Sequence[str] = ()) -> list[Path]:
    """List the photos in a folder, sorted by name; hidden files are ignored.

    Every other regular file must carry an image suffix: anything else is an error, so a stray
    file is noticed rather than silently skipped. Sub-folders, and files named in ``ignore``
    (such as a ``labels.json``), are skipped.

    Raises:
        InputError: the folder is missing, or holds a file that is not an image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    photos = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or entry.name in ignore:
            continue
        if not has_image_suffix(entry):
            raise InputError(
                f"{entry}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})"
            )
        photos.append(entry)
    return photos


def crop_box(image: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
    """Crop an image to a box, as the revisited protocol crops its queries.

    The box corners are rounded to whole pixels (as PIL's ``crop`` does) and clipped to the image.

    Args:
        image: ``H x W x C`` array.
        bbox: ``[x1, y1, x2, y2]`` in pixel coordinates.

    Returns:
        ``h x w x C`` view of ``image``.

    Raises:
        InputError: the box has fewer than four values or leaves an empty crop.
    """
    if len(bbox) != 4:
        raise InputError(f"bbx {list(bbox)}: expected 4 values [x1, y1, x2, y2]")
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (round(float(v)) for v in bbox)
    x1, x2 = max(0, x1), min(w, x2)
    y1, y2 = max(0, y1), min(h, y2)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"bbx {list(bbox)}: empty crop on an image of size {w}x{h}")
    return image[y1:y2, x1:x2]


def resize_max(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink an image so that its longer side is at most ``max_side`` (never enlarges).

    Args:
        image: ``H x W x 3`` ``uint8`` array.
        max_side: the longest side allowed, in pixels.

    Returns:
        ``h x w x 3`` ``uint8`` array with ``max(h, w) <= max_side``.
    """
    h, w = image.shape[:2]
    size = fit_size(w, h, max_side)
    if size == (w, h):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """Encode an ``H x W x 3`` ``uint8`` RGB array as JPEG bytes (deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg_bytes_for(
    path: str | os.PathLike[str], quality: int = 95, *, max_pixels: int | None = None
) -> bytes:
    """Return JPEG bytes for a photo: its own bytes when it is an upright JPEG, else re-encoded.

    The file is fully decoded first (under the pixel cap, as :func:`read_image`), so a truncated
    or corrupt file is rejected here; a 16-bit or float image is scaled into ``0..255``.
    """
    path = Path(path)
    opened = _open_checked(path, max_pixels=max_pixels)
    if opened.format == "JPEG" and opened.upright:
        return path.read_bytes()
    return encode_jpeg(_to_rgb(opened.image, path), quality)

"""Reading, checking and writing photos.

Conventions: an image is an ``H x W x 3`` ``uint8`` RGB array. Pixel ``(x, y)`` covers the square
``[x, x + 1) x [y, y + 1)``, so its centre is at ``(x + 0.5, y + 0.5)``; a bounding box
``[x1, y1, x2, y2]`` is in these continuous pixel coordinates. EXIF orientation is applied on
reading, so every reader sees the photo upright.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from delfx.errors import InputError

#: File name suffixes taken for photos (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _open_checked(path: Path) -> Image.Image:
    """Open and fully decode an image, turning every decoder complaint into one clear line."""
    try:
        with Image.open(path) as img:
            img.load()  # full decode: a truncated file fails here, not later
            return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise InputError(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file (cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: unreadable or truncated image ({exc})") from None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a photo as an upright RGB array.

    Args:
        path: an image file.

    Returns:
        ``H x W x 3`` ``uint8`` RGB array.

    Raises:
        InputError: the file is missing, not an image, or truncated; the message names it.
    """
    img = _open_checked(Path(path))
    return np.asarray(img.convert("RGB"))


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Return ``(width, height)`` of an upright photo, checking that it decodes."""
    img = _open_checked(Path(path))
    return img.size


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
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """Encode an ``H x W x 3`` ``uint8`` RGB array as JPEG bytes (deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg_bytes_for(path: str | os.PathLike[str], quality: int = 95) -> bytes:
    """Return JPEG bytes for a photo: its own bytes when it is an upright JPEG, else re-encoded.

    The file is fully decoded first, so a truncated or corrupt file is rejected here.
    """
    path = Path(path)
    with_exif = _open_checked(path)
    with Image.open(path) as raw:
        upright = raw.getexif().get(0x0112, 1) in (0, 1)
        fmt = raw.format
    if fmt == "JPEG" and upright:
        return path.read_bytes()
    return encode_jpeg(np.asarray(with_exif.convert("RGB")), quality)

"""Appearance changes of synthetic views: tone and colour, blur, noise, occluders, backgrounds.

Every function here is deterministic given its arguments (random draws are made by the caller and
passed in, or come from an explicit integer seed), so a view can be rebuilt from its recorded
parameters. Images are ``H x W x 3`` ``uint8`` RGB arrays; sizes are ``(width, height)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Photometric:
    """A camera-like appearance change, applied after compositing.

    Attributes:
        brightness: offset added to intensities, as a fraction of full scale (0 = none).
        contrast: gain about mid-grey (1 = none).
        gamma: exponent on normalised intensities (1 = none; > 1 darkens mid-tones).
        colour: per-channel ``(r, g, b)`` gains (all 1 = none), a white-balance shift.
        blur_sigma: Gaussian blur standard deviation in view pixels (0 = none).
        noise_sigma: standard deviation of additive Gaussian noise, in 0-255 units.
        jpeg_quality: quality the view is saved with (applied by the writer).
    """

    brightness: float = 0.0
    contrast: float = 1.0
    gamma: float = 1.0
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur_sigma: float = 0.0
    noise_sigma: float = 0.0
    jpeg_quality: int = 95


@dataclass(frozen=True)
class Occluder:
    """An occluding shape in a view, filled with a patch of another photo.

    Attributes:
        polygon: ``(x, y)`` vertices in view coordinates (ellipses and blobs are polygons too).
        patch: index of the photo the fill comes from, in the caller's patch pool.
        patch_origin: where the fill is cut from that photo, as fractions ``(u, v)`` of the room
            left once the shape's bounding box is placed (``(0, 0)`` is the top-left corner).
    """

    polygon: tuple[tuple[float, float], ...]
    patch: int
    patch_origin: tuple[float, float]


def tone_lut(p: Photometric) -> np.ndarray:
    """The per-channel lookup table of brightness, contrast, gamma and colour.

    For normalised intensity ``x`` of channel ``c``: ``clip((x * colour[c] - 0.5) * contrast +
    0.5 + brightness) ** gamma``.

    Returns:
        ``256 x 1 x 3`` ``uint8`` table for ``cv2.LUT``.
    """
    x = np.arange(256, dtype=np.float64)[:, None] / 255.0
    y = (x * np.asarray(p.colour, dtype=np.float64)[None, :] - 0.5) * p.contrast + 0.5
    y = np.clip(y + p.brightness, 0.0, 1.0) ** p.gamma
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)[:, None, :]


def apply_photometric(image: np.ndarray, p: Photometric, noise_seed: int) -> np.ndarray:
    """Apply tone, colour, blur and noise (in that order; JPEG is left to the writer).

    Args:
        image: ``H x W x 3`` ``uint8`` RGB view.
        p: the change to apply.
        noise_seed: seed of the noise pattern.

    Returns:
        ``H x W x 3`` ``uint8`` RGB array (a new array).
    """
    out = cv2.LUT(np.ascontiguousarray(image), tone_lut(p))
    if p.blur_sigma >= 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=p.blur_sigma, sigmaY=p.blur_sigma)
    if p.noise_sigma > 0.0:
        noise = np.random.default_rng(noise_seed).standard_normal(out.shape, dtype=np.float32)
        noisy = out.astype(np.float32) + noise * np.float32(p.noise_sigma)
        out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return out


def polygon_mask(
    canvas_size: tuple[int, int], polygon: Sequence[tuple[float, float]]
) -> np.ndarray:
    """Rasterise one polygon: a pixel is inside when its centre is (even-odd rule).

    Scanline fill, vectorised over rows: each row's centre line is cut with every edge, the cuts
    are paired left to right, and each pair ``[a, b)`` covers the columns whose centres
    ``x + 0.5`` fall in it.

    Args:
        canvas_size: ``(width, height)``.
        polygon: ``N x 2`` vertices ``(x, y)`` in continuous pixel coordinates.

    Returns:
        ``H x W`` ``bool`` mask.
    """
    width, height = canvas_size
    p = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    q = np.roll(p, -1, axis=0)
    yc = np.arange(height, dtype=np.float64)[:, None] + 0.5
    y0, y1 = p[None, :, 1], q[None, :, 1]
    cuts = ((y0 <= yc) & (yc < y1)) | ((y1 <= yc) & (yc < y0))  # half-open: vertices count once
    with np.errstate(divide="ignore", invalid="ignore"):
        x = p[None, :, 0] + (yc - y0) * (q[None, :, 0] - p[None, :, 0]) / (y1 - y0)
    x = np.sort(np.where(cuts, x, np.inf), axis=1)
    pairs = x.shape[1] // 2
    starts, ends = x[:, 0 : 2 * pairs : 2], x[:, 1 : 2 * pairs : 2]
    ok = np.isfinite(starts) & np.isfinite(ends)
    rows = np.broadcast_to(np.arange(height)[:, None], starts.shape)[ok]
    first = np.clip(np.ceil(starts[ok] - 0.5), 0, width).astype(np.int64)
    stop = np.clip(np.ceil(ends[ok] - 0.5), 0, width).astype(np.int64)
    diff = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(diff, (rows, first), 1)
    np.add.at(diff, (rows, stop), -1)
    return np.cumsum(diff[:, :width], axis=1) > 0


def occluder_mask(canvas_size: tuple[int, int], occluders: Sequence[Occluder]) -> np.ndarray:
    """Rasterise occluder polygons (see :func:`polygon_mask`).

    Args:
        canvas_size: view ``(width, height)``.
        occluders: the shapes.

    Returns:
        ``H x W`` ``bool`` mask, True where some occluder covers the pixel centre.
    """
    width, height = canvas_size
    mask = np.zeros((height, width), dtype=bool)
    for occ in occluders:
        mask |= polygon_mask(canvas_size, occ.polygon)
    return mask


def paint_occluders(
    image: np.ndarray, occluders: Sequence[Occluder], patches: Sequence[np.ndarray]
) -> np.ndarray:
    """Paint occluders into a view, each filled with a patch cut from another photo.

    A patch photo smaller than the shape's bounding box is enlarged to cover it.

    Args:
        image: ``H x W x 3`` ``uint8`` view.
        occluders: the shapes; ``occ.patch`` indexes ``patches``.
        patches: pool of ``h x w x 3`` ``uint8`` photos.

    Returns:
        ``H x W x 3`` ``uint8`` view with the occluders painted (a new array).
    """
    out = image.copy()
    height, width = out.shape[:2]
    for occ in occluders:
        rows, cols = np.nonzero(polygon_mask((width, height), occ.polygon))
        if rows.size == 0:
            continue
        r0, c0 = rows.min(), cols.min()
        bh, bw = rows.max() - r0 + 1, cols.max() - c0 + 1
        patch = cover_crop(patches[occ.patch], (int(bw), int(bh)), occ.patch_origin)
        out[rows, cols] = patch[rows - r0, cols - c0]
    return out


def cover_crop(
    image: np.ndarray, size: tuple[int, int], origin: tuple[float, float], zoom: float = 1.0
) -> np.ndarray:
    """Cut a ``size`` window out of a photo, enlarging the photo first when it is too small.

    Args:
        image: ``h x w x 3`` ``uint8`` photo.
        size: window ``(width, height)``.
        origin: window position as fractions ``(u, v)`` of the free room in each direction.
        zoom: extra enlargement (``>= 1``) applied before cutting, to vary the apparent scale.

    Returns:
        ``height x width x 3`` ``uint8`` array.
    """
    width, height = size
    src_h, src_w = image.shape[:2]
    factor = max(width / src_w, height / src_h, 1.0) * max(zoom, 1.0)
    if factor > 1.0:
        new_size = (max(width, round(src_w * factor)), max(height, round(src_h * factor)))
        image = cv2.resize(image, new_size, interpolation=cv2.INTER_LINEAR)
        src_h, src_w = image.shape[:2]
    x0 = round(float(np.clip(origin[0], 0, 1)) * (src_w - width))
    y0 = round(float(np.clip(origin[1], 0, 1)) * (src_h - height))
    return np.ascontiguousarray(image[y0 : y0 + height, x0 : x0 + width])


def texture(size: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random colour texture, the background of last resort (no other photo to use).

    Args:
        size: ``(width, height)``.
        seed: seed of the pattern.

    Returns:
        ``height x width x 3`` ``uint8`` array.
    """
    width, height = size
    coarse = np.random.default_rng(seed).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)

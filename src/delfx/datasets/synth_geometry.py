"""Geometry of synthetic views: homographies, warping onto a background, and box visibility.

All coordinates follow the convention of :mod:`delfx.io.images`: pixel ``(x, y)`` covers
``[x, x + 1) x [y, y + 1)``, so a homography ``H`` (``3 x 3`` ``float64``) maps continuous source
coordinates to continuous view ("canvas") coordinates. OpenCV samples at integer pixel centres,
so :func:`to_opencv` shifts by half a pixel before any ``cv2.warpPerspective`` call.

Sizes are ``(width, height)`` tuples; images are ``H x W x 3`` ``uint8`` RGB arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Most samples per box side in :func:`visible_fraction` (finer grids change nothing visible).
MAX_GRID = 128


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def to_opencv(h: np.ndarray) -> np.ndarray:
    """Convert a homography between continuous coordinates to OpenCV's pixel-index convention.

    Args:
        h: ``3 x 3`` map from continuous source to continuous target coordinates.

    Returns:
        ``3 x 3`` map from source pixel indices to target pixel indices (centres at integers).
    """
    return _translation(-0.5, -0.5) @ h @ _translation(0.5, 0.5)


def project(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a homography to points.

    Args:
        h: ``3 x 3`` homography.
        points: ``N x 2`` ``(x, y)`` points.

    Returns:
        ``N x 2`` projected points; points mapped to or behind infinity (``w <= 0``) become NaN.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ h.T
    w = hom[:, 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = hom[:, :2] / w
    out[(w[:, 0] <= 1e-12)] = np.nan
    return out


def box_corners(bbx: Sequence[float]) -> np.ndarray:
    """Corners of ``[x1, y1, x2, y2]`` as a ``4 x 2`` array, clockwise from the top-left."""
    x1, y1, x2, y2 = (float(v) for v in bbx)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])


def polygon_area(points: np.ndarray) -> float:
    """Unsigned area of a simple polygon given as ``N x 2`` vertices (shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def view_homography(
    anchor: tuple[float, float],
    target: tuple[float, float],
    *,
    scale: float,
    rotation_deg: float,
    tilt_deg: tuple[float, float],
    focal: float,
) -> np.ndarray:
    """Build the map from a photo to a synthetic view of it.

    The photo plane is first tilted out of plane about ``anchor`` (a camera rotation seen through
    a pinhole of focal length ``focal``, which gives real perspective foreshortening), then scaled
    and rotated in plane about the anchor, and finally the anchor is moved to ``target``.

    Args:
        anchor: the photo point ``(x, y)`` that the view is centred on.
        target: where the anchor lands in the view.
        scale: in-plane zoom (``> 1`` enlarges).
        rotation_deg: in-plane rotation, counter-clockwise on screen for positive values.
        tilt_deg: out-of-plane rotation about the vertical and the horizontal axis; keep each
            below ~45 degrees so that the whole photo stays in front of the camera.
        focal: pinhole focal length in pixels (the photo diagonal is a natural choice).

    Returns:
        ``3 x 3`` ``float64`` homography from photo to view coordinates.
    """
    ay, ax = np.deg2rad(tilt_deg[0]), np.deg2rad(tilt_deg[1])
    rot_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    k = np.diag([focal, focal, 1.0])
    tilt = k @ rot_x @ rot_y @ np.linalg.inv(k)
    tilt /= tilt[2, 2]
    moved = project(tilt, np.zeros((1, 2)))[0]  # the tilt moves the anchor: bring it back
    tilt = _translation(-moved[0], -moved[1]) @ tilt
    theta = np.deg2rad(rotation_deg)
    c, s = np.cos(theta) * scale, np.sin(theta) * scale
    similarity = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    h = (
        _translation(*target)
        @ similarity
        @ tilt
        @ _translation(-float(anchor[0]), -float(anchor[1]))
    )
    return h / h[2, 2]


def box_scale(h: np.ndarray, bbx: Sequence[float]) -> float:
    """Linear scale of a box under ``h``: square root of the projected over the original area.

    Returns ``0.0`` when part of the box is sent to or beyond infinity.
    """
    corners = box_corners(bbx)
    projected = project(h, corners)
    if np.isnan(projected).any():
        return 0.0
    return float(np.sqrt(polygon_area(projected) / max(polygon_area(corners), 1e-12)))


def warp_onto(
    image: np.ndarray, h: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Warp a photo into a view and composite it over a background.

    When the warp shrinks the photo, it is first reduced with area averaging so that the view is
    not aliased. Borders are blended with a warped coverage mask, so no black seams appear.

    Args:
        image: ``h x w x 3`` ``uint8`` photo.
        h: ``3 x 3`` homography from photo to view coordinates.
        background: ``H x W x 3`` ``uint8`` view-sized background.

    Returns:
        ``(view, coverage)``: the ``H x W x 3`` ``uint8`` composite and the ``H x W`` ``float32``
        fraction of each view pixel covered by the photo.
    """
    out_h, out_w = background.shape[:2]
    src_h, src_w = image.shape[:2]
    shrink = min(1.0, box_scale(h, (0, 0, src_w, src_h)) or 1.0)
    if shrink < 0.8:
        small_w, small_h = max(2, round(src_w * shrink)), max(2, round(src_h * shrink))
        image = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
        h = h @ np.diag([src_w / small_w, src_h / small_h, 1.0])
    m = to_opencv(h)
    warped = cv2.warpPerspective(
        image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    ones = np.ones(image.shape[:2], dtype=np.float32)
    coverage = cv2.warpPerspective(
        ones, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    view = cv2.blendLinear(warped, background, coverage, 1.0 - coverage)
    return view, coverage


def visible_fraction(
    bbx: Sequence[float],
    h: np.ndarray,
    canvas_size: tuple[int, int],
    occluded: np.ndarray | None = None,
) -> float:
    """Fraction of a photo's box that is visible in a view.

    The box is sampled on a regular grid of cell centres (one per pixel, at most
    :data:`MAX_GRID` per side). A sample counts as visible when it lands inside the view canvas
    and on a view pixel that no occluder covers.

    Args:
        bbx: ``[x1, y1, x2, y2]`` box in photo coordinates.
        h: ``3 x 3`` homography from photo to view coordinates.
        canvas_size: view ``(width, height)``.
        occluded: optional ``H x W`` ``bool`` mask of view pixels hidden by occluders.

    Returns:
        Visible fraction of the box area, in ``[0, 1]``.
    """
    x1, y1, x2, y2 = (float(v) for v in bbx)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"bbx {list(bbx)}: empty box")
    nx = int(min(MAX_GRID, max(1, round(x2 - x1))))
    ny = int(min(MAX_GRID, max(1, round(y2 - y1))))
    xs = x1 + (np.arange(nx) + 0.5) * (x2 - x1) / nx
    ys = y1 + (np.arange(ny) + 0.5) * (y2 - y1) / ny
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    pts = project(h, grid)
    width, height = canvas_size
    with np.errstate(invalid="ignore"):
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)
    if occluded is not None and inside.any():
        cols = np.floor(pts[inside, 0]).astype(np.int64)
        rows = np.floor(pts[inside, 1]).astype(np.int64)
        hit = np.asarray(occluded, dtype=bool)[rows, cols]
        inside[np.flatnonzero(inside)[hit]] = False
    return float(inside.mean())

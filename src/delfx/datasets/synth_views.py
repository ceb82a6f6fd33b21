"""Synthetic database views of a photo: sampling, rendering, and easy/hard/junk labelling.

A view is described entirely by a :class:`ViewParams` (canvas size, homography, background,
occluders, appearance change, noise seed), so it can be rebuilt from its record. Sampling draws
one *difficulty* ``d`` in ``[0, cap]`` per view and every change is drawn independently within
``d`` times its full range (:class:`ViewRanges`); the label is then *measured*, never assigned:

- ``visible``: the fraction of the query box that lands inside the view and is not occluded
  (:func:`delfx.datasets.synth_geometry.visible_fraction`);
- ``severity``: the Euclidean norm of per-change scores, each ``abs(change)`` divided by the
  change that alone makes the box barely recognisable (:class:`SeverityScales`), so 1.0 means
  "at the edge of recognisable" and several moderate changes add up.

:func:`label` turns the two numbers into easy, hard or junk with :class:`LabelThresholds`,
mirroring the revisited protocol (field-facts §2): easy = clearly shown, hard = shown but
obscured or changed, junk = too little left to say.

Images are ``H x W x 3`` ``uint8`` RGB arrays; sizes are ``(width, height)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from delfx.datasets.synth_geometry import (
    box_corners,
    box_scale,
    project,
    view_homography,
    visible_fraction,
    warp_onto,
)
from delfx.datasets.synth_photometric import (
    Occluder,
    Photometric,
    apply_photometric,
    cover_crop,
    occluder_mask,
    paint_occluders,
    texture,
)

LABELS = ("easy", "hard", "junk")


@dataclass(frozen=True)
class ViewRanges:
    """How far each change may go at difficulty 1 (a view of difficulty ``d`` uses ``d`` times).

    Attributes:
        scale: zoom factor range: scale in ``[1 / scale**d, scale**d]``.
        rotation_deg: in-plane rotation magnitude.
        tilt_deg: out-of-plane rotation magnitude per axis (keep below ~45).
        shift: how far the box centre may move from the view centre, as a fraction of the view.
        aspect: log aspect-ratio change of the view canvas.
        occluders: the most occluders in one view.
        occluder_size: largest occluder side, as a fraction of the view's longer side.
        brightness: offset magnitude, as a fraction of full scale.
        contrast: contrast factor range (``[1 / c**d, c**d]``).
        gamma: gamma range (``[1 / g**d, g**d]``).
        colour: per-channel gain range (``[1 / k**d, k**d]``).
        blur: blur sigma, as a fraction of the view's longer side.
        noise: noise sigma, in 0-255 units.
        jpeg_quality: lowest JPEG quality (views range from 95 down to this).
    """

    scale: float = 3.0
    rotation_deg: float = 35.0
    tilt_deg: float = 40.0
    shift: float = 0.75
    aspect: float = 0.3
    occluders: int = 4
    occluder_size: float = 0.55
    brightness: float = 0.3
    contrast: float = 2.2
    gamma: float = 2.2
    colour: float = 1.5
    blur: float = 0.012
    noise: float = 28.0
    jpeg_quality: int = 12


@dataclass(frozen=True)
class SeverityScales:
    """The size of each change that alone scores 1.0 (barely recognisable).

    Attributes:
        scale: zoom factor of the box (either way).
        rotation_deg: in-plane rotation.
        tilt_deg: out-of-plane rotation (norm over both axes).
        brightness: brightness offset (fraction of full scale).
        contrast: contrast factor (either way); gamma uses the same scale.
        colour: largest per-channel gain (either way).
        blur: blur sigma as a fraction of the view's longer side.
        noise: noise sigma in 0-255 units.
        jpeg_quality: the JPEG quality that scores 1.0 (95 scores 0; the score grows with the
            square of the quality drop, as mild compression hardly hurts).
    """

    scale: float = 4.0
    rotation_deg: float = 60.0
    tilt_deg: float = 60.0
    brightness: float = 0.5
    contrast: float = 3.5
    colour: float = 2.0
    blur: float = 0.02
    noise: float = 50.0
    jpeg_quality: int = 5


@dataclass(frozen=True)
class LabelThresholds:
    """Where easy ends and junk begins (see :func:`label`).

    Attributes:
        easy_visible: an easy view shows at least this fraction of the query box...
        easy_severity: ...and its severity is at most this.
        junk_visible: a view that shows less than this fraction of the box is junk...
        junk_severity: ...and so is one whose severity exceeds this.
    """

    easy_visible: float = 0.6
    easy_severity: float = 0.45
    junk_visible: float = 0.25
    junk_severity: float = 1.0


@dataclass(frozen=True)
class ViewParams:
    """Everything needed to rebuild one synthetic view.

    Attributes:
        canvas_size: view ``(width, height)``.
        homography: row-major ``3 x 3`` map from photo to view coordinates.
        scale: in-plane zoom that was drawn.
        rotation_deg: in-plane rotation that was drawn.
        tilt_deg: out-of-plane rotations (about the vertical, then the horizontal axis).
        shift: offset of the anchor from the view centre, as fractions of the view size.
        difficulty: the difficulty the changes were drawn under.
        background: index into the background pool, or -1 for a random texture.
        background_origin: where the background is cut from its photo (see ``cover_crop``).
        background_zoom: enlargement of the background photo before cutting.
        occluders: occluding shapes (``patch`` indexes the patch pool).
        photometric: appearance change, including the JPEG quality to save with.
        noise_seed: seed of the noise pattern and the fallback texture.
    """

    canvas_size: tuple[int, int]
    homography: tuple[tuple[float, float, float], ...]
    scale: float
    rotation_deg: float
    tilt_deg: tuple[float, float]
    shift: tuple[float, float]
    difficulty: float
    background: int
    background_origin: tuple[float, float]
    background_zoom: float
    occluders: tuple[Occluder, ...]
    photometric: Photometric
    noise_seed: int

    @property
    def h(self) -> np.ndarray:
        """The homography as a ``3 x 3`` ``float64`` array."""
        return np.asarray(self.homography, dtype=np.float64)


@dataclass(frozen=True)
class Assessment:
    """What a view shows of the query box, and its label."""

    visible: float
    severity: float
    label: str


def _sym(rng: np.random.Generator, magnitude: float) -> float:
    """A value drawn uniformly from ``[-magnitude, magnitude]``."""
    return float(rng.uniform(-1.0, 1.0) * magnitude)


def sample_view(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    bbx: Sequence[float],
    ranges: ViewRanges,
    *,
    n_backgrounds: int,
    n_patches: int,
    difficulty_cap: float = 1.0,
) -> ViewParams:
    """Draw the parameters of one view of a photo.

    Args:
        rng: the generator to draw from (advanced in place).
        image_size: photo ``(width, height)``.
        bbx: the region of interest ``[x1, y1, x2, y2]`` (the query box, or the whole photo).
        ranges: how far each change may go.
        n_backgrounds: size of the background pool (0: use a random texture).
        n_patches: size of the occluder patch pool (0: no occluders).
        difficulty_cap: the difficulty is drawn from ``[0, difficulty_cap]``; 0 gives the photo
            itself, unchanged.

    Returns:
        The view's parameters.
    """
    d = float(rng.uniform(0.0, 1.0)) * float(difficulty_cap)
    w, h = image_size
    aspect = _sym(rng, ranges.aspect * d)
    cw, ch = w * np.exp(aspect / 2), h * np.exp(-aspect / 2)
    fit = min(1.0, max(w, h) / max(cw, ch))
    canvas = (max(16, round(cw * fit)), max(16, round(ch * fit)))
    x1, y1, x2, y2 = (float(v) for v in bbx)
    anchor = (
        (x1 + x2) / 2 + _sym(rng, 0.2 * d * (x2 - x1)),
        (y1 + y2) / 2 + _sym(rng, 0.2 * d * (y2 - y1)),
    )
    shift = (_sym(rng, ranges.shift * d), _sym(rng, ranges.shift * d))
    target = (canvas[0] * (0.5 + shift[0]), canvas[1] * (0.5 + shift[1]))
    scale = float(np.exp(_sym(rng, np.log(ranges.scale) * d)))
    rotation = _sym(rng, ranges.rotation_deg * d)
    tilt = (_sym(rng, ranges.tilt_deg * d), _sym(rng, ranges.tilt_deg * d))
    hom = view_homography(
        anchor,
        target,
        scale=scale,
        rotation_deg=rotation,
        tilt_deg=tilt,
        focal=float(np.hypot(w, h)),
    )
    background = int(rng.integers(n_backgrounds)) if n_backgrounds else -1
    bg_origin = (float(rng.uniform()), float(rng.uniform()))
    bg_zoom = float(np.exp(rng.uniform(0.0, np.log(2.0))))
    n_occ = int(rng.integers(0, round(ranges.occluders * d) + 1)) if n_patches else 0
    occluders = tuple(
        _sample_occluder(rng, canvas, project(hom, box_corners(bbx)), ranges, d, n_patches)
        for _ in range(n_occ)
    )
    photometric = Photometric(
        brightness=_sym(rng, ranges.brightness * d),
        contrast=float(np.exp(_sym(rng, np.log(ranges.contrast) * d))),
        gamma=float(np.exp(_sym(rng, np.log(ranges.gamma) * d))),
        colour=tuple(float(np.exp(_sym(rng, np.log(ranges.colour) * d))) for _ in range(3)),
        blur_sigma=float(rng.uniform(0.0, ranges.blur * d) * max(canvas)),
        noise_sigma=float(rng.uniform(0.0, ranges.noise * d)),
        jpeg_quality=int(round(95 - rng.uniform(0.0, d) * (95 - ranges.jpeg_quality))),
    )
    return ViewParams(
        canvas_size=canvas,
        homography=tuple(tuple(float(v) for v in row) for row in hom),
        scale=scale,
        rotation_deg=rotation,
        tilt_deg=tilt,
        shift=shift,
        difficulty=d,
        background=background,
        background_origin=bg_origin,
        background_zoom=bg_zoom,
        occluders=occluders,
        photometric=photometric,
        noise_seed=int(rng.integers(2**31)),
    )


def _sample_occluder(
    rng: np.random.Generator,
    canvas: tuple[int, int],
    box_in_view: np.ndarray,
    ranges: ViewRanges,
    d: float,
    n_patches: int,
) -> Occluder:
    """One occluder: a rectangle, ellipse or blob, usually placed over the box."""
    width, height = canvas
    size = max(canvas) * float(rng.uniform(0.08, 0.08 + ranges.occluder_size * d))
    aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
    rx, ry = size * np.sqrt(aspect) / 2, size / np.sqrt(aspect) / 2
    finite = box_in_view[np.isfinite(box_in_view).all(axis=1)]
    if rng.uniform() < 0.75 and len(finite):
        lo = np.clip(finite.min(axis=0), 0, [width, height])
        hi = np.clip(finite.max(axis=0), 0, [width, height])
        centre = lo + rng.uniform(size=2) * (hi - lo)
    else:
        centre = rng.uniform(size=2) * [width, height]
    kind = int(rng.integers(3))
    n_vertices = (4, 24, 9)[kind]
    angles = np.linspace(0.0, 2 * np.pi, n_vertices, endpoint=False) + np.pi / 4
    radii = rng.uniform(0.55, 1.0, n_vertices) if kind == 2 else np.ones(n_vertices)
    if kind == 0:
        radii = radii * np.sqrt(2)  # corners of the rectangle on its circumscribed ellipse
    pts = np.stack([rx * radii * np.cos(angles), ry * radii * np.sin(angles)], axis=1)
    spin = float(rng.uniform(0.0, np.pi))
    rot = np.array([[np.cos(spin), -np.sin(spin)], [np.sin(spin), np.cos(spin)]])
    pts = pts @ rot.T + centre
    return Occluder(
        polygon=tuple((round(float(x), 2), round(float(y), 2)) for x, y in pts),
        patch=int(rng.integers(n_patches)),
        patch_origin=(float(rng.uniform()), float(rng.uniform())),
    )


def severity_components(
    view: ViewParams, bbx: Sequence[float], scales: SeverityScales
) -> dict[str, float]:
    """Score each change of a view; 1.0 means that change alone leaves the box barely recognisable.

    Returns:
        ``{"scale", "rotation", "tilt", "tone", "blur", "noise", "jpeg"}`` to non-negative floats.
    """
    p = view.photometric
    zoom = box_scale(view.h, bbx)
    tone = max(
        abs(p.brightness) / scales.brightness,
        abs(np.log(p.contrast)) / np.log(scales.contrast),
        abs(np.log(p.gamma)) / np.log(scales.contrast),
        float(np.max(np.abs(np.log(p.colour)))) / np.log(scales.colour),
    )
    return {
        "scale": float(abs(np.log(zoom)) / np.log(scales.scale)) if zoom > 0 else 10.0,
        "rotation": abs(view.rotation_deg) / scales.rotation_deg,
        "tilt": float(np.hypot(*view.tilt_deg)) / scales.tilt_deg,
        "tone": float(tone),
        "blur": p.blur_sigma / (scales.blur * max(view.canvas_size)),
        "noise": p.noise_sigma / scales.noise,
        "jpeg": max(0.0, (95 - p.jpeg_quality) / (95 - scales.jpeg_quality)) ** 2,
    }


def severity(view: ViewParams, bbx: Sequence[float], scales: SeverityScales) -> float:
    """Overall severity: the Euclidean norm of :func:`severity_components`."""
    return float(np.sqrt(sum(c * c for c in severity_components(view, bbx, scales).values())))


def label(visible: float, severity_score: float, thresholds: LabelThresholds) -> str:
    """The revisited label of a view.

    - junk: ``visible < junk_visible`` or ``severity > junk_severity``;
    - easy: ``visible >= easy_visible`` and ``severity <= easy_severity``;
    - hard: everything in between.
    """
    if visible < thresholds.junk_visible or severity_score > thresholds.junk_severity:
        return "junk"
    if visible >= thresholds.easy_visible and severity_score <= thresholds.easy_severity:
        return "easy"
    return "hard"


def assess_view(
    view: ViewParams,
    bbx: Sequence[float],
    scales: SeverityScales,
    thresholds: LabelThresholds,
) -> Assessment:
    """Measure the visible fraction and severity of a view of the box ``bbx``, and label it."""
    visible = visible_fraction(
        bbx, view.h, view.canvas_size, occluder_mask(view.canvas_size, view.occluders)
    )
    score = severity(view, bbx, scales)
    return Assessment(visible=visible, severity=score, label=label(visible, score, thresholds))


def render_view(
    image: np.ndarray,
    view: ViewParams,
    backgrounds: Sequence[np.ndarray],
    patches: Sequence[np.ndarray],
) -> np.ndarray:
    """Render a view: warp over a background, paint occluders, change the appearance.

    JPEG compression (``view.photometric.jpeg_quality``) is left to the writer.

    Args:
        image: ``h x w x 3`` ``uint8`` photo.
        view: the parameters, as drawn by :func:`sample_view` with the same pool sizes.
        backgrounds: pool of ``h x w x 3`` ``uint8`` background photos.
        patches: pool of ``h x w x 3`` ``uint8`` photos that fill the occluders.

    Returns:
        ``H x W x 3`` ``uint8`` view with ``(W, H) = view.canvas_size``.
    """
    if view.background >= 0:
        bg = cover_crop(
            backgrounds[view.background],
            view.canvas_size,
            view.background_origin,
            view.background_zoom,
        )
    else:
        bg = texture(view.canvas_size, view.noise_seed)
    composite, _ = warp_onto(image, view.h, bg)
    composite = paint_occluders(composite, view.occluders, patches)
    return apply_photometric(composite, view.photometric, view.noise_seed)

"""SIFT and RootSIFT local features with OpenCV.

Pixel convention: OpenCV puts pixel centres at integer coordinates, :mod:`delfx.io.images` at
``+0.5``; :func:`extract_sift` converts, so its keypoints follow :mod:`delfx.features.types`.
Images are shrunk so that their longer side is at most ``max_side`` and never enlarged: the seed
"resized to 1024", and on Oxford/Paris (1024 px photos) both readings give the same images, while
enlarging smaller photos would only invent detail and detector noise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.io.images import resize_max

logger = logging.getLogger(__name__)

#: Descriptor dimension of SIFT.
SIFT_DIM = 128


@dataclass(frozen=True)
class SiftConfig:
    """Settings of the SIFT extractor.

    Attributes:
        max_side: shrink images so that their longer side is at most this (never enlarges).
        n_features: keep the strongest this many keypoints (0: all).
        n_octave_layers: DoG layers per octave.
        contrast_threshold: OpenCV's contrast threshold (divided by ``n_octave_layers`` inside).
        edge_threshold: OpenCV's edge threshold (larger keeps more edge-like points).
        sigma: Gaussian sigma of the first octave.
        root: RootSIFT: L1-normalise, square root (the result has unit L2 norm).
        upright: one keypoint per location with orientation 0 (no rotation invariance).
        precise_upscale: OpenCV's exact 2x upscaling of the first octave (no 0.25 px bias).
    """

    max_side: int = 1024
    n_features: int = 0
    n_octave_layers: int = 3
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0
    sigma: float = 1.6
    root: bool = False
    upright: bool = False
    precise_upscale: bool = True

    def __post_init__(self) -> None:
        if self.max_side < 16:
            raise InputError(f"max_side {self.max_side}: expected at least 16 pixels")
        if self.n_features < 0:
            raise InputError(f"n_features {self.n_features}: expected >= 0 (0 = all)")
        if self.n_octave_layers < 1:
            raise InputError(f"n_octave_layers {self.n_octave_layers}: expected at least 1")
        if not (np.isfinite(self.contrast_threshold) and self.contrast_threshold >= 0):
            raise InputError(f"contrast_threshold {self.contrast_threshold}: expected >= 0")
        for name in ("edge_threshold", "sigma"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise InputError(f"{name} {getattr(self, name)}: expected a number > 0")


#: Named settings. ``seed``: the seed's SIFT baseline (field-facts §1). ``rootsift``: RootSIFT
#: with up to 2000 keypoints and OpenCV's default thresholds.
PRESETS: dict[str, SiftConfig] = {
    "seed": SiftConfig(max_side=1024, n_features=500, contrast_threshold=0.01, edge_threshold=30.0),
    "rootsift": SiftConfig(
        max_side=1024, n_features=2000, contrast_threshold=0.04, edge_threshold=10.0, root=True
    ),
}


def _detector(conf: SiftConfig) -> cv2.SIFT:
    return cv2.SIFT_create(
        nfeatures=conf.n_features,
        nOctaveLayers=conf.n_octave_layers,
        contrastThreshold=conf.contrast_threshold,
        edgeThreshold=conf.edge_threshold,
        sigma=conf.sigma,
        enable_precise_upscale=conf.precise_upscale,
    )


def _upright(keypoints: Sequence[cv2.KeyPoint]) -> list[cv2.KeyPoint]:
    """One keypoint per (position, size), the strongest, with orientation 0."""
    best: dict[tuple[float, float, float], cv2.KeyPoint] = {}
    for kp in keypoints:
        key = (kp.pt[0], kp.pt[1], kp.size)
        if key not in best or kp.response > best[key].response:
            best[key] = kp
    return [
        cv2.KeyPoint(k.pt[0], k.pt[1], k.size, 0.0, k.response, k.octave, k.class_id)
        for k in best.values()
    ]


def root_sift(descriptors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """RootSIFT (Arandjelović & Zisserman 2012): L1-normalise, square root.

    Args:
        descriptors: ``N x D`` non-negative SIFT descriptors.

    Returns:
        ``N x D`` float32 with unit L2 norm (rows of zeros stay zero).
    """
    desc = np.maximum(np.asarray(descriptors, dtype=np.float32), 0.0)
    desc = desc / np.maximum(desc.sum(axis=1, keepdims=True), eps)
    desc = np.sqrt(desc)
    norm = np.linalg.norm(desc, axis=1, keepdims=True)
    return (desc / np.maximum(norm, eps)).astype(np.float32)


def extract_sift(
    image: np.ndarray,
    conf: SiftConfig,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    image_size: tuple[int, int] | None = None,
) -> LocalFeatures:
    """Detect and describe SIFT keypoints of one image.

    Args:
        image: ``H x W x 3`` ``uint8`` RGB array (or ``H x W`` grey).
        conf: the extractor settings.
        offset: ``(x, y)`` added to every keypoint, e.g. the corner of a query's crop, so that
            the keypoints are in the full image's pixels.
        image_size: ``(width, height)`` to record (default: the size of ``image``); for a crop,
            the size of the full image.

    Returns:
        The features, strongest first: keypoints ``N x 2`` in ``image``'s pixels (centres at
        ``+0.5``) plus ``offset``; scales = keypoint diameter in those pixels; orientations in
        degrees; scores = DoG response; descriptors ``N x 128`` float32. No keypoint gives
        :meth:`LocalFeatures.empty`.
    """
    if image.ndim not in (2, 3) or image.dtype != np.uint8:
        raise InputError(f"image: expected H x W x 3 uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    size = (w, h) if image_size is None else (int(image_size[0]), int(image_size[1]))
    small = resize_max(image, conf.max_side)
    grey = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    sx, sy = w / grey.shape[1], h / grey.shape[0]

    sift = _detector(conf)
    if conf.upright:  # detect, drop the orientations, then describe
        keypoints = _upright(sift.detect(grey, None))
        keypoints, desc = sift.compute(grey, keypoints) if keypoints else ((), None)
    else:
        keypoints, desc = sift.detectAndCompute(grey, None)
    if desc is None or len(keypoints) == 0:
        return LocalFeatures.empty(SIFT_DIM, size)

    pts = np.array([k.pt for k in keypoints], dtype=np.float64).reshape(-1, 2)
    sizes = np.array([k.size for k in keypoints], dtype=np.float64)
    angles = np.array([k.angle for k in keypoints], dtype=np.float32)
    resp = np.array([k.response for k in keypoints], dtype=np.float32)
    # OpenCV: pixel centres at integers -> delfx: at +0.5; then back to the input's pixels
    xy = np.empty_like(pts)
    xy[:, 0] = (pts[:, 0] + 0.5) * sx + float(offset[0])
    xy[:, 1] = (pts[:, 1] + 0.5) * sy + float(offset[1])
    scales = sizes * np.sqrt(sx * sy)
    desc = np.asarray(desc, dtype=np.float32)
    if conf.root:
        desc = root_sift(desc)
    # a canonical order (strongest first, ties by position), whatever OpenCV's threading did
    order = np.lexsort((angles, scales, xy[:, 0], xy[:, 1], -resp))
    return LocalFeatures(
        keypoints=xy[order].astype(np.float32),
        scales=scales[order].astype(np.float32),
        orientations=angles[order],
        descriptors=np.ascontiguousarray(desc[order]),
        scores=resp[order],
        image_size=size,
    )

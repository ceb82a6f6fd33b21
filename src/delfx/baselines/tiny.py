"""Two classic training-free global descriptors: a tiny image and a colour histogram.

They are floors, not methods: any learned or local-feature pipeline should beat them. Both map
an ``H x W x 3`` ``uint8`` RGB image to an L2-normalised ``float32`` vector, so that the dot
product is the cosine similarity.
"""

from __future__ import annotations

import cv2
import numpy as np


def _l2(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float32)


def tiny_image(image: np.ndarray, size: int = 16) -> np.ndarray:
    """Tiny-image descriptor (Torralba et al.): the image shrunk to ``size x size``.

    Each channel is made zero-mean and unit-variance before the vector is L2-normalised.

    Args:
        image: ``H x W x 3`` ``uint8`` RGB.
        size: side of the thumbnail.

    Returns:
        ``(3 * size * size,)`` float32, unit norm.
    """
    thumb = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    thumb -= thumb.mean(axis=(0, 1), keepdims=True)
    thumb /= thumb.std(axis=(0, 1), keepdims=True) + 1e-6
    return _l2(thumb.reshape(-1))


def colour_histogram(image: np.ndarray, bins: int = 8) -> np.ndarray:
    """Joint HSV colour histogram with the Hellinger (square-root) mapping.

    Args:
        image: ``H x W x 3`` ``uint8`` RGB.
        bins: bins per channel.

    Returns:
        ``(bins ** 3,)`` float32, unit norm.
    """
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [bins] * 3, [0, 180, 0, 256, 0, 256])
    hist = hist.reshape(-1).astype(np.float64)
    hist /= max(hist.sum(), 1.0)
    return _l2(np.sqrt(hist))


DESCRIPTORS = {"tiny-image": tiny_image, "colour-histogram": colour_histogram}


def rank_by_similarity(db: np.ndarray, queries: np.ndarray, top_k: int | None = None) -> np.ndarray:
    """Rank database vectors by dot product with each query.

    Args:
        db: ``N x D`` float32, one row per database image.
        queries: ``Q x D`` float32.
        top_k: keep only the first ``top_k`` of each list (all when None).

    Returns:
        ``Q x K`` int64 database indices, most similar first (``K = top_k or N``).
    """
    sims = queries @ db.T
    order = np.argsort(-sims, axis=1, kind="stable")
    return order if top_k is None else order[:, :top_k]

"""Flat k-means codebooks with faiss."""

from __future__ import annotations

import logging

import faiss
import numpy as np

from delfx.errors import InputError

logger = logging.getLogger(__name__)


def train_flat(
    descriptors: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 64,
) -> np.ndarray:
    """Train a flat k-means codebook.

    Args:
        descriptors: ``N x D`` float32 training descriptors (``N >= k``).
        k: number of words.
        niter: k-means iterations.
        seed: faiss seed (the result is deterministic for a seed and thread count).
        max_points_per_centroid: faiss subsamples to ``k * max_points_per_centroid`` points.

    Returns:
        ``k x D`` float32 centroids.
    """
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < k:
        raise InputError(f"codebook: need at least {k} training descriptors, got {x.shape[0]}")
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid,
        verbose=False,
    )
    km.train(x)
    logger.debug("k-means: %d words from %d descriptors", k, x.shape[0])
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(descriptors: np.ndarray, centroids: np.ndarray, k: int = 1) -> np.ndarray:
    """Nearest ``k`` words of each descriptor (exact, faiss flat L2).

    Args:
        descriptors: ``N x D`` float32.
        centroids: ``W x D`` float32.
        k: words per descriptor (multiple assignment when > 1).

    Returns:
        ``N x k`` int64 word ids, nearest first.
    """
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != c.shape[1]:
        raise InputError(
            f"descriptor dimension {x.shape[-1]} does not match the codebook's {c.shape[1]}"
        )
    if x.shape[0] == 0:
        return np.zeros((0, k), dtype=np.int64)
    _, idx = faiss.knn(x, c, k)
    return idx.astype(np.int64)

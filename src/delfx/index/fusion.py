"""Late fusion of two rankings of the same database by the sum of their scores."""

from __future__ import annotations

import numpy as np

from delfx.errors import InputError


def fuse_rankings(
    ranks_a: np.ndarray,
    scores_a: np.ndarray,
    ranks_b: np.ndarray,
    scores_b: np.ndarray,
    n_images: int,
    weight_b: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank every image by ``score_a + weight_b * score_b`` (0 where a list lacks the image).

    Args:
        ranks_a, scores_a: ``Q x Ka`` image ids and their scores (e.g. ASMK* similarities).
        ranks_b, scores_b: ``Q x Kb`` image ids and their scores (e.g. global cosine similarity).
        n_images: database size ``N``; ids are in ``0..N-1``.
        weight_b: weight of the second score.

    Returns:
        ``Q x N`` int64 ids, best first (ties: lower id), and ``Q x N`` float64 fused scores.

    Raises:
        InputError: shapes that differ, or ids out of range.
    """
    if ranks_a.shape != scores_a.shape or ranks_b.shape != scores_b.shape:
        raise InputError("fusion: each ranking needs one score per id")
    if ranks_a.shape[0] != ranks_b.shape[0]:
        raise InputError(f"fusion: {ranks_a.shape[0]} and {ranks_b.shape[0]} queries differ")
    for r in (ranks_a, ranks_b):
        if r.size and (r.min() < 0 or r.max() >= n_images):
            raise InputError(f"fusion: image ids outside 0..{n_images - 1}")
    n_q = ranks_a.shape[0]
    fused = np.zeros((n_q, n_images), dtype=np.float64)
    rows_a = np.repeat(np.arange(n_q), ranks_a.shape[1])
    rows_b = np.repeat(np.arange(n_q), ranks_b.shape[1])
    np.add.at(fused, (rows_a, ranks_a.reshape(-1)), scores_a.reshape(-1).astype(np.float64))
    np.add.at(
        fused, (rows_b, ranks_b.reshape(-1)), weight_b * scores_b.reshape(-1).astype(np.float64)
    )
    order = np.argsort(-fused, axis=1, kind="stable")
    return order.astype(np.int64), np.take_along_axis(fused, order, axis=1)

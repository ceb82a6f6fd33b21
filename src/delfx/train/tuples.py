"""Sampling queries, negative pools and tuples for one training epoch (cirtorch convention).

Each epoch cirtorch draws ``query_size`` query-positive pairs and a pool of ``pool_size`` random
images, mines hard negatives for the queries in the pool (:mod:`delfx.train.mining`), and trains
on tuples ``[query, positive, negative_1, ..., negative_k]`` labelled ``[-1, 1, 0, ..., 0]``
(the convention of :mod:`delfx.train.losses`). Everything here is pure index arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from delfx.datasets.training import TrainingSplit
from delfx.errors import InputError


def sample_queries(
    split: TrainingSplit, query_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``query_size`` query-positive pairs without replacement (all of them if fewer).

    Args:
        split: the training split with ``P`` pairs.
        query_size: pairs to draw, at least 1.
        rng: random generator (the only source of randomness).

    Returns:
        ``(qidxs, pidxs)``: image indices, int64 ``(Q,)`` each, ``Q = min(query_size, P)``, in
        random order.
    """
    if query_size < 1:
        raise InputError(f"query_size {query_size}: must be at least 1")
    take = rng.permutation(split.num_pairs)[:query_size]
    return split.qidxs[take].astype(np.int64), split.pidxs[take].astype(np.int64)


def sample_pool(split: TrainingSplit, pool_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the negative pool: distinct random images of the split.

    Args:
        split: the training split with ``N`` images.
        pool_size: images to draw, at least 1.
        rng: random generator.

    Returns:
        Image indices, int64 ``(M,)``, ``M = min(pool_size, N)``, in random order.
    """
    if pool_size < 1:
        raise InputError(f"pool_size {pool_size}: must be at least 1")
    return rng.permutation(len(split))[:pool_size].astype(np.int64)


def build_tuples(qidxs: Any, pidxs: Any, negatives: Any) -> list[list[int]]:
    """Assemble training tuples ``[q, p, n_1, ..., n_k]`` of image indices.

    Args:
        qidxs: query image indices, ``(Q,)``.
        pidxs: positive image indices, ``(Q,)``.
        negatives: negative image indices, ``Q x k`` (map pool indices from mining to image
            indices first: ``pool[mined]``).

    Returns:
        ``Q`` lists of ``k + 2`` ints.

    Raises:
        InputError: shapes that do not line up.
    """
    q = np.asarray(qidxs, dtype=np.int64)
    p = np.asarray(pidxs, dtype=np.int64)
    if torch.is_tensor(negatives):
        negatives = negatives.detach().cpu().numpy()
    n = np.asarray(negatives, dtype=np.int64)
    if q.ndim != 1 or p.shape != q.shape:
        raise InputError(f"tuples: qidxs and pidxs must both be (Q,), got {q.shape} and {p.shape}")
    if n.ndim == 1 and n.size == 0:
        n = n.reshape(q.shape[0], 0)
    if n.ndim != 2 or n.shape[0] != q.shape[0]:
        raise InputError(f"tuples: negatives must be {q.shape[0]} x k, got shape {n.shape}")
    return np.concatenate([q[:, None], p[:, None], n], axis=1).tolist()


def tuple_labels(neg_num: int) -> torch.Tensor:
    """Labels of one tuple: ``[-1, 1, 0, ..., 0]``, int64 ``(neg_num + 2,)``."""
    if neg_num < 0:
        raise InputError(f"neg_num {neg_num}: must be at least 0")
    return torch.tensor([-1, 1] + [0] * int(neg_num), dtype=torch.int64)

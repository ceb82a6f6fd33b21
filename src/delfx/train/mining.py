"""Hard-negative mining for tuple training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from delfx.errors import InputError

_CHUNK = 512


def _as_array(x: Any, dtype: type, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != ndim:
        raise InputError(f"mining: {name} must be {ndim}-D, got shape {arr.shape}")
    return arr


def mine_hard_negatives(
    q_vecs: Any, pool_vecs: Any, q_clusters: Any, pool_clusters: Any, neg_num: int
) -> torch.Tensor:
    """The ``neg_num`` hardest negatives of each query, at most one per cluster.

    Pool images are ranked by Euclidean distance to the query (closest first; ties by pool index).
    Images of the query's own cluster are skipped, and of each other cluster only the closest image
    is kept. The first ``neg_num`` that remain are returned.

    Args:
        q_vecs: Query descriptors.
        pool_vecs: Negative-pool descriptors.
        q_clusters: Cluster (landmark) id of each query.
        pool_clusters: Cluster id of each pool image.
        neg_num: Negatives per query.

    Returns:
        Pool indices, int64 on the CPU.

    Raises:
        InputError: On inconsistent shapes, or naming the first query with fewer than ``neg_num``
            eligible clusters in the pool.

    Shape:
        ``q_vecs``: ``Q x D``; ``pool_vecs``: ``P x D``; ``q_clusters``: ``(Q,)``;
        ``pool_clusters``: ``(P,)``; result: ``Q x neg_num``.
    """
    qv = _as_array(q_vecs, np.float64, "q_vecs", 2)
    pv = _as_array(pool_vecs, np.float64, "pool_vecs", 2)
    qc = _as_array(q_clusters, np.int64, "q_clusters", 1)
    pc = _as_array(pool_clusters, np.int64, "pool_clusters", 1)
    neg_num = int(neg_num)
    if qv.shape[1] != pv.shape[1]:
        raise InputError(f"mining: query and pool descriptors differ: {qv.shape} vs {pv.shape}")
    if qc.shape[0] != qv.shape[0] or pc.shape[0] != pv.shape[0]:
        raise InputError("mining: need one cluster id per query and per pool image")
    if neg_num < 0:
        raise InputError(f"mining: neg_num must be >= 0, got {neg_num}")
    out = np.empty((qv.shape[0], neg_num), dtype=np.int64)
    pool_sq = (pv * pv).sum(axis=1)
    for start in range(0, qv.shape[0], _CHUNK):
        block = qv[start : start + _CHUNK]
        dist = pool_sq[None, :] - 2.0 * block @ pv.T  # + ||q||^2, constant per row
        order = np.argsort(dist, axis=1, kind="stable")
        for row in range(block.shape[0]):
            i = start + row
            ranked = order[row]
            ranked = ranked[pc[ranked] != qc[i]]
            _, first = np.unique(pc[ranked], return_index=True)
            if first.size < neg_num:
                raise InputError(
                    f"mining: query {i} has only {first.size} eligible negative clusters in the "
                    f"pool, need {neg_num}"
                )
            out[i] = ranked[np.sort(first)[:neg_num]]
    return torch.from_numpy(out)

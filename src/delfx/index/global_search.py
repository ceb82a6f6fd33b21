"""Search with global descriptors: inner-product ranking, query expansion, database augmentation.

Descriptors are row-major, L2-normalised ``float32``: ``N x D`` database, ``Q x D`` queries.
"""

from __future__ import annotations

import numpy as np

from delfx.errors import InputError


def _l2(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def rank_ip(
    db: np.ndarray, queries: np.ndarray, top_k: int | None = None, *, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Rank the database by inner product, a chunk of queries at a time.

    Args:
        db: ``N x D`` database descriptors.
        queries: ``Q x D`` query descriptors.
        top_k: results per query (all ``N`` when None).
        chunk: queries per matrix product (bounds memory to ``chunk x N`` scores).

    Returns:
        ``Q x K`` int64 ids, best first (ties: lower id), and ``Q x K`` float32 scores.
    """
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise InputError(
            f"descriptor dimensions differ: database {db.shape}, queries {queries.shape}"
        )
    n = db.shape[0]
    k = n if top_k is None else min(int(top_k), n)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    for s in range(0, queries.shape[0], chunk):
        sims = queries[s : s + chunk] @ db.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        ids[s : s + chunk] = order
        scores[s : s + chunk] = np.take_along_axis(sims, order, axis=1)
    return ids, scores


def alpha_qe(
    db: np.ndarray, queries: np.ndarray, ranks: np.ndarray, k: int, alpha: float = 3.0
) -> np.ndarray:
    """α-weighted query expansion (Radenović et al.).

    Each query becomes the normalised sum of itself and its top ``k`` database vectors, each
    weighted by its similarity to the query raised to ``alpha`` (negative similarities count 0).

    Args:
        db: ``N x D`` database descriptors.
        queries: ``Q x D`` queries.
        ranks: ``Q x K`` first-round ranking (``K >= k``).
        k: neighbours to add.
        alpha: weight exponent.

    Returns:
        ``Q x D`` expanded, L2-normalised queries.
    """
    top = db[ranks[:, :k]]  # Q x k x D
    w = np.clip(np.einsum("qkd,qd->qk", top, queries), 0, None) ** alpha
    return _l2(queries + np.einsum("qk,qkd->qd", w, top))


def dba(db: np.ndarray, k: int, alpha: float = 3.0, *, chunk: int = 1024) -> np.ndarray:
    """α-weighted database-side augmentation: each image averaged with its ``k`` neighbours.

    Args:
        db: ``N x D`` database descriptors.
        k: neighbours (the image itself is its own first neighbour and is not counted).
        alpha: weight exponent.
        chunk: rows per matrix product.

    Returns:
        ``N x D`` augmented, L2-normalised descriptors.
    """
    ranks, _ = rank_ip(db, db, min(k + 1, db.shape[0]), chunk=chunk)
    out = db.astype(np.float32).copy()
    for s in range(0, db.shape[0], chunk):
        nn = ranks[s : s + chunk, 1:]
        top = db[nn]
        w = np.clip(np.einsum("nkd,nd->nk", top, db[s : s + chunk]), 0, None) ** alpha
        out[s : s + chunk] += np.einsum("nk,nkd->nd", w, top)
    return _l2(out)

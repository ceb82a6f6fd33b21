"""Training the nodes of one tree level without the numba kernel: numpy, and faiss for big nodes.

:func:`~delfx.index.voctree.train_tree` trains a level with one call of
:func:`~delfx.index.voctree_kernels.train_nodes` (numba) or of its numpy twin
:func:`train_nodes_np` here (``DELFX_NUMBA=0``): the same algorithm (each node's first ``cap``
descriptors in the random order, the ``B`` of them with the smallest keys as initial centroids,
Lloyd iterations until the assignment repeats), hence the same tree up to float32 near-ties.
Before either, :func:`faiss_nodes` may train the nodes with many descriptors one by one with
faiss.

Shapes: ``N`` descriptors of dimension ``D``, ``G`` nodes of ``B`` children.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import scipy.sparse as sp

from delfx.index.voctree_kernels import nearest_in_groups, row_keys, stable_argsort

__all__ = ["faiss_nodes", "train_nodes_np"]

logger = logging.getLogger(__name__)


def _lloyd(
    x: np.ndarray, rows: np.ndarray, groups: np.ndarray, init: np.ndarray, niter: int
) -> np.ndarray:
    """Batched k-means (numpy): group ``g`` clusters ``x[rows[groups == g]]`` into ``B`` centroids.

    The numpy twin of the numba per-node kernel: a group stops as soon as its assignment repeats
    (its centroids are then a fixed point), an empty cluster keeps its previous centroid, and
    cluster sums are float32 sums in row order.

    Args:
        x: ``N' x D`` float32 descriptors.
        rows: ``(N,)`` rows of ``x`` taking part, grouped (``groups`` is sorted).
        groups: ``(N,)`` group of each row, in ``[0, G)``.
        init: ``(G, B, D)`` float32 initial centroids.
        niter: maximum iterations.

    Returns:
        ``(G, B, D)`` float32 centroids.
    """
    cent = init.copy()
    b = cent.shape[1]
    sq = np.einsum("gbd,gbd->gb", cent, cent)
    xs = x[rows]  # contiguous, grouped: the gathers below stay sequential
    rows = np.arange(rows.size)
    prev = np.full(rows.size, -1, dtype=np.int64)
    for it in range(niter):
        if rows.size == 0:
            break
        assign_ = nearest_in_groups(xs, groups, cent, sq, rows=rows)
        # groups are sorted: number the active ones 0 ... A - 1
        first = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        active = groups[first]
        local = np.repeat(np.arange(active.size), np.diff(np.r_[first, groups.size]))
        label = local * b + assign_
        counts = np.bincount(label, minlength=active.size * b)
        # cluster sums as a sparse (clusters x points) product, built in CSR order directly
        indptr = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        member = sp.csr_matrix(
            (np.ones(rows.size, dtype=np.float32), rows[stable_argsort(label)], indptr),
            shape=(active.size * b, xs.shape[0]),
        )
        sums = np.asarray(member @ xs)
        filled = np.flatnonzero(counts)
        means = sums[filled] / counts[filled, None].astype(np.float32)
        g, k = active[filled // b], filled % b
        cent[g, k] = means
        sq[g, k] = np.einsum("nd,nd->n", means, means)
        moved = np.bincount(local, weights=assign_ != prev, minlength=active.size) > 0
        keep = moved[local]
        logger.debug("lloyd iteration %d: %d of %d groups moving", it, moved.sum(), active.size)
        rows, groups, prev = rows[keep], groups[keep], assign_[keep]
    return cent


def train_nodes_np(
    x: np.ndarray,
    order: np.ndarray,
    seg: np.ndarray,
    parent: np.ndarray,
    parent_sq: np.ndarray,
    given: np.ndarray,
    cap: int,
    niter: int,
    salt: int,
    out: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Numpy twin of :func:`delfx.index.voctree_kernels.train_nodes` (same arguments, results)."""
    n_groups, b, _ = out.shape
    counts = np.diff(seg)
    group = np.repeat(np.arange(n_groups), counts)
    rank = np.arange(order.size) - np.repeat(seg[:-1], counts)
    src = np.tile(np.arange(b), (n_groups, 1))
    lab = np.full(order.size, -1, dtype=np.int64)
    empty = np.flatnonzero((counts == 0) & ~given)
    out[empty] = parent[empty][:, None, :]
    src[empty] = 0
    tiny = (counts > 0) & (counts <= b) & ~given
    src[tiny] = np.arange(b) % counts[tiny][:, None]
    out[tiny] = x[order[seg[:-1][tiny][:, None] + src[tiny]]]
    at_tiny = tiny[group]
    lab[at_tiny] = rank[at_tiny]
    mid = (counts > b) & ~given
    if mid.any():
        local = np.cumsum(mid) - 1
        train = mid[group] & (rank < cap)
        rows, groups = order[train], local[group[train]]
        # start from the B training rows of each node with the smallest keys
        by_key = np.lexsort((row_keys(rows, salt), groups))
        starts = np.searchsorted(groups, np.arange(local[-1] + 1))
        init = x[rows[by_key[starts[:, None] + np.arange(b)]]]
        out[mid] = _lloyd(x, rows, groups, init, niter)
    out_sq = np.einsum("gbd,gbd->gb", out, out)
    out_sq[empty] = parent_sq[empty][:, None]
    return out_sq, src, lab, np.zeros(n_groups, dtype=np.int64)


def faiss_nodes(
    x: np.ndarray,
    order: np.ndarray,
    seg: np.ndarray,
    out: np.ndarray,
    *,
    cap: int,
    min_points: int | None,
    niter: int,
    seed: int,
) -> np.ndarray:
    """Train the nodes with at least ``min_points`` training descriptors with faiss, one by one.

    Returns:
        ``(G,)`` bool, the nodes trained (their children are in ``out``).
    """
    n_groups, b, d = out.shape
    n_train = np.minimum(np.diff(seg), cap)
    given = np.zeros(n_groups, dtype=bool)
    if min_points is None:
        return given
    given[:] = n_train >= max(min_points, b + 1)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # OpenMP start-up dwarfs these small problems
    try:
        for g in np.flatnonzero(given):
            km = faiss.Kmeans(d, b, niter=niter, seed=seed + int(g), min_points_per_centroid=1,
                              max_points_per_centroid=cap // b, verbose=False)  # fmt: skip
            km.train(np.ascontiguousarray(x[order[seg[g] : seg[g] + n_train[g]]]))
            out[g] = km.centroids
    finally:
        faiss.omp_set_num_threads(threads)
    return given

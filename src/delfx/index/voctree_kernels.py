"""Grouped nearest-centroid kernels behind the vocabulary tree (numpy, no Python loop per point).

Each descriptor belongs to a group (its current tree node) and is compared with that group's
``B`` centroids only. :func:`nearest_in_groups` sorts descriptors by group and evaluates each
run with one batched matrix product; :func:`first_equal_sibling` makes ties between repeated
centroids deterministic; :func:`stable_argsort` is a radix argsort for integer keys.

Shapes: ``N`` descriptors of dimension ``D``, ``G`` groups of ``B`` centroids.
"""

from __future__ import annotations

import numpy as np

_PIECE = 256  # largest group of descriptors compared with one node's children in one product
_WORK_ROWS = 4096  # descriptors gathered per block of work
_WORK_BYTES = 8 << 20  # centroid blocks gathered per block of work


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integer keys, with numpy's radix sort on 16-bit digits."""
    top = int(keys.max()) if keys.size else 0
    if top < 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    if top < 1 << 32:
        order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
        return order[np.argsort((keys[order] >> 16).astype(np.uint16), kind="stable")]
    return np.argsort(keys, kind="stable")


def _runs(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort by group and cut into pieces of at most ``_PIECE`` members of one group.

    Returns:
        ``order`` (stable sort of ``groups``), and per piece its start in sorted order, its
        length and its group.
    """
    order = stable_argsort(groups)
    gs = groups[order]
    starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
    counts = np.diff(np.r_[starts, gs.size])
    pieces = (counts + _PIECE - 1) // _PIECE
    if pieces.max() > 1:
        run = np.repeat(np.arange(starts.size), pieces)
        k = np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        starts = starts[run] + k * _PIECE
        counts = np.minimum(counts[run] - k * _PIECE, _PIECE)
    return order, starts, counts, gs[starts]


def nearest_in_groups(
    x: np.ndarray,
    groups: np.ndarray,
    blocks: np.ndarray,
    sqnorms: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    batch: int = 65536,
) -> np.ndarray:
    """Nearest of its group's centroids for every descriptor (exact squared L2).

    Descriptors are sorted by group, runs are padded to a power-of-two length, and each size
    class is processed ``batch`` descriptors at a time with one batched matrix product, so no
    ``(N, B, D)`` array of gathered centroids is ever formed.

    Args:
        x: ``N' x D`` float32 descriptors.
        groups: ``(N,)`` int64 group of each descriptor, in ``[0, G)``.
        blocks: ``(G, B, D)`` float32 candidate centroids of each group.
        sqnorms: ``(G, B)`` float32 squared norms of ``blocks``.
        rows: ``(N,)`` rows of ``x`` to use (all of ``x`` in order when None).
        batch: descriptors per block of work (bounds temporary memory).

    Returns:
        ``(N,)`` int64 index in ``[0, B)`` of the nearest centroid (first on ties).
    """
    n = groups.size
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    order, starts, counts, gids = _runs(groups)
    src = order if rows is None else rows[order]
    size_class = np.ceil(np.log2(counts)).astype(np.int64)
    block_bytes = blocks.shape[1] * blocks.shape[2] * blocks.itemsize
    for c in np.unique(size_class):
        m = 1 << int(c)
        sel = np.flatnonzero(size_class == c)
        lane = np.arange(m)
        # bounded, cache-friendly temporaries: both gathers stay within a few MiB
        step = max(1, min(min(batch, _WORK_ROWS) // m, _WORK_BYTES // block_bytes))
        for s in range(0, sel.size, step):
            piece = sel[s : s + step]
            st, ct, g = starts[piece], counts[piece], gids[piece]
            pos = st[:, None] + np.minimum(lane[None, :], ct[:, None] - 1)  # pad with the last
            dist = np.matmul(x[src[pos]], blocks[g].transpose(0, 2, 1))  # (P, m, B)
            dist *= -2.0
            dist += sqnorms[g][:, None, :]
            best = dist.argmin(axis=-1)
            valid = lane[None, :] < ct[:, None]
            out[order[pos[valid]]] = best[valid]
    return out


def first_equal_sibling(blocks: np.ndarray, source: np.ndarray | None = None) -> np.ndarray:
    """For each child, the first of its siblings with an identical centroid.

    Nodes with fewer descriptors than ``B`` get repeated children. Their distances to a
    descriptor tie exactly in exact arithmetic, but a matrix product may round them differently
    from one batch to the next; mapping every choice to the first identical sibling makes the
    descent deterministic and equal to a plain argmin over exact distances.

    Args:
        blocks: ``(G, B, D)`` children centroids per node.
        source: ``(G, B)`` optional hint from the builder: child ``j`` was made as a copy of
            child ``source[:, j] <= j`` (``j`` itself when it is an original); copies are then
            resolved without comparing them.

    Returns:
        ``(G, B)`` int64 index in ``[0, B)``, at most the child's own index.
    """
    n_groups, branch, _ = blocks.shape
    own = np.arange(branch, dtype=np.int64)
    canon = np.tile(own, (n_groups, 1))
    original = np.ones((n_groups, branch), dtype=bool) if source is None else source == own
    lead = blocks[:, :, 0]
    maybe = lead[:, :, None] == lead[:, None, :]  # (G, B, B): same first coordinate
    maybe &= np.tri(branch, k=-1, dtype=bool)  # an earlier sibling only
    maybe &= original[:, :, None]
    g, j = np.nonzero(maybe.any(axis=2))
    for k in range(branch - 1):  # earliest sibling first
        try_k = maybe[g, j, k]
        same = np.zeros(g.size, dtype=bool)
        same[try_k] = (blocks[g[try_k], j[try_k]] == blocks[g[try_k], k]).all(axis=1)
        canon[g[same], j[same]] = k
        g, j = g[~same], j[~same]
    if source is not None:
        for col in range(branch):  # copies take the canon of what they copy
            copy = ~original[:, col]
            canon[copy, col] = canon[copy, source[copy, col]]
    return canon

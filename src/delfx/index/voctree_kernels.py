"""Kernels behind the vocabulary tree: nearest child, per-node Lloyd k-means, regrouping.

Descriptors go down the tree as one permutation ``order`` grouped by node: at a level of ``G``
nodes, node ``g`` owns positions ``seg[g] ... seg[g + 1] - 1`` of ``order`` and ``lab[p]`` is the
child chosen for position ``p``. :func:`regroup` makes the grouping of the next level (a stable
counting sort within every node), so no global sort is needed.

Two backends, chosen by :func:`delfx.index.kernels.backend` (numba unless ``DELFX_NUMBA=0``):
compiled loops (:mod:`delfx.index.voctree_numba`), parallel over nodes or blocks of positions
and cached on disk (:func:`warm`), and vectorised numpy (:func:`nearest_in_groups`: grouped
batched matrix products). They agree up to float32 rounding of near-ties. :func:`train_nodes`
and :func:`descend` are numba only (the numpy twin of the former is in
:mod:`delfx.index.voctree_train`).

Shapes: ``N`` descriptors of dimension ``D``, ``G`` groups (nodes) of ``B`` centroids.
"""

from __future__ import annotations

import numpy as np

from delfx.index import voctree_numba
from delfx.index.kernels import backend

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


def train_nodes(
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
    """Children of every node of one level (numba backend), written into ``out``.

    Args:
        x: ``N x D`` float32 descriptors.
        order, seg: ``(N,)`` positions grouped by node and ``(G + 1,)`` node bounds.
        parent: ``(G, D)`` float32 centroid of each node; ``parent_sq`` ``(G,)`` its squared norm.
        given: ``(G,)`` bool, nodes whose children are already in ``out`` (trained elsewhere).
        cap: Lloyd trains on at most the first ``cap`` descriptors of a node.
        niter: maximum Lloyd iterations.
        salt: a node starts from the ``B`` of its training rows ``r`` with the smallest
            :func:`row_keys` ``(r, salt)``.
        out: ``(G, B, D)`` float32 children centroids to fill.

    Returns:
        ``(G, B)`` float32 squared norms of ``out``; ``(G, B)`` int64 child each child copies
        (itself if an original); ``(N,)`` int64 child of each position, ``-1`` where still to be
        assigned (:func:`assign`); ``(G,)`` int64 assignment passes of each Lloyd node (else 0).
    """
    n_groups, b, _ = out.shape
    out_sq = np.empty((n_groups, b), np.float32)
    src = np.empty((n_groups, b), np.int64)
    lab = np.empty(order.size, np.int64)
    passes = np.zeros(n_groups, np.int64)
    voctree_numba.train_nodes_nb(x, order, seg, parent, parent_sq, given, cap, niter,
                                 np.uint64(salt), out, out_sq, src, lab, passes)  # fmt: skip
    return out_sq, src, lab, passes


_M = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def row_keys(rows: np.ndarray, salt: int) -> np.ndarray:
    """``(n,)`` uint64 pseudo-random keys of rows (splitmix64 of ``row + salt``), numpy."""
    z = rows.astype(np.uint64) + np.uint64(salt)
    with np.errstate(over="ignore"):
        z += np.uint64(_M[0])
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M[1])
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M[2])
    return z ^ (z >> np.uint64(31))


def assign(
    x: np.ndarray,
    order: np.ndarray,
    seg: np.ndarray,
    blocks: np.ndarray,
    sqnorms: np.ndarray,
    lab: np.ndarray,
) -> None:
    """Set ``lab[p]`` to the nearest child of its node wherever ``lab[p] < 0`` (in place).

    Args:
        x: ``N' x D`` float32 descriptors; ``order`` ``(N,)`` rows of ``x`` grouped by node.
        seg: ``(G + 1,)`` node bounds in ``order``.
        blocks: ``(G, B, D)`` float32 children centroids; ``sqnorms`` ``(G, B)`` their norms.
        lab: ``(N,)`` int64 child per position.
    """
    if backend() == "numba":
        voctree_numba.assign_nb(x, order, seg, blocks, sqnorms, lab)
        return
    todo = np.flatnonzero(lab < 0)
    groups = np.repeat(np.arange(seg.size - 1), np.diff(seg))[todo]
    lab[todo] = nearest_in_groups(x, groups, blocks, sqnorms, rows=order[todo])


def regroup(
    order: np.ndarray,
    seg: np.ndarray,
    lab: np.ndarray,
    canon: np.ndarray,
    *,
    first: int = 0,
    node_of: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Grouping of the next level: positions sorted stably by ``(node, canon[node, lab])``.

    Args:
        order, seg, lab: ``(N,)`` rows, ``(G + 1,)`` node bounds, ``(N,)`` child per position.
        canon: ``(G, B)`` int64 canonical child (:func:`first_equal_sibling`).
        first: tree id of node 0 of the level; with ``node_of`` (``(N',)`` int64, indexed by
            row) the tree id of each row's child is written there.

    Returns:
        ``(N,)`` rows grouped by child and ``(G * B + 1,)`` child bounds.
    """
    n_groups, b = canon.shape
    if backend() == "numba":
        new_order, new_seg = np.empty_like(order), np.empty(n_groups * b + 1, np.int64)
        sink = np.zeros(0, np.int64) if node_of is None else node_of
        voctree_numba.regroup_nb(order, seg, lab, canon, new_order, new_seg, first, sink)
        return new_order, new_seg
    group = np.repeat(np.arange(n_groups), np.diff(seg))
    key = group * b + canon[group, lab]
    perm = stable_argsort(key)
    if node_of is not None:
        node_of[order] = first * b + 1 + key
    new_seg = np.zeros(n_groups * b + 1, np.int64)
    np.cumsum(np.bincount(key, minlength=n_groups * b), out=new_seg[1:])
    return order[perm], new_seg


def descend(
    x: np.ndarray, blocks: np.ndarray, sqnorms: np.ndarray, canon: np.ndarray, height: int
) -> np.ndarray:
    """Paths of ``x`` down a tree one descriptor at a time (numba, one thread; for queries).

    Args:
        x: ``N x D`` float32 descriptors.
        blocks, sqnorms, canon: the tree's ``(n_internal, B, D)`` children, their ``(n_internal,
            B)`` squared norms and canonical children.
        height: tree height ``H``.

    Returns:
        ``(N, H)`` int64 node ids at levels ``1 ... H``.
    """
    paths = np.empty((x.shape[0], height), np.int64)
    flat = blocks.reshape(blocks.shape[0], -1)
    voctree_numba.descend_nb(x, blocks, flat, sqnorms, canon, paths)
    return paths


def row_sqnorms(c: np.ndarray) -> np.ndarray:
    """``(n,)`` float32 squared norms of the rows of ``c`` (numba: the training kernels' sums)."""
    if backend() == "numba" and c.shape[0]:
        out = np.empty(c.shape[0], np.float32)
        voctree_numba.sqnorms_nb(c, out)
        return out
    return np.einsum("nd,nd->n", c, c)


def canonical_children(blocks: np.ndarray, source: np.ndarray) -> np.ndarray:
    """:func:`first_equal_sibling` with the builder's copy hint, by the current backend."""
    if backend() == "numba":
        canon = np.empty(source.shape, np.int64)
        voctree_numba.canon_nb(blocks, source, canon)
        return canon
    return first_equal_sibling(blocks, source)


def warm() -> str:
    """Compile (or load from the on-disk cache) the tree kernels on tiny inputs.

    Returns:
        The backend in use.
    """
    use = backend()
    if use != "numba":
        return use
    x = np.eye(3, 4, dtype=np.float32)
    order, seg = np.arange(3, dtype=np.int64), np.array([0, 3], np.int64)
    out = np.zeros((1, 2, 4), np.float32)
    given = np.zeros(1, np.bool_)
    sq, src, lab, _ = train_nodes(x, order, seg, x[:1], np.ones(1, np.float32), given, 3, 2, 7,
                                  out)  # fmt: skip
    assign(x, order, seg, out, sq, lab)
    canon = canonical_children(out, src)
    regroup(order, seg, lab, canon, node_of=np.zeros(3, np.int64))
    regroup(order, seg, lab, canon)
    descend(x, out, sq, canon, 1)
    row_sqnorms(x)
    return use


# ---- numpy ----------------------------------------------------------------------------------


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
    """Nearest of its group's centroids for every descriptor (exact squared L2, numpy).

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
    maybe &= original[:, None, :]
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

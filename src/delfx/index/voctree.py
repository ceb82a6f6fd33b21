"""A vocabulary tree (Nistér & Stewénius 2006): hierarchical k-means stored as flat arrays.

The tree is a complete ``B``-ary tree of height ``H``. Nodes are numbered breadth first: the root
is ``0`` and the children of node ``i`` are ``i * B + 1 ... i * B + B``, so level ``l`` holds the
``B ** l`` nodes ``level_start(l) ... level_start(l + 1) - 1`` with
``level_start(l) = (B ** l - 1) / (B - 1)``. Only the non-root centroids are stored, in node
order: row ``j - 1`` of :attr:`VocabTree.centroids` is node ``j``, so the ``B`` children of node
``p`` are the contiguous rows ``p * B ... p * B + B - 1`` (block ``p`` of
``centroids.reshape(-1, B, D)``).

Training (:func:`train_tree`) runs k-means level by level. Every node of a level is trained on at
most ``B * max_points_per_centroid`` of its descriptors: nodes with many descriptors use faiss,
and all the other nodes of the level run together as one batched Lloyd problem in numpy (each
node stops as soon as its assignment is stable). A node with at most ``B`` descriptors takes its
descriptors (repeated) as children and an empty node repeats its own centroid, so the tree stays
complete. :func:`quantize` descends all descriptors together, level by level: descriptors are
grouped by their current node and compared with its ``B`` children by batched matrix products
(:mod:`delfx.index.voctree_kernels`). Ties between repeated children go to the first copy
(:attr:`VocabTree.canon`), so such exact ties never depend on the batch a descriptor comes in
(distinct centroids within float32 rounding of each other still may).

Shapes: ``N`` descriptors of dimension ``D``, branch ``B``, height ``H``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from delfx.errors import InputError
from delfx.index.voctree_kernels import first_equal_sibling, nearest_in_groups, stable_argsort

logger = logging.getLogger(__name__)


def level_start(branch: int, level: int) -> int:
    """Id of the first node of ``level`` (the root is level 0) in a ``branch``-ary tree."""
    return (branch**level - 1) // (branch - 1)


@dataclass(frozen=True)
class VocabTree:
    """A trained vocabulary tree.

    Attributes:
        centroids: ``(n_nodes - 1, D)`` float32 centroids of nodes ``1 ... n_nodes - 1``.
        branch: children per node ``B`` (>= 2).
        height: number of levels below the root ``H`` (>= 1); leaves are at level ``H``.
        canon: ``(n_internal, B)`` int64, for child ``j`` of node ``p`` the first sibling with an
            identical centroid (see :func:`first_equal_sibling`); computed when None.
        sqnorms: ``(n_nodes - 1,)`` float32 squared norms of the centroids (derived).
    """

    centroids: np.ndarray
    branch: int
    height: int
    canon: np.ndarray | None = field(default=None, repr=False, compare=False)
    sqnorms: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        c = np.ascontiguousarray(self.centroids, dtype=np.float32)
        if self.branch < 2 or self.height < 1:
            raise InputError(
                f"tree needs branch >= 2 and height >= 1, got {self.branch}, {self.height}"
            )
        expected = self.n_nodes - 1
        if c.ndim != 2 or c.shape[0] != expected:
            raise InputError(
                f"tree of branch {self.branch} and height {self.height} needs {expected} "
                f"centroids, got array of shape {c.shape}"
            )
        object.__setattr__(self, "centroids", c)
        object.__setattr__(self, "sqnorms", np.einsum("nd,nd->n", c, c))
        blocks = c.reshape(-1, self.branch, c.shape[1])
        if self.canon is None:
            canon = first_equal_sibling(blocks)
        else:
            canon = np.asarray(self.canon, dtype=np.int64)
            own = np.arange(self.branch)
            if canon.shape != blocks.shape[:2] or (canon < 0).any() or (canon > own).any():
                raise InputError(f"tree canon must be {blocks.shape[:2]} with canon[:, j] <= j")
        object.__setattr__(self, "canon", canon)

    @property
    def dim(self) -> int:
        """Descriptor dimension ``D``."""
        return int(self.centroids.shape[1])

    @property
    def n_nodes(self) -> int:
        """Number of nodes, root included."""
        return level_start(self.branch, self.height + 1)

    @property
    def n_leaves(self) -> int:
        """Number of leaves ``B ** H``."""
        return self.branch**self.height

    def level_start(self, level: int) -> int:
        """Id of the first node of ``level`` (0 = root, ``H`` = leaves)."""
        return level_start(self.branch, level)

    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """Children centroids and squared norms per internal node.

        Returns:
            ``(n_internal, B, D)`` float32 view and ``(n_internal, B)`` float32 view; block ``p``
            holds the children of node ``p``.
        """
        b, d = self.branch, self.dim
        return self.centroids.reshape(-1, b, d), self.sqnorms.reshape(-1, b)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able meta and named arrays, for ``storage.save_arrays``."""
        meta = {"branch": self.branch, "height": self.height, "dim": self.dim}
        return meta, {"centroids": self.centroids}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> VocabTree:
        """Rebuild a tree from :meth:`state` output (checked against the meta)."""
        try:
            branch, height, dim = int(meta["branch"]), int(meta["height"]), int(meta["dim"])
            centroids = arrays["centroids"]
        except KeyError as exc:
            raise InputError(f"vocabulary tree state lacks {exc}") from None
        tree = cls(centroids, branch, height)
        if tree.dim != dim:
            raise InputError(
                f"vocabulary tree centroids have dimension {tree.dim}, meta says {dim}"
            )
        return tree


def as_descriptors(descriptors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``N x D`` contiguous float32 (an empty 1-D array is ``0 x dim``), with a dimension check."""
    x = np.asarray(descriptors)
    if x.size == 0 and dim is not None:
        if x.ndim != 2 or x.shape[1] in (0, dim):
            return np.zeros((0, dim), dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"descriptors must be an N x D array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"descriptor dimension {x.shape[1]} does not match the tree's {dim}")
    return np.ascontiguousarray(x, dtype=np.float32)


def quantize(tree: VocabTree, descriptors: np.ndarray, *, batch: int = 65536) -> np.ndarray:
    """Paths of descriptors down the tree.

    Args:
        tree: the vocabulary tree.
        descriptors: ``N x D`` float32.
        batch: descriptors per block of work (bounds temporary memory).

    Returns:
        ``(N, H)`` int64 node ids at levels ``1 ... H``; the last column is the leaf.
    """
    x = as_descriptors(descriptors, tree.dim)
    blocks, sq = tree.blocks()
    paths = np.empty((x.shape[0], tree.height), dtype=np.int64)
    node = np.zeros(x.shape[0], dtype=np.int64)
    for level in range(tree.height):
        slot = nearest_in_groups(x, node, blocks, sq, batch=batch)
        node = node * tree.branch + 1 + tree.canon[node, slot]
        paths[:, level] = node
    return paths


def _lloyd(
    x: np.ndarray,
    rows: np.ndarray,
    groups: np.ndarray,
    init: np.ndarray,
    niter: int,
) -> np.ndarray:
    """Batched k-means: group ``g`` clusters ``x[rows[groups == g]]`` into ``B`` centroids.

    A group stops as soon as its assignment repeats (its centroids are then a fixed point);
    an empty cluster keeps its previous centroid.

    Args:
        x: ``N' x D`` float32 descriptors.
        rows: ``(N,)`` rows of ``x`` taking part.
        groups: ``(N,)`` group of each row, in ``[0, G)``.
        init: ``(G, B, D)`` float32 initial centroids.
        niter: maximum iterations.

    Returns:
        ``(G, B, D)`` float32 centroids.
    """
    cent = init.copy()
    n_groups, b, d = cent.shape
    sq = np.einsum("gbd,gbd->gb", cent, cent)
    xs = x[rows]  # contiguous, grouped: the gathers below stay sequential
    rows = np.arange(rows.size)
    prev = np.full(rows.size, -1, dtype=np.int64)
    for it in range(niter):
        if rows.size == 0:
            break
        assign = nearest_in_groups(xs, groups, cent, sq, rows=rows)
        # groups are sorted: number the active ones 0 ... A - 1
        first = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        active = groups[first]
        local = np.repeat(np.arange(active.size), np.diff(np.r_[first, groups.size]))
        label = local * b + assign
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
        moved = np.bincount(local, weights=assign != prev, minlength=active.size) > 0
        keep = moved[local]
        logger.debug("lloyd iteration %d: %d of %d groups moving", it, moved.sum(), active.size)
        rows, groups, prev = rows[keep], groups[keep], assign[keep]
    return cent


def _train_level(
    x: np.ndarray,
    groups: np.ndarray,
    parent: np.ndarray,
    out: np.ndarray,
    rng: np.random.Generator,
    *,
    seed: int,
    niter: int,
    max_points_per_centroid: int,
    faiss_min_points: int | None,
) -> np.ndarray:
    """Children centroids of every node of one level, written into ``out``.

    Args:
        x: ``N x D`` float32 descriptors.
        groups: ``(N,)`` node of each descriptor within the level, in ``[0, G)``.
        parent: ``(G, D)`` float32 centroid of each node (repeated for empty nodes).
        out: ``(G, B, D)`` float32 view to fill.
        rng: generator for subsampling and initialisation.
        seed: base faiss seed.
        niter: k-means iterations.
        max_points_per_centroid: each node trains on at most ``B`` times this many descriptors.
        faiss_min_points: nodes with at least this many training descriptors use faiss
            (None: those with the full ``B * max_points_per_centroid``).

    Returns:
        ``(G, B)`` int64: the child that each child was copied from (itself if trained).
    """
    n_groups, branch, d = out.shape
    shuffle = rng.permutation(groups.size)
    order = shuffle[stable_argsort(groups[shuffle])]  # by node, random within a node
    counts = np.bincount(groups, minlength=n_groups)
    first = np.cumsum(counts) - counts
    rank = np.arange(groups.size) - np.repeat(first, counts)
    cap = branch * max_points_per_centroid
    rows = order[rank < cap]  # training rows, grouped by node
    n_train = np.minimum(counts, cap)
    start = np.cumsum(n_train) - n_train
    # empty nodes repeat their own centroid; tiny nodes take their descriptors, repeated
    empty = np.flatnonzero(n_train == 0)
    source = np.tile(np.arange(branch), (n_groups, 1))  # which child each child copies
    out[empty] = parent[empty][:, None, :]
    source[empty] = 0
    small = np.flatnonzero((n_train > 0) & (n_train <= branch))
    source[small] = np.arange(branch) % n_train[small][:, None]
    out[small] = x[rows[start[small][:, None] + source[small]]]
    # nodes with many descriptors: faiss, one by one
    threshold = max(cap if faiss_min_points is None else faiss_min_points, branch + 1)
    big = np.flatnonzero(n_train >= threshold)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # OpenMP start-up dwarfs these small problems
    try:
        for g in big:
            km = faiss.Kmeans(
                d,
                branch,
                niter=niter,
                seed=seed + int(g),
                max_points_per_centroid=max_points_per_centroid,
                min_points_per_centroid=1,
                verbose=False,
            )
            km.train(np.ascontiguousarray(x[rows[start[g] : start[g] + n_train[g]]]))
            out[g] = km.centroids
    finally:
        faiss.omp_set_num_threads(threads)
    # the rest: one batched Lloyd problem, initialised with B distinct random descriptors
    mid = np.flatnonzero((n_train > branch) & (n_train < threshold))
    if mid.size:
        local = np.full(n_groups, -1, dtype=np.int64)
        local[mid] = np.arange(mid.size)
        row_local = np.repeat(local, n_train)
        take = row_local >= 0
        init = x[rows[start[mid][:, None] + np.arange(branch)[None, :]]]
        out[mid] = _lloyd(x, rows[take], row_local[take], init, niter)
    logger.debug(
        "level of %d nodes: %d empty, %d tiny, %d faiss, %d batched",
        n_groups,
        empty.size,
        small.size,
        big.size,
        mid.size,
    )
    return source


def train_tree(
    descriptors: np.ndarray,
    branch: int,
    height: int,
    *,
    seed: int = 0,
    niter: int = 20,
    max_points_per_centroid: int = 64,
    faiss_min_points: int | None = None,
) -> VocabTree:
    """Train a vocabulary tree by hierarchical k-means, one level at a time.

    Args:
        descriptors: ``N x D`` float32 training descriptors (``N >= 1``).
        branch: children per node ``B`` (>= 2).
        height: levels below the root ``H`` (>= 1).
        seed: seed of subsampling, initialisation and faiss (deterministic for a thread count).
        niter: maximum k-means iterations per node (batched nodes stop when stable).
        max_points_per_centroid: each node trains on at most ``B`` times this many of its
            descriptors (a random subsample); all descriptors are then assigned to its children.
        faiss_min_points: nodes with at least this many training descriptors are trained one by
            one with faiss, the others together with batched numpy Lloyd iterations (None: faiss
            for the nodes that fill ``B * max_points_per_centroid``).

    Returns:
        The tree.
    """
    x = as_descriptors(descriptors)
    if x.shape[0] == 0:
        raise InputError("vocabulary tree: no training descriptors")
    if branch < 2 or height < 1:
        raise InputError(f"tree needs branch >= 2 and height >= 1, got {branch}, {height}")
    rng = np.random.default_rng(seed)
    n, d = x.shape
    centroids = np.empty((level_start(branch, height) * branch, d), dtype=np.float32)
    canon = np.empty((level_start(branch, height), branch), dtype=np.int64)
    node = np.zeros(n, dtype=np.int64)
    for level in range(height):
        first, n_groups = level_start(branch, level), branch**level
        if level == 0:
            parent = x.mean(axis=0, keepdims=True)
        else:
            parent = centroids[first - 1 : first - 1 + n_groups]
        blocks = centroids[first * branch : (first + n_groups) * branch].reshape(
            n_groups, branch, d
        )
        source = _train_level(
            x,
            node - first,
            parent,
            blocks,
            rng,
            seed=seed + first,
            niter=niter,
            max_points_per_centroid=max_points_per_centroid,
            faiss_min_points=faiss_min_points,
        )
        canon[first : first + n_groups] = first_equal_sibling(blocks, source)
        if level + 1 < height:
            sq = np.einsum("gbd,gbd->gb", blocks, blocks)
            # (ties between repeated children are resolved here by rounding; any copy is fine)
            node = node * branch + 1 + nearest_in_groups(x, node - first, blocks, sq)
        logger.info(
            "vocabulary tree: level %d of %d trained (%d nodes)", level + 1, height, n_groups
        )
    return VocabTree(centroids, branch, height, canon)

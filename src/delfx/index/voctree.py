"""A vocabulary tree (Nistér & Stewénius 2006): hierarchical k-means stored as flat arrays.

The tree is a complete ``B``-ary tree of height ``H``. Nodes are numbered breadth first: the root
is ``0`` and the children of node ``i`` are ``i * B + 1 ... i * B + B``, so level ``l`` holds the
``B ** l`` nodes ``level_start(l) ... level_start(l + 1) - 1`` with
``level_start(l) = (B ** l - 1) / (B - 1)``. Only the non-root centroids are stored, in node
order: row ``j - 1`` of :attr:`VocabTree.centroids` is node ``j``, so the ``B`` children of node
``p`` are the contiguous rows ``p * B ... p * B + B - 1`` (block ``p`` of
``centroids.reshape(-1, B, D)``).

Training (:func:`train_tree`) runs k-means level by level on one random permutation of the
descriptors, kept grouped by node (:mod:`delfx.index.voctree_kernels`): a node trains on its
first ``B * max_points_per_centroid`` descriptors in that random order, starting from the ``B``
of them with the smallest keys of a per-level hash, with Lloyd iterations that stop as soon as
its assignment repeats. All nodes of a level are trained in one call: compiled and parallel over
nodes with numba, batched matrix products with numpy (``DELFX_NUMBA=0``,
:mod:`delfx.index.voctree_train`; the same algorithm, the same tree up to float32 near-ties). A
node with at most ``B`` descriptors takes its descriptors (repeated) as children and an empty
node repeats its own centroid, so the tree stays complete. Optionally, nodes with many training
descriptors are trained one by one with faiss.
:func:`quantize` descends a few descriptors (a query) one by one and many together, level by
level, grouped by node. Ties between repeated children go to the first copy
(:attr:`VocabTree.canon`), so such exact ties never depend on the batch a descriptor comes in
(distinct centroids within float32 rounding of each other still may).

Shapes: ``N`` descriptors of dimension ``D``, branch ``B``, height ``H``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from delfx.errors import InputError
from delfx.index.kernels import backend
from delfx.index.voctree_kernels import (
    assign,
    canonical_children,
    descend,
    first_equal_sibling,
    nearest_in_groups,
    regroup,
    row_sqnorms,
    train_nodes,
)
from delfx.index.voctree_train import faiss_nodes, train_nodes_np

__all__ = ["VocabTree", "first_equal_sibling", "level_start", "quantize", "train_tree"]

logger = logging.getLogger(__name__)

#: numba: up to this many descriptors (a query) descend one by one on one thread; more are
#: grouped by node level by level, in parallel (each node's children are then read once)
_DESCEND_MAX = 16384


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
        sqnorms: ``(n_nodes - 1,)`` float32 squared norms of the centroids (derived: computed
            by :func:`~delfx.index.voctree_kernels.row_sqnorms` when None).
    """

    centroids: np.ndarray
    branch: int
    height: int
    canon: np.ndarray | None = field(default=None, repr=False, compare=False)
    sqnorms: np.ndarray | None = field(default=None, repr=False, compare=False)

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
        if self.sqnorms is None:
            sq = row_sqnorms(c)
        else:
            sq = np.ascontiguousarray(self.sqnorms, dtype=np.float32)
            if sq.shape != (expected,):
                raise InputError(f"tree sqnorms must have shape ({expected},), got {sq.shape}")
        object.__setattr__(self, "sqnorms", sq)
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
        batch: descriptors per block of work of the numpy backend (bounds temporary memory).
            Numba descends up to 16384 descriptors one by one, more grouped by node.

    Returns:
        ``(N, H)`` int64 node ids at levels ``1 ... H``; the last column is the leaf.
    """
    x = as_descriptors(descriptors, tree.dim)
    blocks, sq = tree.blocks()
    b, n = tree.branch, x.shape[0]
    if backend() == "numba" and n <= _DESCEND_MAX:
        return descend(x, blocks, sq, tree.canon, tree.height)
    if backend() == "numba":
        cols = np.empty((tree.height, n), dtype=np.int64)
        order, seg = np.arange(n, dtype=np.int64), np.array([0, n], dtype=np.int64)
        for level in range(tree.height):
            first, size = tree.level_start(level), b**level
            nodes = slice(first, first + size)
            lab = np.full(n, -1, dtype=np.int64)
            assign(x, order, seg, blocks[nodes], sq[nodes], lab)
            order, seg = regroup(
                order, seg, lab, tree.canon[nodes], first=first, node_of=cols[level]
            )
        return np.ascontiguousarray(cols.T)
    paths = np.empty((n, tree.height), dtype=np.int64)
    node = np.zeros(n, dtype=np.int64)
    for level in range(tree.height):
        slot = nearest_in_groups(x, node, blocks, sq, batch=batch)
        node = node * b + 1 + tree.canon[node, slot]
        paths[:, level] = node
    return paths


def _fresh(shape: tuple[int, int]) -> np.ndarray:
    """``np.empty(shape, float32)`` without numpy's huge-page advice for large arrays.

    Under ``transparent_hugepage/defrag = madvise`` (a common default) that advice makes the
    kernel compact memory on the first touch of every page, which took seconds for the 570 MB of
    a 10^6-leaf tree on a busy machine; without it the kernel still uses huge pages when it has
    them free, and falls back to small pages otherwise.
    """
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # pragma: no cover - other numpy layouts
        return np.empty(shape, dtype=np.float32)
    old = _set_madvise_hugepage(False)
    try:
        return np.empty(shape, dtype=np.float32)
    finally:
        _set_madvise_hugepage(old)


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
        seed: seed of the permutation that picks each node's training descriptors and initial
            centroids (and of faiss); the tree does not depend on the number of threads.
        niter: maximum Lloyd iterations per node (each node stops when its assignment repeats).
        max_points_per_centroid: each node trains on at most ``B`` times this many of its
            descriptors (a random subsample); all descriptors are then assigned to its children.
        faiss_min_points: nodes with at least this many training descriptors are trained one by
            one with faiss instead (None: no node is).

    Returns:
        The tree.
    """
    x = as_descriptors(descriptors)
    if x.shape[0] == 0:
        raise InputError("vocabulary tree: no training descriptors")
    if branch < 2 or height < 1:
        raise InputError(f"tree needs branch >= 2 and height >= 1, got {branch}, {height}")
    use_numba = backend() == "numba"
    n, d = x.shape
    cap = branch * max_points_per_centroid
    rows = level_start(branch, height) * branch
    centroids = _fresh((rows, d))
    sqnorms = np.empty(rows, dtype=np.float32)
    canon = np.empty((level_start(branch, height), branch), dtype=np.int64)
    # one random permutation: the first descriptors of a node are a random sample of it
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    seg = np.array([0, n], dtype=np.int64)
    # the root is never empty (N >= 1), so its own centroid is never copied
    parent, parent_sq = np.zeros((1, d), dtype=np.float32), np.zeros(1, dtype=np.float32)
    for level in range(height):
        first, n_groups = level_start(branch, level), branch**level
        span = slice(first * branch, (first + n_groups) * branch)
        blocks = centroids[span].reshape(n_groups, branch, d)
        given = faiss_nodes(x, order, seg, blocks, cap=cap, min_points=faiss_min_points,
                            niter=niter, seed=seed + first)  # fmt: skip
        fit = train_nodes if use_numba else train_nodes_np
        salt = (seed << 8 | level) & 0xFFFFFFFFFFFF
        sq, src, lab, passes = fit(
            x, order, seg, parent, parent_sq, given, cap, niter, salt, blocks
        )
        sqnorms[span] = sq.ravel()
        canon[first : first + n_groups] = canonical_children(blocks, src)
        if level + 1 < height:
            assign(x, order, seg, blocks, sq, lab)
            order, seg = regroup(order, seg, lab, canon[first : first + n_groups])
            parent, parent_sq = centroids[span], sqnorms[span]
        if logger.isEnabledFor(logging.DEBUG):
            lloyd = passes > 0
            logger.debug(
                "level %d: %d nodes, %d faiss, %d Lloyd (%.1f passes on average)",
                level + 1,
                n_groups,
                given.sum(),
                lloyd.sum(),
                passes[lloyd].mean() if lloyd.any() else 0.0,
            )
    logger.info("vocabulary tree: %d levels of branch %d trained", height, branch)
    # numpy: the tree recomputes its norms with the same einsum; numba: with the same kernel
    return VocabTree(centroids, branch, height, canon, sqnorms if use_numba else None)

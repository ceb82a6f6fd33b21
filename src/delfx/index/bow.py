"""TF-IDF bags of words over a vocabulary tree, scored with the Nistér–Stewénius L1 distance.

Words. Every node of the tree at levels ``min_level ... H`` is a word (the root, level 0, never
is: every descriptor passes through it). Word ``w`` is node ``w + level_start(min_level)``.

Vectors. For an image ``d`` with ``tf[d, i]`` descriptors passing through node ``i``, the weight
is ``idf[i] = log(N / N_i)`` with ``N`` the images of the index and ``N_i`` the images with at
least one descriptor through ``i`` (``idf = 0`` where ``N_i = 0``: nothing can match there).
With ``idf_from="train"`` the idf is instead fixed once from a set of training images (``N``
and ``N_i`` counted on those), so it does not drift as images are added. The bag of words is
``d_i = tf[d, i] * idf[i] / sum_j tf[d, j] * idf[j]`` (L1-normalised); the query ``q`` is built the
same way with the same idf. An image whose weights all vanish (no descriptors, or all its words
in every image) has the zero vector and never scores.

Score. For non-negative ``a, b``: ``|a - b| = a + b - 2 min(a, b)``. Summing over the nodes, with
``sum_i q_i = sum_i d_i = 1``::

    ||q - d||_1 = 2 - 2 * s(q, d),      s(q, d) = sum_i min(q_i, d_i)

and ``min(q_i, d_i) = 0`` unless both are non-zero. So ranking by increasing L1 distance is
ranking by decreasing ``s``, and ``s`` only needs the inverted lists of the query's words with
``q_i > 0``: each posting ``(i, d, tf)`` found there adds ``min(q_i, tf * idf[i] / norm[d])``.
``s`` lies in ``[0, 1]`` (1 for identical bags).

Storage and adds. The inverted file (:class:`delfx.index.invfile.InvertedFile`) holds one posting
per (word, image) pair with payload ``tf`` (counts: uint16, or int32 in a segment where a count
reaches 65536), never weights: idf and the per-image
norms are derived state, recomputed (vectorised over all postings) the first time an index is
scored. :meth:`TreeIndex.add` appends one segment and returns a new index whose derived state is
computed afresh from all postings, so its scores are those of an index built from scratch on all
images: the document frequencies are the same integers, every image's norm is summed over its own
postings in word order in both cases (all postings of an image live in one segment), and every
image's score is summed over its hits in query-word order in both cases — bit for bit.

Shapes: ``N`` images, ``W`` words, ``n`` descriptors of dimension ``D``, tree height ``H``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from delfx.errors import InputError
from delfx.index import kernels
from delfx.index.invfile import InvertedFile, Segment, build_segment
from delfx.index.voctree import VocabTree, as_descriptors, quantize
from delfx.index.voctree_kernels import stable_argsort

logger = logging.getLogger(__name__)

IDF_SOURCES = ("index", "train")
_CHUNK = 1 << 20  # descriptors quantised at once while adding images


def idf_weights(df: np.ndarray, n_images: int) -> np.ndarray:
    """``(W,)`` float64 ``log(N / N_i)``, 0 where ``N_i = 0``."""
    df = np.asarray(df, dtype=np.float64)
    out = np.zeros(df.shape, dtype=np.float64)
    seen = df > 0
    out[seen] = np.log(n_images / df[seen])
    return out


def _spans(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` ranges of items whose sizes add up to at most ``limit``."""
    spans, start, total = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and total + n > limit:
            spans.append((start, i))
            start, total = i, 0
        total += n
    return [*spans, (start, len(sizes))] if start < len(sizes) else spans


def _rank(scores: np.ndarray, top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Ids by decreasing score, ties by increasing id; the first ``top_k`` (all when None)."""
    n = scores.size
    if top_k is not None and (not isinstance(top_k, int | np.integer) or top_k < 0):
        raise InputError(f"top_k must be a non-negative integer or None, got {top_k!r}")
    k = n if top_k is None else min(int(top_k), n)
    if k < n:
        kth = np.partition(scores, n - k)[n - k] if k > 0 else np.inf
        cand = np.flatnonzero(scores >= kth)
    else:
        cand = np.arange(n)
    ids = cand[np.lexsort((cand, -scores[cand]))][:k].astype(np.int64)
    return ids, scores[ids]


class TreeIndex:
    """An inverted-file TF-IDF index over a vocabulary tree (immutable; adds return a copy).

    Args:
        tree: the trained vocabulary tree.
        min_level: first tree level whose nodes are words (1 = all but the root).
        idf_from: ``"index"`` (default): idf from the indexed images, recomputed after every
            add; ``"train"``: idf fixed from ``train_descriptors``.
        train_descriptors: per training image, its ``n x D`` descriptors (``"train"`` only).
    """

    def __init__(
        self,
        tree: VocabTree,
        *,
        min_level: int = 1,
        idf_from: str = "index",
        train_descriptors: Sequence[np.ndarray] | None = None,
    ):
        if not 1 <= min_level <= tree.height:
            raise InputError(f"min_level must be in [1, {tree.height}], got {min_level}")
        if idf_from not in IDF_SOURCES:
            raise InputError(f"idf_from must be one of {IDF_SOURCES}, got {idf_from!r}")
        self.tree = tree
        self.min_level = int(min_level)
        self.idf_from = idf_from
        self.word_offset = tree.level_start(self.min_level)
        self.n_words = tree.n_nodes - self.word_offset
        self.inverted = InvertedFile(self.n_words)
        self.n_images = 0
        self._fixed_idf: np.ndarray | None = None
        self._derived_cache: tuple[np.ndarray, np.ndarray] | None = None
        if idf_from == "train":
            if not train_descriptors:
                raise InputError("idf_from='train' needs train_descriptors (one array per image)")
            words, _, _ = self._postings(self._leaves(train_descriptors))
            df = np.bincount(words, minlength=self.n_words)
            self._fixed_idf = idf_weights(df, len(train_descriptors))
            logger.info("tree index: idf fixed from %d training images", len(train_descriptors))
        elif train_descriptors is not None:
            raise InputError("train_descriptors are only used with idf_from='train'")

    # ------------------------------------------------------------------ building

    def _leaves(self, descriptor_lists: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image, the ``(n,)`` leaf index of each descriptor (quantised in chunks)."""
        arrays = [as_descriptors(d, self.tree.dim) for d in descriptor_lists]
        sizes = [a.shape[0] for a in arrays]
        first_leaf = self.tree.level_start(self.tree.height)
        out: list[np.ndarray] = []
        for i, j in _spans(sizes, _CHUNK):
            leaves = quantize(self.tree, np.concatenate(arrays[i:j]))[:, -1] - first_leaf
            out.extend(np.split(leaves, np.cumsum(sizes[i:j])[:-1]))
        return out

    def _check_leaves(self, leaf_lists: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for leaves in leaf_lists:
            leaves = np.asarray(leaves).reshape(-1)
            if leaves.size and not np.issubdtype(leaves.dtype, np.integer):
                raise InputError(f"leaf ids must be integers, got {leaves.dtype}")
            leaves = leaves.astype(np.int64)
            if leaves.size and (leaves.min() < 0 or leaves.max() >= self.tree.n_leaves):
                raise InputError(f"leaf index out of range [0, {self.tree.n_leaves})")
            out.append(leaves)
        return out

    def _postings(
        self, leaf_lists: Sequence[np.ndarray], image_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One posting per (word, image) reached by the images' descriptors, sorted by word.

        The path of a leaf is its chain of ancestors, and ``parent(i) = (i - 1) // B`` is
        monotone: once an image's leaves are sorted, its nodes at every level are sorted too, so
        one sort per block of images gives the counts of all levels by run lengths. Each level's
        (image, node) table is then put in node-major order (a CSR to CSC conversion, i.e. a
        counting sort, or a radix sort when it is sparse); levels hold consecutive word ranges,
        so concatenating them in level order sorts all postings by word, with images in input
        order within a word.

        Returns:
            ``(words, image ids, tf)`` int64.
        """
        n_img = len(leaf_lists)
        ids = np.arange(n_img, dtype=np.int64) if image_ids is None else image_ids
        tree = self.tree
        levels = range(self.min_level, tree.height + 1)
        runs: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {lv: [] for lv in levels}
        sizes = [v.size for v in leaf_lists]
        for start, stop in _spans(sizes, _CHUNK):
            if not sum(sizes[start:stop]):
                continue
            pos = np.repeat(np.arange(start, stop, dtype=np.int64), sizes[start:stop])
            key = np.sort(pos * tree.n_leaves + np.concatenate(leaf_lists[start:stop]))
            pos, node = np.divmod(key, tree.n_leaves)
            node += tree.level_start(tree.height)
            for level in range(tree.height, self.min_level - 1, -1):
                first = np.flatnonzero(np.r_[True, (node[1:] != node[:-1]) | (pos[1:] != pos[:-1])])
                tf = np.diff(np.r_[first, node.size])
                runs[level].append((pos[first], node[first], tf))
                node = (node - 1) // tree.branch
        words, images, counts = [], [], []
        for level in levels:
            if not runs[level]:
                continue
            pos, node, tf = (np.concatenate(p) for p in zip(*runs[level], strict=True))
            first_node, n_nodes = tree.level_start(level), tree.branch**level
            if node.size < n_nodes:  # sparse: a radix sort of the postings
                order = stable_argsort(node - first_node)
                words.append(node[order])
                images.append(ids[pos[order]])
                counts.append(tf[order])
                continue
            indptr = np.r_[0, np.cumsum(np.bincount(pos, minlength=n_img))]
            table = sp.csr_matrix((tf, node - first_node, indptr), shape=(n_img, n_nodes))
            table = table.tocsc()  # node-major; images ascending within a node
            per_node = np.diff(table.indptr)
            words.append(np.repeat(np.arange(first_node, first_node + n_nodes), per_node))
            images.append(ids[table.indices])
            counts.append(table.data.astype(np.int64))
        if not words:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (
            np.concatenate(words) - self.word_offset,
            np.concatenate(images),
            np.concatenate(counts),
        )

    def _check_ids(self, count: int, image_ids: Sequence[int] | np.ndarray | None) -> np.ndarray:
        if image_ids is None:
            return np.arange(self.n_images, self.n_images + count, dtype=np.int64)
        ids = np.asarray(image_ids)
        if ids.shape != (count,) or (count and not np.issubdtype(ids.dtype, np.integer)):
            raise InputError(f"need {count} integer image ids, got array of shape {ids.shape}")
        ids = ids.astype(np.int64)
        if count and ids.min() < self.n_images:
            raise InputError(f"image ids must be new (>= {self.n_images}), got {int(ids.min())}")
        if np.unique(ids).size != count:
            raise InputError("image ids repeat")
        return ids

    def _with_leaves(self, leaf_lists: list[np.ndarray], ids: np.ndarray) -> TreeIndex:
        if ids.size == 0:
            return self
        words, images, tf = self._postings(leaf_lists, ids)
        tf = tf.astype(np.uint16 if tf.size == 0 or tf.max() < 1 << 16 else np.int32)
        # already sorted by word: build_segment's stable sort finds a single run
        segment = build_segment(words, images, self.n_words, {"tf": tf})
        new = copy.copy(self)
        new.inverted = self.inverted.add(segment)
        new.n_images = max(self.n_images, int(ids.max()) + 1)
        new._derived_cache = None
        logger.info(
            "tree index: added %d images (%d postings); %d images in %d segments",
            ids.size,
            segment.n_postings,
            new.n_images,
            len(new.inverted.segments),
        )
        return new

    def add(
        self,
        descriptor_lists: Sequence[np.ndarray],
        image_ids: Sequence[int] | np.ndarray | None = None,
    ) -> TreeIndex:
        """A new index with these images appended as one segment (this one is unchanged).

        Args:
            descriptor_lists: per image, its ``n x D`` descriptors (``n`` may be 0).
            image_ids: new distinct ids, all ``>= n_images`` (default: the next consecutive
                ids). Ids skipped over count as images without features.

        Returns:
            The new index; its idf and norms are recomputed from all postings.
        """
        ids = self._check_ids(len(descriptor_lists), image_ids)
        return self._with_leaves(self._leaves(descriptor_lists), ids)

    def add_leaves(
        self,
        leaf_lists: Sequence[np.ndarray],
        image_ids: Sequence[int] | np.ndarray | None = None,
    ) -> TreeIndex:
        """Like :meth:`add`, from per-descriptor leaf indices (as :meth:`words` returns)."""
        ids = self._check_ids(len(leaf_lists), image_ids)
        return self._with_leaves(self._check_leaves(leaf_lists), ids)

    # ------------------------------------------------------------------ derived state

    def document_frequency(self) -> np.ndarray:
        """``(W,)`` images per word (one posting per (word, image), so list lengths add up)."""
        df = np.zeros(self.n_words, dtype=np.int64)
        for seg in self.inverted.segments:
            df += np.diff(seg.offsets)
        return df

    def derived(self) -> tuple[np.ndarray, np.ndarray]:
        """``(idf (W,), inverse L1 norm per image (N,))``, float64; cached per index."""
        if self._derived_cache is None:
            if self._fixed_idf is not None:
                idf = self._fixed_idf
            else:
                idf = idf_weights(self.document_frequency(), self.n_images)
            norms = kernels.tree_norms(self.inverted.segments, idf, self.n_images)
            inv = np.zeros_like(norms)
            np.divide(1.0, norms, out=inv, where=norms > 0)
            self._derived_cache = (idf, inv)
        return self._derived_cache

    # ------------------------------------------------------------------ querying

    def scores_from_leaves(self, leaves: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 ``s(q, d) = sum_i min(q_i, d_i)`` of a query given by its leaf ids."""
        leaves = self._check_leaves([leaves])[0]
        if leaves.size == 0:
            raise InputError("query has no features")
        idf, inv_norm = self.derived()
        words, _, counts = self._postings([leaves])
        q = counts * idf[words]
        keep = q > 0
        words, q = words[keep], q[keep]
        total = q.sum()
        if self.n_images == 0 or total <= 0:
            return np.zeros(self.n_images, dtype=np.float64)
        q /= total
        out = np.zeros(self.n_images, dtype=np.float64)
        idf_q = idf[words]
        for seg in self.inverted.segments:  # words ascend: one pass per segment
            bad = kernels.tree_scan(seg.offsets, seg.image_ids, seg.payload["tf"], words, idf_q,
                                    q, inv_norm, out)  # fmt: skip
            kernels.check_scan(bad, self.n_images)
        return out

    def scores(self, descriptors: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 similarity ``s(q, d)`` of every image (``||q - d||_1 = 2 - 2 s``)."""
        if as_descriptors(descriptors, self.tree.dim).shape[0] == 0:
            raise InputError("query has no features")
        return self.scores_from_leaves(self.words(descriptors))

    def search(
        self, descriptors: np.ndarray, top_k: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank the images for one query.

        Args:
            descriptors: ``n x D`` query descriptors (``n >= 1``).
            top_k: results to return (all images when None).

        Returns:
            ``(K,)`` int64 image ids by decreasing score (ties: increasing id), ``(K,)`` float64
            scores ``s`` in ``[0, 1]``.
        """
        return _rank(self.scores(descriptors), top_k)

    def search_leaves(
        self, leaves: np.ndarray, top_k: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for a query given by its descriptors' leaf ids (see :meth:`words`)."""
        return _rank(self.scores_from_leaves(leaves), top_k)

    def search_batch(
        self, queries: Sequence[np.ndarray], top_k: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search` for many queries (quantised together); one ``(ids, scores)`` each."""
        arrays = [as_descriptors(q, self.tree.dim) for q in queries]
        for i, a in enumerate(arrays):
            if a.shape[0] == 0:
                raise InputError(f"query {i} has no features")
        return [_rank(self.scores_from_leaves(v), top_k) for v in self._leaves(arrays)]

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """``(n,)`` int64 leaf index in ``[0, B ** H)`` of each descriptor (for word matching)."""
        x = as_descriptors(descriptors, self.tree.dim)
        return quantize(self.tree, x)[:, -1] - self.tree.level_start(self.tree.height)

    def stats(self) -> dict[str, np.ndarray]:
        """Derived statistics to store beside the segments: ``idf`` (W,), ``inv_norm`` (N,)."""
        idf, inv = self.derived()
        return {"idf": idf, "inv_norm": inv}

    def nbytes(self) -> int:
        """Memory of the postings and the derived idf and norms, in bytes (tree excluded)."""
        idf, inv = self.derived()
        return self.inverted.nbytes() + idf.nbytes + inv.nbytes

    # ------------------------------------------------------------------ state

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able meta and model arrays; the caller saves ``inverted.segments`` separately."""
        tree_meta, tree_arrays = self.tree.state()
        meta = {
            "kind": "voctree",
            **tree_meta,
            "min_level": self.min_level,
            "idf_from": self.idf_from,
            "n_images": self.n_images,
            "n_words": self.n_words,
        }
        arrays = {f"tree_{k}": v for k, v in tree_arrays.items()}
        if self._fixed_idf is not None:
            arrays["idf"] = self._fixed_idf
        return meta, arrays

    @classmethod
    def from_state(
        cls,
        meta: dict[str, Any],
        arrays: dict[str, np.ndarray],
        segments: Sequence[Segment] = (),
        *,
        n_images: int | None = None,
        stats: dict[str, np.ndarray] | None = None,
    ) -> TreeIndex:
        """Rebuild an index from :meth:`state` output and its segments (oldest first).

        Args:
            meta: the meta dict.
            arrays: the model arrays.
            segments: the inverted-file segments.
            n_images: image count when it changed since ``meta`` was saved (appends).
            stats: :meth:`stats` saved for these segments (else derived on the first query).
        """
        tree = VocabTree.from_state(
            meta, {k[len("tree_") :]: v for k, v in arrays.items() if k.startswith("tree_")}
        )
        index = cls(tree, min_level=int(meta.get("min_level", 1)))
        if meta.get("idf_from", "index") == "train":
            if "idf" not in arrays or arrays["idf"].shape != (index.n_words,):
                raise InputError(f"index state lacks a fixed idf of {index.n_words} words")
            index.idf_from = "train"
            index._fixed_idf = np.asarray(arrays["idf"], dtype=np.float64)
        index.inverted = InvertedFile(index.n_words, segments)
        top = max((int(s.image_ids.max()) + 1 for s in segments if s.n_postings), default=0)
        index.n_images = int(meta.get("n_images", 0) if n_images is None else n_images)
        if index.n_images < top:
            raise InputError(
                f"index segments name image {top - 1} but n_images is {index.n_images}"
            )
        for seg in segments:
            if "tf" not in seg.payload:
                raise InputError("index segment lacks the 'tf' payload of a tree index")
        if stats is not None and "idf" in stats and "inv_norm" in stats:
            idf, inv = np.asarray(stats["idf"]), np.asarray(stats["inv_norm"])
            if idf.shape == (index.n_words,) and inv.shape == (index.n_images,):
                index._derived_cache = (idf.astype(np.float64), inv.astype(np.float64))
        return index

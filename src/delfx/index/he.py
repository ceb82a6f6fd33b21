"""Flat codebook + Hamming embedding index (Jégou, Douze and Schmid, ECCV 2008).

Every database descriptor is one posting in the inverted file (payload ``sig``: its 64-bit HE
signature, see :mod:`delfx.index.hamming`), under its nearest word. A query descriptor visits
its ``ma`` nearest words (multiple assignment, query side only; optionally only the words within
``ma_ratio`` times the distance of the nearest) and is signed with each word's thresholds.

Score of database image ``d`` for query ``q`` (all pairs of descriptors sharing a word)::

    s(q, d) = Σ_{(i, j): w_i = w_j = w, h(i, j) <= max_h} exp(-h(i, j)² / σ²) · idf_w²
              ------------------------------------------------------------------
                                       ‖q‖ · ‖d‖

    idf_w = log(N / N_w)                  (N images indexed, N_w of them use word w; 0 if N_w = 0)
    ‖d‖   = sqrt(Σ_w idf_w² · n_w(d)²)    (n_w(d): descriptors of d in word w)
    ‖q‖   = sqrt(Σ_w idf_w² · m_w(q)²)    (m_w(q): query (descriptor, word) assignments in w)

With all distances 0 this is the cosine of the idf-weighted bag-of-words histograms, so scores
lie in [0, 1] and are comparable across queries. Images with ``‖d‖ = 0`` score 0. ``idf`` and
``‖d‖`` are derived from the postings whenever an index is made, so adding images in batches
gives exactly the scores of one build.

Shapes: ``N`` descriptors, ``D`` dimensions, ``W`` words, ``M`` query (descriptor, word) pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from delfx.errors import InputError
from delfx.index import kernels
from delfx.index.flat import FlatCodebookIndex, stack_lists
from delfx.index.hamming import MAX_H, SIGMA, HEParams, he_weight, signatures, train_he
from delfx.index.invfile import (
    InvertedFile,
    Segment,
    build_segment,
    segment_ids_bound,
)
from delfx.index.kmeans import Quantizer, assign, train_flat

logger = logging.getLogger(__name__)


# ---- helpers shared with the ASMK index ---------------------------------------------------


def check_query(descriptors: np.ndarray, dim: int) -> np.ndarray:
    """A query's descriptors as ``(N, D)`` float32; InputError when empty or of the wrong size."""
    x = np.asarray(descriptors)
    if x.size == 0:
        raise InputError("query has no descriptors")
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"query descriptors have shape {x.shape}, expected (N, {dim})")
    if not np.isfinite(x).all():
        raise InputError("query descriptors contain NaN or infinity")
    return np.ascontiguousarray(x, dtype=np.float32)


def _stats_fit(stats: Mapping[str, np.ndarray], n_words: int, n_images: int) -> bool:
    ok = "df" in stats and "norms" in stats
    return ok and stats["df"].shape == (n_words,) and stats["norms"].shape == (n_images,)


def check_new_ids(image_ids: Sequence[int] | np.ndarray | None, first: int, count: int) -> None:
    """Image ids of an add must continue the index: ``first, first + 1, ...`` (or be None)."""
    if image_ids is None:
        return
    ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    if ids.size != count or not np.array_equal(ids, np.arange(first, first + count)):
        raise InputError(
            f"image ids must be the next {count} ids {first}..{first + count - 1} of the index"
        )


def multi_assign(
    x: np.ndarray,
    centroids: np.ndarray,
    ma: int,
    ratio: float | None = None,
    quantizer: Quantizer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multiple assignment: the ``ma`` nearest words of each descriptor.

    Args:
        x: ``(N, D)`` float32.
        centroids: ``(W, D)`` float32.
        ma: words per descriptor.
        ratio: when set, keep a word only if its distance is ``<= ratio`` times the distance to
            the nearest word (Jégou et al. 2010 use 1.2).
        quantizer: search structure over ``centroids`` (default: exact search).

    Returns:
        ``(M,)`` row of ``x`` and ``(M,)`` word of each kept assignment, nearest first per row.
    """
    nn = assign(x, centroids if quantizer is None else quantizer, k=ma)
    rows = np.repeat(np.arange(x.shape[0], dtype=np.int64), ma)
    words = nn.reshape(-1)
    if ratio is not None and ma > 1:
        diff = x[rows].astype(np.float64) - centroids[words].astype(np.float64)
        d2 = np.einsum("ij,ij->i", diff, diff).reshape(-1, ma)
        keep = (d2 <= (ratio * ratio) * d2[:, :1]).reshape(-1)
        rows, words = rows[keep], words[keep]
    return rows, words


class HEIndex(FlatCodebookIndex):
    """Flat codebook, Hamming embedding and an inverted file (immutable; ``add`` returns a new one).

    Args:
        centroids: ``(W, D)`` float32 codebook.
        params: trained Hamming-embedding parameters for this codebook.
        ivf: inverted file with payload ``sig`` (``(P,)`` uint64); empty when None.
        n_images: images indexed (ids ``0..n_images-1``, images without features included).
        ma: query-side multiple assignment (words per query descriptor).
        ma_ratio: optional distance-ratio cutoff of the multiple assignment.
        sigma: σ of the match weight ``exp(-h²/σ²)``.
        max_h: largest Hamming distance that matches.
        quantizer: nearest-word search over ``centroids`` (built when None; exact below 4096
            words, a faiss IVF over the words above).
    """

    kind = "he"

    def __init__(
        self,
        centroids: np.ndarray,
        params: HEParams,
        ivf: InvertedFile | None = None,
        n_images: int = 0,
        *,
        ma: int = 3,
        ma_ratio: float | None = None,
        sigma: float = SIGMA,
        max_h: int = MAX_H,
        quantizer: Quantizer | None = None,
        stats: Mapping[str, np.ndarray] | None = None,
    ):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        # nearest-word search; shared by the indexes that adds derive from this one
        self.quantizer = quantizer if quantizer is not None else Quantizer(self.centroids)
        if self.centroids.ndim != 2 or self.centroids.shape[0] < 1:
            raise InputError(f"codebook must be (W, D), got {self.centroids.shape}")
        self.n_words, self.dim = (int(v) for v in self.centroids.shape)
        if params.n_words != self.n_words or params.dim != self.dim:
            raise InputError(
                f"Hamming embedding for {params.n_words} words x {params.dim} dims does not match "
                f"the codebook's {self.n_words} x {self.dim}"
            )
        if not 1 <= int(ma) <= self.n_words:
            raise InputError(f"multiple assignment must be in [1, {self.n_words}], got {ma}")
        self.params = params
        self.ivf = ivf if ivf is not None else InvertedFile(self.n_words)
        if self.ivf.n_words != self.n_words:
            raise InputError(f"inverted file has {self.ivf.n_words} words, not {self.n_words}")
        for seg in self.ivf.segments:
            sig = seg.payload.get("sig")
            if sig is None or sig.dtype != np.uint64 or sig.shape != (seg.n_postings,):
                raise InputError("HE segment needs a (P,) uint64 payload 'sig'")
        self.n_images = int(n_images)
        if segment_ids_bound(self.ivf.segments) > self.n_images:
            raise InputError(f"segments name image ids beyond n_images={self.n_images}")
        self.ma, self.ma_ratio = int(ma), None if ma_ratio is None else float(ma_ratio)
        self.sigma, self.max_h = float(sigma), int(max_h)
        self._lut = he_weight(np.arange(65), self.sigma, self.max_h)
        if stats is not None and _stats_fit(stats, self.n_words, self.n_images):
            self.df = np.asarray(stats["df"], dtype=np.int64)
            self._set_idf()
            self.norms = np.asarray(stats["norms"], dtype=np.float64)
        else:
            self._derive()

    def _set_idf(self) -> None:
        n = max(self.n_images, 1)
        self.idf = np.log(n / np.maximum(self.df, 1)) * (self.df > 0)
        self._idf2 = self.idf**2

    def _derive(self) -> None:
        """idf per word and ‖d‖ per image, from all segments (two O(P) passes, no sort).

        ``N_w`` equals ``self.ivf.document_frequency()`` (a test checks it) but is counted from
        the (word, image) runs that the norms need anyway, which avoids a sort of all postings.
        """
        n = max(self.n_images, 1)

        def idf2_of(df: np.ndarray) -> np.ndarray:
            return (np.log(n / np.maximum(df, 1)) * (df > 0)) ** 2

        self.df, norm2 = kernels.image_word_stats(
            self.ivf.segments, self.n_words, self.n_images, idf2_of
        )
        self._set_idf()
        self.norms = np.sqrt(norm2)

    def stats(self) -> dict[str, np.ndarray]:
        """Derived statistics to store beside the segments: ``df`` (W,) and ``norms`` (N,)."""
        return {"df": self.df, "norms": self.norms}

    def _options(self) -> dict[str, Any]:
        return {"ma": self.ma, "ma_ratio": self.ma_ratio, "sigma": self.sigma, "max_h": self.max_h}

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        descriptors: np.ndarray,
        n_words: int,
        *,
        seed: int = 0,
        niter: int = 20,
        min_count: int = 8,
        **options: Any,
    ) -> HEIndex:
        """Train the codebook (faiss k-means) and the HE parameters; returns an empty index.

        Args:
            descriptors: ``(N, D)`` training descriptors (ideally from independent images).
            n_words: codebook size ``W``.
            seed: k-means and projection seed.
            niter: k-means iterations.
            min_count: see :func:`delfx.index.hamming.train_he`.
            **options: ``ma``, ``ma_ratio``, ``sigma``, ``max_h``.
        """
        centroids = train_flat(descriptors, n_words, niter=niter, seed=seed)
        return cls.from_codebook(centroids, descriptors, seed=seed, min_count=min_count, **options)

    @classmethod
    def from_codebook(
        cls,
        centroids: np.ndarray,
        descriptors: np.ndarray,
        *,
        seed: int = 0,
        min_count: int = 8,
        **options: Any,
    ) -> HEIndex:
        """An empty index on a given codebook, with HE trained on ``descriptors`` (``(N, D)``)."""
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        quantizer = options.pop("quantizer", None) or Quantizer(c)
        words = assign(descriptors, quantizer)[:, 0]
        params = train_he(descriptors, words, c.shape[0], seed=seed, min_count=min_count)
        return cls(c, params, quantizer=quantizer, **options)

    # -- adding -------------------------------------------------------------------------------

    def add(
        self,
        descriptor_lists: Sequence[np.ndarray],
        image_ids: Sequence[int] | np.ndarray | None = None,
    ) -> HEIndex:
        """A new index with these images appended as one segment.

        Args:
            descriptor_lists: one ``(n_i, D)`` array per image (may be empty).
            image_ids: must be ``n_images, n_images + 1, ...`` when given.

        Returns:
            The new index (this one is unchanged).
        """
        x, counts = stack_lists(descriptor_lists, self.dim)
        check_new_ids(image_ids, self.n_images, counts.size)
        words = self.words(x)
        return self.add_encoded(words, signatures(x, words, self.params), counts)

    def add_encoded(self, words: np.ndarray, sigs: np.ndarray, counts: np.ndarray) -> HEIndex:
        """Append images given already quantised and signed descriptors.

        Args:
            words: ``(N,)`` word of each descriptor, images one after another.
            sigs: ``(N,)`` uint64 signatures.
            counts: ``(B,)`` descriptors per image (``sum == N``).
        """
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        sigs = np.asarray(sigs).reshape(-1)
        if sigs.dtype != np.uint64 or counts.sum() != sigs.size or (counts < 0).any():
            raise InputError("add: need uint64 signatures and per-image counts summing to them")
        ids = np.repeat(np.arange(self.n_images, self.n_images + counts.size), counts)
        seg = build_segment(words, ids, self.n_words, {"sig": sigs})
        logger.debug("HE: +%d images, %d postings", counts.size, seg.n_postings)
        return type(self)(
            self.centroids,
            self.params,
            self.ivf.add(seg),
            self.n_images + counts.size,
            quantizer=self.quantizer,
            **self._options(),
        )

    # -- search -------------------------------------------------------------------------------

    def encode_query(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Multiple assignment and signatures of a query.

        Args:
            descriptors: ``(N, D)`` (``N >= 1``).

        Returns:
            ``(M,)`` words and ``(M,)`` uint64 signatures, one per kept (descriptor, word) pair.
        """
        x = check_query(descriptors, self.dim)
        rows, words = multi_assign(x, self.centroids, self.ma, self.ma_ratio, self.quantizer)
        return words, signatures(x[rows], words, self.params)

    def score_encoded(self, words: np.ndarray, sigs: np.ndarray) -> np.ndarray:
        """``(n_images,)`` float64 scores of an encoded query (see the module docstring).

        One pass of :func:`delfx.index.kernels.he_scan` per segment over the query's lists, in
        ascending word order.
        """
        words = np.asarray(words, dtype=np.int64).reshape(-1)
        sigs = np.asarray(sigs, dtype=np.uint64).reshape(-1)
        if not self.ivf.segments or words.size == 0:
            return np.zeros(self.n_images)
        if words.min() < 0 or words.max() >= self.n_words or sigs.shape != words.shape:
            raise InputError(f"query: word ids outside [0, {self.n_words}) or signatures missing")
        order = np.argsort(words, kind="stable")
        w, s = words[order], sigs[order]
        weights = self._idf2[w]
        raw = np.zeros(self.n_images)
        for seg in self.ivf.segments:
            sig = seg.payload["sig"]
            bad = kernels.he_scan(seg.offsets, seg.image_ids, sig, w, s, weights, self._lut,
                                  self.max_h, raw)  # fmt: skip
            kernels.check_scan(bad, self.n_images)
        qnorm = np.sqrt(np.dot(self._idf2, np.bincount(words, minlength=self.n_words) ** 2.0))
        denom = qnorm * self.norms
        return np.divide(raw, denom, out=np.zeros_like(raw), where=denom > 0)

    # -- state --------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], list[Segment]]:
        """``(meta, arrays, segments)``: JSON-able settings, model arrays and the segments."""
        meta = {"kind": self.kind, "n_words": self.n_words, "dim": self.dim}
        meta.update(n_images=self.n_images, **self._options())
        arrays = {"centroids": self.centroids, **self.params.state(), **self.quantizer_state()}
        return meta, arrays, list(self.ivf.segments)

    @classmethod
    def from_state(
        cls,
        meta: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        segments: Sequence[Segment],
        stats: Mapping[str, np.ndarray] | None = None,
    ) -> HEIndex:
        """Rebuild an index from :meth:`state`'s parts; idf and norms come from ``stats``
        (:meth:`stats`) when given for these segments, else they are recomputed."""
        centroids, ivf, n_images, opts = cls._unpack_state(
            meta, arrays, segments, ("ma", "ma_ratio", "sigma", "max_h")
        )
        q = cls._stored_quantizer(arrays, centroids)
        return cls(centroids, HEParams.from_state(arrays), ivf, n_images, quantizer=q,
                   stats=stats, **opts)  # fmt: skip

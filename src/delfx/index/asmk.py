"""Binary ASMK* (Tolias, Avrithis and Jégou, ICCV 2013): aggregated, binarised residuals per word.

For an image and each word ``c`` it uses, the residuals ``x - c`` of its descriptors assigned to
``c`` are summed and binarised by sign: bit ``j`` is ``1`` when component ``j`` of the sum is
``> 0`` (L2-normalising first would not change any sign, so it is skipped). The standard ASMK*
does this in descriptor space, ``B = D`` bits; optionally (``n_bits``) the sum is first projected
by a random orthogonal ``(n_bits, D)`` matrix, trading accuracy for memory. Bits are packed into
``ceil(B / 64)`` little-endian ``uint64`` words (component ``j``: word ``j // 64``, bit ``j % 64``
from the least significant; padding bits are 0 on both sides and never differ).

The inverted file holds one posting per (image, word), payload ``bits`` (``(P, ceil(B/64))``
uint64). Database descriptors take their nearest word; query descriptors their ``ma`` nearest
(multiple assignment, default 5 as in HOW), and are then aggregated per word in the same way.

Similarity of query ``X`` and database image ``Y``::

    u_c   = 1 - 2 h(b_c(X), b_c(Y)) / B            (cosine of the ±1 binary vectors)
    σ(u)  = sign(u) |u|^α  if u > τ else 0         (α = 3, τ = 0)
    K(X, Y) = γ(X) γ(Y) Σ_{c in X ∩ Y} σ(u_c),     γ(X) = (Σ_{c in X} σ(1))^{-1/2} = |X|^{-1/2}

where ``|X|`` is the number of words of ``X``. ``K(X, X) = 1``. Images without features score 0.

Shapes: ``N`` descriptors, ``D`` dimensions, ``W`` words, ``M`` aggregated (image, word) pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from delfx.errors import InputError
from delfx.index import kernels
from delfx.index.flat import FlatCodebookIndex, stack_lists
from delfx.index.hamming import pack_bits, random_projection
from delfx.index.he import check_new_ids, check_query, multi_assign
from delfx.index.invfile import (
    InvertedFile,
    Segment,
    build_segment,
    segment_ids_bound,
)
from delfx.index.kmeans import Quantizer, train_flat

logger = logging.getLogger(__name__)

_CHUNK = 1 << 18  # descriptors aggregated at a time (bounds the float64 residual buffer)


def selectivity(u: np.ndarray, alpha: float = 3.0, tau: float = 0.0) -> np.ndarray:
    """ASMK selectivity ``σ_α(u) = sign(u)|u|^α`` where ``u > τ``, else 0 (float64)."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u > tau, np.sign(u) * np.abs(u) ** alpha, 0.0)


def gamma_of(segments: Sequence[Segment], n_images: int, first: int = 0) -> np.ndarray:
    """γ(Y) of images ``first .. n_images - 1``: ``|Y|^{-1/2}`` from their postings (0 without
    features); ``(n_images - first,)`` float64."""
    count = np.zeros(n_images - first, dtype=np.int64)
    for seg in segments:
        ids = np.asarray(seg.image_ids).astype(np.int64) - first
        count += np.bincount(ids[ids >= 0], minlength=n_images - first)
    with np.errstate(divide="ignore"):
        return np.where(count > 0, 1.0 / np.sqrt(np.maximum(count, 1)), 0.0)


class ASMKIndex(FlatCodebookIndex):
    """Binary ASMK* over a flat codebook (immutable; ``add`` returns a new index).

    Args:
        centroids: ``(W, D)`` float32 codebook.
        ivf: inverted file with payload ``bits`` (``(P, ceil(B/64))`` uint64); empty when None.
        n_images: images indexed (ids ``0..n_images-1``, images without features included).
        projection: optional ``(B, D)`` projection applied to aggregated residuals; None keeps
            the ``B = D`` descriptor-space bits of the standard ASMK*.
        ma: query-side multiple assignment.
        ma_ratio: optional distance-ratio cutoff of the multiple assignment.
        alpha: selectivity exponent α.
        tau: selectivity threshold τ.
        quantizer: nearest-word search over ``centroids`` (built when None; exact below 4096
            words, a faiss IVF over the words above).
    """

    kind = "asmk"

    def __init__(
        self,
        centroids: np.ndarray,
        ivf: InvertedFile | None = None,
        n_images: int = 0,
        *,
        projection: np.ndarray | None = None,
        ma: int = 5,
        ma_ratio: float | None = None,
        alpha: float = 3.0,
        tau: float = 0.0,
        quantizer: Quantizer | None = None,
        gamma: np.ndarray | None = None,
    ):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        # nearest-word search; shared by the indexes that adds derive from this one
        self.quantizer = quantizer if quantizer is not None else Quantizer(self.centroids)
        if self.centroids.ndim != 2 or self.centroids.shape[0] < 1:
            raise InputError(f"codebook must be (W, D), got {self.centroids.shape}")
        self.n_words, self.dim = (int(v) for v in self.centroids.shape)
        self.projection = None
        if projection is not None:
            self.projection = np.ascontiguousarray(projection, dtype=np.float32)
            if self.projection.ndim != 2 or self.projection.shape[1] != self.dim:
                raise InputError(f"ASMK projection {self.projection.shape} is not (B, {self.dim})")
        self.n_bits = self.dim if self.projection is None else int(self.projection.shape[0])
        self.n64 = -(-self.n_bits // 64)
        if not 1 <= int(ma) <= self.n_words:
            raise InputError(f"multiple assignment must be in [1, {self.n_words}], got {ma}")
        self.ma, self.ma_ratio = int(ma), None if ma_ratio is None else float(ma_ratio)
        self.alpha, self.tau = float(alpha), float(tau)
        self.ivf = ivf if ivf is not None else InvertedFile(self.n_words)
        if self.ivf.n_words != self.n_words:
            raise InputError(f"inverted file has {self.ivf.n_words} words, not {self.n_words}")
        for seg in self.ivf.segments:
            bits = seg.payload.get("bits")
            if bits is None or bits.dtype != np.uint64 or bits.shape != (seg.n_postings, self.n64):
                raise InputError(f"ASMK segment needs a (P, {self.n64}) uint64 payload 'bits'")
        self.n_images = int(n_images)
        if segment_ids_bound(self.ivf.segments) > self.n_images:
            raise InputError(f"segments name image ids beyond n_images={self.n_images}")
        self._lut = selectivity(1.0 - 2.0 * np.arange(self.n_bits + 1) / self.n_bits, alpha, tau)
        if gamma is not None and np.shape(gamma) == (self.n_images,):
            self.gamma = np.asarray(gamma, dtype=np.float64)
        else:
            self.gamma = gamma_of(self.ivf.segments, self.n_images)

    def stats(self) -> dict[str, np.ndarray]:
        """Derived statistics to store beside the segments: ``gamma`` (N,)."""
        return {"gamma": self.gamma}

    def _options(self) -> dict[str, Any]:
        return {"ma": self.ma, "ma_ratio": self.ma_ratio, "alpha": self.alpha, "tau": self.tau}

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        descriptors: np.ndarray,
        n_words: int,
        *,
        seed: int = 0,
        niter: int = 20,
        n_bits: int | None = None,
        **options: Any,
    ) -> ASMKIndex:
        """Train the codebook with faiss k-means on ``(N, D)`` descriptors; an empty index.

        Args:
            descriptors: training descriptors (ideally from independent images).
            n_words: codebook size ``W``.
            seed: k-means and projection seed.
            niter: k-means iterations.
            n_bits: project aggregated residuals to this many bits (None: ``D`` bits, standard).
            **options: ``ma``, ``ma_ratio``, ``alpha``, ``tau``.
        """
        centroids = train_flat(descriptors, n_words, niter=niter, seed=seed)
        return cls.from_codebook(centroids, n_bits=n_bits, seed=seed, **options)

    @classmethod
    def from_codebook(
        cls, centroids: np.ndarray, *, n_bits: int | None = None, seed: int = 0, **options: Any
    ) -> ASMKIndex:
        """An empty index on a given ``(W, D)`` codebook (see :meth:`train` for the arguments)."""
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        proj = None if n_bits is None else random_projection(c.shape[1], int(n_bits), seed)
        return cls(c, projection=proj, **options)

    # -- aggregation ---------------------------------------------------------------------------

    def aggregate(
        self, x: np.ndarray, group: np.ndarray, words: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sum residuals per (group, word) and binarise.

        Args:
            x: ``(N, D)`` descriptors.
            group: ``(N,)`` int64 group (image) of each row.
            words: ``(N,)`` int64 word of each row.

        Returns:
            ``(M,)`` groups, ``(M,)`` words and ``(M, ceil(B/64))`` uint64 bits, sorted by
            (group, word).
        """
        key = np.asarray(group, np.int64) * self.n_words + np.asarray(words, np.int64)
        order = np.argsort(key, kind="stable")
        key = key[order]
        if key.size == 0:
            return key, key.copy(), np.zeros((0, self.n64), dtype=np.uint64)
        starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        out = np.empty((starts.size, self.n64), dtype=np.uint64)
        bounds = np.append(starts, key.size)
        s = 0  # aggregate whole groups of rows, about _CHUNK rows at a time
        while s < starts.size:
            e = int(np.searchsorted(bounds, bounds[s] + _CHUNK, side="right")) - 1
            e = min(max(e, s + 1), starts.size)
            rows = order[bounds[s] : bounds[e]]
            res = x[rows].astype(np.float64) - self.centroids[words[rows]].astype(np.float64)
            agg = np.add.reduceat(res, bounds[s:e] - bounds[s], axis=0)
            if self.projection is not None:
                agg = agg @ self.projection.astype(np.float64).T
            out[s:e] = pack_bits(agg > 0)
            s = e
        return key[starts] // self.n_words, key[starts] % self.n_words, out

    # -- adding -------------------------------------------------------------------------------

    def add(
        self,
        descriptor_lists: Sequence[np.ndarray],
        image_ids: Sequence[int] | np.ndarray | None = None,
    ) -> ASMKIndex:
        """A new index with these images appended as one segment.

        Args:
            descriptor_lists: one ``(n_i, D)`` array per image (may be empty).
            image_ids: must be ``n_images, n_images + 1, ...`` when given.

        Returns:
            The new index (this one is unchanged).
        """
        x, counts = stack_lists(descriptor_lists, self.dim)
        check_new_ids(image_ids, self.n_images, counts.size)
        group = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        img, words, bits = self.aggregate(x, group, self.words(x))
        return self.add_encoded(words, bits, np.bincount(img, minlength=counts.size))

    def add_encoded(self, words: np.ndarray, bits: np.ndarray, counts: np.ndarray) -> ASMKIndex:
        """Append images given their aggregated (word, bits) postings.

        Args:
            words: ``(M,)`` words, images one after another, distinct within an image.
            bits: ``(M, ceil(B/64))`` uint64.
            counts: ``(B_img,)`` postings per image (``sum == M``).
        """
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        bits = np.asarray(bits)
        if bits.dtype != np.uint64 or bits.shape != (int(counts.sum()), self.n64):
            raise InputError(f"add: need ({int(counts.sum())}, {self.n64}) uint64 bits")
        ids = np.repeat(np.arange(self.n_images, self.n_images + counts.size), counts)
        seg = build_segment(words, ids, self.n_words, {"bits": bits})
        logger.debug("ASMK: +%d images, %d postings", counts.size, seg.n_postings)
        n = self.n_images + counts.size
        return type(self)(
            self.centroids,
            self.ivf.add(seg),
            n,
            projection=self.projection,
            quantizer=self.quantizer,
            gamma=np.concatenate([self.gamma, gamma_of([seg], n, self.n_images)]),
            **self._options(),
        )

    # -- search -------------------------------------------------------------------------------

    def encode_query(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Multiple assignment and aggregation of a query.

        Args:
            descriptors: ``(N, D)`` (``N >= 1``).

        Returns:
            ``(M,)`` distinct words and ``(M, ceil(B/64))`` uint64 bits.
        """
        x = check_query(descriptors, self.dim)
        rows, words = multi_assign(x, self.centroids, self.ma, self.ma_ratio, self.quantizer)
        _, words, bits = self.aggregate(x[rows], np.zeros(rows.size, np.int64), words)
        return words, bits

    def score_encoded(self, words: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """``(n_images,)`` float64 scores of an aggregated query (distinct ``words``).

        One pass of :func:`delfx.index.kernels.asmk_scan` per segment, in ascending word order.
        """
        words = np.asarray(words, dtype=np.int64).reshape(-1)
        bits = np.asarray(bits, dtype=np.uint64).reshape(words.size, self.n64)
        if not self.ivf.segments or words.size == 0:
            return np.zeros(self.n_images)
        if words.min() < 0 or words.max() >= self.n_words:
            raise InputError(f"query: word ids outside [0, {self.n_words})")
        order = np.argsort(words, kind="stable")
        w, b = words[order], bits[order]
        raw = np.zeros(self.n_images)
        for seg in self.ivf.segments:
            bad = kernels.asmk_scan(seg.offsets, seg.image_ids, seg.payload["bits"], w, b,
                                    self._lut, raw)  # fmt: skip
            kernels.check_scan(bad, self.n_images)
        return raw * self.gamma / np.sqrt(words.size)

    # -- state --------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], list[Segment]]:
        """``(meta, arrays, segments)``: JSON-able settings, model arrays and the segments."""
        meta = {"kind": self.kind, "n_words": self.n_words, "dim": self.dim}
        meta.update(n_images=self.n_images, n_bits=self.n_bits, **self._options())
        arrays = {"centroids": self.centroids, **self.quantizer_state()}
        if self.projection is not None:
            arrays["projection"] = self.projection
        return meta, arrays, list(self.ivf.segments)

    @classmethod
    def from_state(
        cls,
        meta: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        segments: Sequence[Segment],
        stats: Mapping[str, np.ndarray] | None = None,
    ) -> ASMKIndex:
        """Rebuild an index from :meth:`state`'s parts; γ comes from ``stats`` (:meth:`stats`)
        when given for these segments, else it is recomputed."""
        centroids, ivf, n_images, opts = cls._unpack_state(
            meta, arrays, segments, ("ma", "ma_ratio", "alpha", "tau")
        )
        proj = arrays.get("projection")
        q = cls._stored_quantizer(arrays, centroids)
        gamma = None if stats is None else stats.get("gamma")
        return cls(centroids, ivf, n_images, projection=proj, quantizer=q, gamma=gamma, **opts)

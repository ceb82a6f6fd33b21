"""What the indexes over a flat codebook (Hamming embedding, ASMK*) have in common.

Subclasses hold ``centroids`` (``W x D``), a :class:`~delfx.index.kmeans.Quantizer` over them
and an inverted file ``ivf``, and implement ``encode_query`` and ``score_encoded``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from delfx.errors import InputError
from delfx.index.invfile import InvertedFile, Segment
from delfx.index.kmeans import Quantizer, assign


def rank(scores: np.ndarray, top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Ids and scores by decreasing score, ties by increasing id; the first ``top_k`` only."""
    n = scores.size
    k = n if top_k is None else max(0, min(int(top_k), n))
    if k < n:
        kth = np.partition(scores, n - k)[n - k]
        above = np.flatnonzero(scores > kth)
        ties = np.flatnonzero(scores == kth)[: k - above.size]
        cand = np.concatenate([above, ties])
    else:
        cand = np.arange(n)
    order = cand[np.lexsort((cand, -scores[cand]))]
    return order.astype(np.int64), scores[order]


def stack_lists(descriptor_lists: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-image descriptor arrays.

    Args:
        descriptor_lists: one ``(n_i, D)`` array per image; an empty array is an image with no
            features.
        dim: expected ``D``.

    Returns:
        ``(N, D)`` float32 descriptors and ``(B,)`` int64 counts ``n_i``.
    """
    parts, counts = [], []
    for i, arr in enumerate(descriptor_lists):
        a = np.asarray(arr)
        if a.size == 0:
            counts.append(0)
            continue
        if a.ndim != 2 or a.shape[1] != dim:
            raise InputError(f"image {i}: descriptors have shape {a.shape}, expected (n, {dim})")
        if not np.isfinite(a).all():
            raise InputError(f"image {i}: descriptors contain NaN or infinity")
        parts.append(np.asarray(a, dtype=np.float32))
        counts.append(a.shape[0])
    x = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(x), np.asarray(counts, dtype=np.int64)


class FlatCodebookIndex:
    """Shared query-side methods of :class:`~delfx.index.he.HEIndex` and ASMK*."""

    centroids: np.ndarray
    quantizer: Quantizer
    ivf: InvertedFile

    def encode_query(self, descriptors: np.ndarray) -> tuple[Any, ...]:
        """The query's words and payload, ready for :meth:`score_encoded`."""
        raise NotImplementedError

    def score_encoded(self, *encoded: Any) -> np.ndarray:
        """``(n_images,)`` float64 scores of an encoded query."""
        raise NotImplementedError

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """``(N,)`` int64 nearest word of each ``(N, D)`` descriptor (as the database uses)."""
        return assign(descriptors, self.quantizer)[:, 0]

    def score_all(self, descriptors: np.ndarray) -> np.ndarray:
        """``(n_images,)`` float64 scores of a query's ``(N, D)`` descriptors."""
        return self.score_encoded(*self.encode_query(descriptors))

    def search(
        self, descriptors: np.ndarray, top_k: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank the database for a query.

        Args:
            descriptors: ``(N, D)`` query descriptors.
            top_k: return only the best ``top_k`` (all images when None).

        Returns:
            ``(K,)`` int64 image ids and ``(K,)`` float64 scores, best first (ties: lower id).
        """
        return rank(self.score_all(descriptors), top_k)

    @classmethod
    def _unpack_state(
        cls,
        meta: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        segments: Sequence[Segment],
        option_keys: Sequence[str],
    ) -> tuple[np.ndarray, InvertedFile, int, dict[str, Any]]:
        """Check a saved state: ``(centroids, inverted file, n_images, options)``.

        Raises:
            InputError: another kind of index, or a missing array or setting.
        """
        kind = getattr(cls, "kind", "?")
        if meta.get("kind") != kind:
            raise InputError(f"index kind {meta.get('kind')!r} is not {kind!r}")
        if "centroids" not in arrays:
            raise InputError(f"{kind} index: missing array 'centroids'")
        try:
            opts = {k: meta[k] for k in option_keys}
            n_images = int(meta["n_images"])
        except KeyError as exc:
            raise InputError(f"{kind} index: missing setting {exc}") from None
        centroids = np.asarray(arrays["centroids"])
        return centroids, InvertedFile(centroids.shape[0], segments), n_images, opts

    @staticmethod
    def _stored_quantizer(
        arrays: Mapping[str, np.ndarray], centroids: np.ndarray
    ) -> Quantizer | None:
        """The quantizer saved with the model (large codebooks), or None to build one."""
        data = arrays.get("quantizer")
        return None if data is None else Quantizer.from_bytes(centroids, data)

    def quantizer_state(self) -> dict[str, np.ndarray]:
        """``{"quantizer": bytes}`` for an approximate quantizer (none for exact search)."""
        return {} if self.quantizer.exact else {"quantizer": self.quantizer.to_bytes()}

    def nbytes(self) -> int:
        """Bytes held by the inverted file's segments."""
        return self.ivf.nbytes()

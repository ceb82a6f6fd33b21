"""Hamming embedding (Jégou, Douze and Schmid, ECCV 2008): 64-bit binary signatures per descriptor.

A descriptor ``x`` assigned to visual word ``w`` is projected by a fixed random orthogonal
matrix ``P`` (``64 x D``); bit ``j`` of its signature is ``(P x)_j > t_w,j``, where the
thresholds ``t_w`` are the per-word medians of the projected training descriptors of ``w``.
Two descriptors of the same word match when the Hamming distance ``h`` of their signatures is
small; a match is weighted by ``exp(-h² / σ²)`` up to ``h <= max_h`` (σ = 16, max_h = 24, as in
COLMAP's Hamming embedding).

Bit order: signatures are packed into one ``uint64`` per descriptor; projected component ``j``
(row ``j`` of ``P``) is bit ``j`` counting from the least significant bit, i.e.
``(sig >> j) & 1 == (P x)_j > t_w,j``.

Shapes: ``N`` descriptors, ``D`` dimensions, ``W`` words, ``B = 64`` bits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from delfx.errors import InputError

logger = logging.getLogger(__name__)

N_BITS = 64
SIGMA = 16.0
MAX_H = 24


def random_projection(dim: int, n_rows: int = N_BITS, seed: int = 0) -> np.ndarray:
    """A random projection with orthonormal rows, from a seeded QR of Gaussian matrices.

    Args:
        dim: input dimension ``D``.
        n_rows: output dimension (64 for Hamming embedding).
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``(n_rows, dim)`` float32. When ``n_rows <= dim`` all rows are orthonormal; otherwise the
        rows are stacked ``D x D`` orthogonal blocks (orthonormal within each block).
    """
    if dim < 1 or n_rows < 1:
        raise InputError(f"projection needs positive sizes, got {n_rows} x {dim}")
    rng = np.random.default_rng(seed)
    blocks, have = [], 0
    while have < n_rows:
        q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
        q = q * np.sign(np.diag(r))  # make the factorisation unique (Haar-distributed q)
        blocks.append(q.T)
        have += dim
    return np.ascontiguousarray(np.concatenate(blocks)[:n_rows], dtype=np.float32)


def project(descriptors: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """Projected values ``X Pᵀ`` in float64.

    Args:
        descriptors: ``(N, D)``.
        projection: ``(B, D)``.

    Returns:
        ``(N, B)`` float64.
    """
    x = np.asarray(descriptors)
    if x.ndim != 2 or x.shape[1] != projection.shape[1]:
        raise InputError(
            f"descriptor dimension {x.shape[-1] if x.ndim else 0} does not match the "
            f"projection's {projection.shape[1]}"
        )
    return x.astype(np.float64) @ projection.astype(np.float64).T


@dataclass(frozen=True)
class HEParams:
    """Trained Hamming-embedding parameters.

    Attributes:
        projection: ``(64, D)`` float32 random orthogonal projection.
        thresholds: ``(W, 64)`` float64 per-word, per-bit median thresholds.
    """

    projection: np.ndarray
    thresholds: np.ndarray

    @property
    def dim(self) -> int:
        """Descriptor dimension ``D``."""
        return int(self.projection.shape[1])

    @property
    def n_words(self) -> int:
        """Vocabulary size ``W``."""
        return int(self.thresholds.shape[0])

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save (``projection``, ``thresholds``)."""
        return {"projection": self.projection, "thresholds": self.thresholds}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray]) -> HEParams:
        """Rebuild from :meth:`state`'s arrays; shapes are checked."""
        try:
            proj = np.asarray(arrays["projection"], dtype=np.float32)
            thr = np.asarray(arrays["thresholds"], dtype=np.float64)
        except KeyError as exc:
            raise InputError(f"Hamming embedding: missing array {exc}") from None
        if proj.ndim != 2 or proj.shape[0] != N_BITS or thr.ndim != 2 or thr.shape[1] != N_BITS:
            raise InputError(
                f"Hamming embedding: projection {proj.shape} / thresholds {thr.shape} are not "
                f"(64, D) / (W, 64)"
            )
        return cls(proj, thr)


def _group_medians(values: np.ndarray, words: np.ndarray, n_words: int) -> np.ndarray:
    """Per-word medians of each column of ``values`` (``(N, B)``), NaN for empty words."""
    n, b = values.shape
    counts = np.bincount(words, minlength=n_words)
    # Sort every column by (word, value): by value first, then stably by word.
    by_value = np.argsort(values, axis=0, kind="stable")
    by_word = np.argsort(words[by_value], axis=0, kind="stable")
    order = np.take_along_axis(by_value, by_word, axis=0)
    ranked = np.take_along_axis(values, order, axis=0)  # (N, B) grouped by word, sorted
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    med = np.full((n_words, b), np.nan)
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    med[has] = 0.5 * (ranked[lo] + ranked[hi])
    return med


def train_he(
    descriptors: np.ndarray,
    words: np.ndarray,
    n_words: int,
    *,
    seed: int = 0,
    min_count: int = 8,
) -> HEParams:
    """Learn the projection and the per-word median thresholds.

    Args:
        descriptors: ``(N, D)`` training descriptors (``N >= 1``).
        words: ``(N,)`` their word ids in ``[0, n_words)``.
        n_words: vocabulary size ``W``.
        seed: seed of the random projection.
        min_count: words with fewer training descriptors use the global per-bit medians.

    Returns:
        The parameters.

    Memory is about ``40 * N * 64`` bytes (sorting every projected column), so train on a
    subsample of up to a few million descriptors.
    """
    x = np.asarray(descriptors)
    w = np.asarray(words, dtype=np.int64).reshape(-1)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError("Hamming embedding: need a non-empty (N, D) training set")
    if w.shape[0] != x.shape[0]:
        raise InputError(f"Hamming embedding: {x.shape[0]} descriptors but {w.shape[0]} words")
    if w.min() < 0 or w.max() >= n_words:
        raise InputError(f"Hamming embedding: word id out of range [0, {n_words})")
    proj = random_projection(x.shape[1], N_BITS, seed)
    z = project(x, proj)
    thr = _group_medians(z, w, n_words)
    counts = np.bincount(w, minlength=n_words)
    sparse = counts < max(int(min_count), 1)
    thr[sparse] = np.median(z, axis=0)
    logger.debug(
        "Hamming embedding: %d descriptors, %d of %d words use global medians",
        x.shape[0],
        int(sparse.sum()),
        n_words,
    )
    return HEParams(proj, thr)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack boolean rows into little-endian ``uint64`` words (bit ``j`` -> word ``j // 64``).

    Args:
        bits: ``(N, B)`` bool.

    Returns:
        ``(N, ceil(B / 64))`` uint64; bit ``j % 64`` (from the least significant) of word
        ``j // 64`` is ``bits[:, j]``; padding bits are 0.
    """
    n, b = bits.shape
    n64 = -(-b // 64)
    padded = np.zeros((n, n64 * 64), dtype=bool)
    padded[:, :b] = bits
    packed = np.packbits(padded, axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def signatures(descriptors: np.ndarray, words: np.ndarray, params: HEParams) -> np.ndarray:
    """64-bit Hamming signatures.

    Args:
        descriptors: ``(N, D)``.
        words: ``(N,)`` word of each descriptor (the thresholds used are that word's).
        params: trained parameters.

    Returns:
        ``(N,)`` uint64; see the module docstring for the bit order.
    """
    w = np.asarray(words, dtype=np.int64).reshape(-1)
    x = np.asarray(descriptors)
    if x.ndim != 2 or w.shape[0] != x.shape[0]:
        raise InputError(f"signatures: descriptors {x.shape} and words {w.shape} do not match")
    if w.size and (w.min() < 0 or w.max() >= params.n_words):
        raise InputError(f"signatures: word id out of range [0, {params.n_words})")
    out = np.empty(w.size, dtype=np.uint64)
    step = 1 << 16  # bound the (N, 64) float64 temporaries
    for s in range(0, w.size, step):
        z = project(x[s : s + step], params.projection)
        out[s : s + step] = pack_bits(z > params.thresholds[w[s : s + step]])[:, 0]
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of ``uint64`` words (broadcasting).

    Args:
        a: uint64 array.
        b: uint64 array, broadcastable with ``a``.

    Returns:
        uint8 array of bit counts of ``a ^ b`` (0..64), the broadcast shape.
    """
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))


def he_weight(h: np.ndarray | int, sigma: float = SIGMA, max_h: int = MAX_H) -> np.ndarray:
    """Match weight ``exp(-h² / σ²)`` for ``h <= max_h``, else 0.

    Args:
        h: Hamming distances (any integer array or scalar).
        sigma: σ of the Gaussian.
        max_h: largest distance that still matches.

    Returns:
        float64 array shaped like ``h``.
    """
    hf = np.asarray(h, dtype=np.float64)
    return np.where(hf <= max_h, np.exp(-((hf / sigma) ** 2)), 0.0)

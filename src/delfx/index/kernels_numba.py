"""The numba-compiled scan kernels behind :mod:`delfx.index.kernels` (imported only with numba).

Each kernel scores images in ranges (one per thread), and within a range in blocks of
``block`` ids so that the writes into ``out`` stay in cache; each list keeps a cursor. An image
is scored by one thread, its terms added in query order: the sums do not depend on the number
of threads. See :mod:`delfx.index.kernels` for the arguments.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic


@_intrinsic
def _popcount(typingctx, x):  # pragma: no cover - compiled
    """LLVM's ``ctpop`` (one POPCNT instruction on x86-64) of an integer."""
    if not isinstance(x, _types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return x(x), codegen


@numba.njit(cache=True, nogil=True)
def _lower_bound(ids, a, b, value):
    """First position in ``ids[a:b]`` (sorted) whose id is ``>= value``."""
    while a < b:
        m = (a + b) >> 1
        if np.int64(ids[m]) < value:
            a = m + 1
        else:
            b = m
    return a


@numba.njit(cache=True, nogil=True)
def _outside(offsets, ids, words, base, n):
    """Postings of the query's lists naming images outside ``base .. base + n - 1``."""
    bad = 0
    for i in range(words.shape[0]):
        a, b = offsets[words[i]], offsets[words[i] + 1]
        bad += _lower_bound(ids, a, b, base) - a
        bad += b - _lower_bound(ids, a, b, base + n)
    return bad


@numba.njit(cache=True, nogil=True)
def _cursors(offsets, ids, words, start):
    cur = np.empty(words.shape[0], np.int64)
    for i in range(words.shape[0]):
        cur[i] = _lower_bound(ids, offsets[words[i]], offsets[words[i] + 1], start)
    return cur


@numba.njit(cache=True, nogil=True)
def _he_range(offsets, ids, sigs, words, qsigs, weights, lut, max_h, base, out, block, lo, hi):
    nq = words.shape[0]
    cur = _cursors(offsets, ids, words, base + lo)
    for blo in range(lo, hi, block):
        top = base + min(blo + block, hi)
        i = 0
        while i < nq:  # entries of one word are adjacent: its list is read once for all
            w = words[i]
            j = i + 1
            while j < nq and words[j] == w:
                j += 1
            p = cur[i]
            end = offsets[w + 1]
            while p < end and np.int64(ids[p]) < top:
                s = sigs[p]
                d = np.int64(ids[p]) - base
                if lo <= d < hi:
                    for e in range(i, j):
                        h = np.int64(_popcount(s ^ qsigs[e]))
                        if h <= max_h:
                            out[d] += lut[h] * weights[e]
                p += 1
            cur[i] = p
            i = j


@numba.njit(cache=True, nogil=True, parallel=True)
def he_scan(offsets, ids, sigs, words, qsigs, weights, lut, max_h, base, out, block, parts):
    n = out.shape[0]
    step = -(-n // parts)
    for c in numba.prange(parts):
        lo = c * step
        if lo < n:
            _he_range(offsets, ids, sigs, words, qsigs, weights, lut, max_h, base, out,
                      block, lo, min(lo + step, n))  # fmt: skip
    return _outside(offsets, ids, words, base, n)


@numba.njit(cache=True, nogil=True)
def _asmk_range(offsets, ids, bits, words, qbits, lut, base, out, block, lo, hi):
    n64 = bits.shape[1]
    nq = words.shape[0]
    cur = _cursors(offsets, ids, words, base + lo)
    for blo in range(lo, hi, block):
        top = base + min(blo + block, hi)
        for i in range(nq):
            p = cur[i]
            end = offsets[words[i] + 1]
            while p < end and np.int64(ids[p]) < top:
                d = np.int64(ids[p]) - base
                if lo <= d < hi:
                    h = 0
                    for k in range(n64):
                        h += np.int64(_popcount(bits[p, k] ^ qbits[i, k]))
                    out[d] += lut[h]
                p += 1
            cur[i] = p


@numba.njit(cache=True, nogil=True, parallel=True)
def asmk_scan(offsets, ids, bits, words, qbits, lut, base, out, block, parts):
    n = out.shape[0]
    step = -(-n // parts)
    for c in numba.prange(parts):
        lo = c * step
        if lo < n:
            _asmk_range(offsets, ids, bits, words, qbits, lut, base, out, block, lo,
                        min(lo + step, n))  # fmt: skip
    return _outside(offsets, ids, words, base, n)


@numba.njit(cache=True, nogil=True)
def _tree_range(offsets, ids, tf, words, idf, q, inv_norm, base, out, block, lo, hi):
    nq = words.shape[0]
    cur = _cursors(offsets, ids, words, base + lo)
    for blo in range(lo, hi, block):
        top = base + min(blo + block, hi)
        for i in range(nq):
            a = idf[i]
            b = q[i]
            p = cur[i]
            end = offsets[words[i] + 1]
            while p < end and np.int64(ids[p]) < top:
                d = np.int64(ids[p]) - base
                if lo <= d < hi:
                    v = a * np.float64(tf[p]) * inv_norm[d]
                    out[d] += v if v < b else b
                p += 1
            cur[i] = p


@numba.njit(cache=True, nogil=True, parallel=True)
def tree_scan(offsets, ids, tf, words, idf, q, inv_norm, base, out, block, parts):
    n = out.shape[0]
    step = -(-n // parts)
    for c in numba.prange(parts):
        lo = c * step
        if lo < n:
            _tree_range(offsets, ids, tf, words, idf, q, inv_norm, base, out, block, lo,
                        min(lo + step, n))  # fmt: skip
    return _outside(offsets, ids, words, base, n)


# ---- statistics over all postings (adds and compaction recompute them) -----------------


@numba.njit(cache=True, nogil=True)
def runs(offsets, ids, weight_of_word, df, norm2, pass_no):
    """Pass 0: ``df[w] += distinct images``; pass 1: ``norm2[d] += weight[w] * count²``.

    Returns -1 when a list is not sorted by image id (the caller falls back to numpy).
    """
    for w in range(offsets.shape[0] - 1):
        a, b = offsets[w], offsets[w + 1]
        p = a
        while p < b:
            d = ids[p]
            q = p + 1
            while q < b and ids[q] == d:
                q += 1
            if q < b and ids[q] < d:
                return -1
            if pass_no == 0:
                df[w] += 1
            else:
                c = np.float64(q - p)
                norm2[d] += weight_of_word[w] * c * c
            p = q
    return 0


@numba.njit(cache=True, nogil=True)
def tree_norms(offsets, ids, tf, idf, norms):
    for w in range(offsets.shape[0] - 1):
        f = idf[w]
        for p in range(offsets[w], offsets[w + 1]):
            norms[ids[p]] += tf[p] * f

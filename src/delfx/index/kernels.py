"""Scan kernels of the inverted file: one pass over the query's posting lists, compiled.

Each kernel walks the lists of the query's words in the order given (callers pass them in
ascending word order), one segment at a time, and adds every posting's contribution into a dense
score array ``out`` covering image ids ``base .. base + len(out) - 1``. Postings are sorted by
image id within each word (:func:`delfx.index.invfile.build_segment`), so the writes move forward
through ``out`` within a list. Three scorers use them:

* :func:`he_scan`: Hamming embedding, ``out[d] += lut[h] * weight[i]`` where ``h`` is the Hamming
  distance of the posting's 64-bit signature to the query's and ``h <= max_h``;
* :func:`asmk_scan`: binary ASMK*, ``out[d] += lut[h]`` with ``h`` summed over ``n64`` words;
* :func:`tree_scan`: the vocabulary tree's NS L1 similarity,
  ``out[d] += min(idf[i] * tf * inv_norm[d], q[i])``.

Two backends give the same results: numba (compiled once and cached on disk, see :func:`warm`)
and a vectorised numpy one (``np.bitwise_count`` + ``np.bincount``), used when numba is missing
or the environment variable ``DELFX_NUMBA`` is ``0``. Each kernel returns the number of postings
whose image id fell outside ``out`` (0 for a sound index); callers turn that into an error.

Shapes: ``W`` words, ``P`` postings of a segment, ``Q`` query words, ``N`` scored images.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from delfx.errors import InputError

logger = logging.getLogger(__name__)

ENV = "DELFX_NUMBA"
BACKENDS = ("numba", "numpy")
_MAX_HITS = 1 << 20  # postings gathered at once by the numpy backend
#: Images scored per pass by the compiled kernels: 32k float64 scores (256 KB) stay in cache.
BLOCK = 1 << 15

try:  # numba is a core dependency; the numpy backend keeps delfx working without it
    import numba

    from delfx.index import kernels_numba as _nb
except ImportError:  # pragma: no cover - exercised by DELFX_NUMBA=0 in CI instead
    numba = None
    _nb = None


def backend(requested: str | None = None) -> str:
    """The backend to use: ``requested``, else numba unless ``DELFX_NUMBA=0`` or not installed."""
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"kernel backend must be one of {BACKENDS}, got {requested!r}")
        if requested == "numba" and numba is None:
            raise ImportError("the numba kernel backend needs numba (pip install numba)")
        return requested
    off = os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")
    return "numpy" if off or numba is None else "numba"


def _parts(n: int) -> int:
    """Image ranges scored in parallel: one per thread, none smaller than a block."""
    return max(1, min(numba.get_num_threads(), n // BLOCK))


# ---- numpy ----------------------------------------------------------------------------------


def _hit_blocks(offsets: np.ndarray, words: np.ndarray):
    """Yield ``(posting indices, query positions)`` over ``words``, about ``_MAX_HITS`` at a time.

    Query words are kept in order, so per image the contributions are added in query order.
    """
    starts, ends = offsets[words], offsets[words + 1]
    lengths = ends - starts
    cum = np.cumsum(lengths)
    if cum.size == 0 or cum[-1] == 0:
        return
    cuts = np.searchsorted(cum, np.arange(_MAX_HITS, int(cum[-1]), _MAX_HITS), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [words.size]]))
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        ln = lengths[a:b]
        total = int(ln.sum())
        if total == 0:
            continue
        pos = np.repeat(np.arange(a, b, dtype=np.int64), ln)
        first = np.cumsum(ln) - ln
        idx = np.arange(total, dtype=np.int64) - np.repeat(first - starts[a:b], ln)
        yield idx, pos


def _add(out: np.ndarray, ids: np.ndarray, values: np.ndarray, base: int) -> int:
    """``out[ids - base] += values`` (sequential per id); returns the count of ids outside."""
    d = ids.astype(np.int64) - base
    inside = (d >= 0) & (d < out.size)
    bad = int(d.size - np.count_nonzero(inside))
    if bad:
        d, values = d[inside], values[inside]
    out += np.bincount(d, weights=values, minlength=out.size)
    return bad


def _he_np(offsets, ids, sigs, words, qsigs, weights, lut, max_h, base, out) -> int:
    bad = 0
    for idx, pos in _hit_blocks(offsets, words):
        h = np.bitwise_count(sigs[idx] ^ qsigs[pos])
        near = np.flatnonzero(h <= max_h)
        bad += _add(out, ids[idx[near]], lut[h[near]] * weights[pos[near]], base)
    return bad


def _asmk_np(offsets, ids, bits, words, qbits, lut, base, out) -> int:
    bad = 0
    n64 = bits.shape[1]
    for idx, pos in _hit_blocks(offsets, words):
        h = np.bitwise_count(bits[idx, 0] ^ qbits[pos, 0]).astype(np.int64)
        for k in range(1, n64):  # column by column: 1-D gathers
            h += np.bitwise_count(bits[idx, k] ^ qbits[pos, k])
        bad += _add(out, ids[idx], lut[h], base)
    return bad


def _tree_np(offsets, ids, tf, words, idf, q, inv_norm, base, out) -> int:
    bad = 0
    for idx, pos in _hit_blocks(offsets, words):
        d = ids[idx].astype(np.int64) - base
        inside = (d >= 0) & (d < out.size)
        if not inside.all():
            bad += int(inside.size - np.count_nonzero(inside))
            idx, pos, d = idx[inside], pos[inside], d[inside]
        v = idf[pos] * tf[idx].astype(np.float64)
        v *= inv_norm[d]
        np.minimum(v, q[pos], out=v)
        out += np.bincount(d, weights=v, minlength=out.size)
    return bad


# ---- entry points ---------------------------------------------------------------------------


def check_scan(bad: int, n_images: int) -> None:
    """Raise when a scan met postings of images outside ``0 .. n_images - 1`` (a damaged index)."""
    if bad:
        raise InputError(
            f"index: {bad} postings name images outside 0..{n_images - 1}; the index is damaged"
        )


def _arr(a: np.ndarray, dtype: type) -> np.ndarray:
    """A contiguous base-class view (memory maps included) of ``a`` as ``dtype``."""
    return np.ascontiguousarray(np.asarray(a), dtype=dtype)


def he_scan(
    offsets: np.ndarray,
    ids: np.ndarray,
    sigs: np.ndarray,
    words: np.ndarray,
    qsigs: np.ndarray,
    weights: np.ndarray,
    lut: np.ndarray,
    max_h: int,
    out: np.ndarray,
    *,
    base: int = 0,
    use: str | None = None,
) -> int:
    """Add one segment's Hamming-embedding matches into ``out`` (in place).

    Args:
        offsets: ``(W + 1,)`` int64 list bounds of the segment.
        ids: ``(P,)`` uint32 image ids.
        sigs: ``(P,)`` uint64 signatures.
        words: ``(Q,)`` int64 query words (in ``[0, W)``), visited in this order.
        qsigs: ``(Q,)`` uint64 query signature of each word entry.
        weights: ``(Q,)`` float64 factor of each entry (``idf²`` of its word).
        lut: ``(65,)`` float64 weight of each Hamming distance.
        max_h: largest distance that matches.
        out: ``(N,)`` float64 scores of images ``base .. base + N - 1``.
        base: image id of ``out[0]``.
        use: ``"numba"`` or ``"numpy"`` (default: :func:`backend`).

    Returns:
        How many postings of the query's lists name an image outside ``out`` (0 for a sound
        index; the numpy backend counts the matching (entry, posting) pairs).
    """
    args = (
        _arr(offsets, np.int64),
        _arr(ids, np.uint32),
        _arr(sigs, np.uint64),
        _arr(words, np.int64),
        _arr(qsigs, np.uint64),
        _arr(weights, np.float64),
        _arr(lut, np.float64),
    )
    if backend(use) == "numba":
        return int(_nb.he_scan(*args, int(max_h), int(base), out, BLOCK, _parts(out.size)))
    return _he_np(*args, int(max_h), int(base), out)


def asmk_scan(
    offsets: np.ndarray,
    ids: np.ndarray,
    bits: np.ndarray,
    words: np.ndarray,
    qbits: np.ndarray,
    lut: np.ndarray,
    out: np.ndarray,
    *,
    base: int = 0,
    use: str | None = None,
) -> int:
    """Add one segment's ASMK* similarities into ``out`` (in place).

    Args:
        offsets: ``(W + 1,)`` int64 list bounds of the segment.
        ids: ``(P,)`` uint32 image ids.
        bits: ``(P, n64)`` uint64 binarised aggregated residuals.
        words: ``(Q,)`` int64 distinct query words, visited in this order.
        qbits: ``(Q, n64)`` uint64 query bits of each word.
        lut: ``(64 n64 + 1,)`` float64 selectivity of each total Hamming distance.
        out: ``(N,)`` float64 scores of images ``base .. base + N - 1``.
        base: image id of ``out[0]``.
        use: ``"numba"`` or ``"numpy"`` (default: :func:`backend`).

    Returns:
        The number of postings whose image lies outside ``out``.
    """
    n64 = int(np.asarray(bits).shape[1]) if np.asarray(bits).ndim == 2 else 1
    args = (
        _arr(offsets, np.int64),
        _arr(ids, np.uint32),
        _arr(bits, np.uint64).reshape(-1, n64),
        _arr(words, np.int64),
        _arr(qbits, np.uint64).reshape(-1, n64),
        _arr(lut, np.float64),
    )
    if backend(use) == "numba":
        return int(_nb.asmk_scan(*args, int(base), out, BLOCK, _parts(out.size)))
    return _asmk_np(*args, int(base), out)


def tree_scan(
    offsets: np.ndarray,
    ids: np.ndarray,
    tf: np.ndarray,
    words: np.ndarray,
    idf: np.ndarray,
    q: np.ndarray,
    inv_norm: np.ndarray,
    out: np.ndarray,
    *,
    base: int = 0,
    use: str | None = None,
) -> int:
    """Add one segment's NS L1 terms ``min(idf_i tf / ‖d‖, q_i)`` into ``out`` (in place).

    Args:
        offsets: ``(W + 1,)`` int64 list bounds of the segment.
        ids: ``(P,)`` uint32 image ids.
        tf: ``(P,)`` integer term counts.
        words: ``(Q,)`` int64 query words, visited in this order.
        idf: ``(Q,)`` float64 idf of each query word.
        q: ``(Q,)`` float64 query weight of each word.
        inv_norm: ``(N,)`` float64 inverse L1 norm of each image of ``out``.
        out: ``(N,)`` float64 scores of images ``base .. base + N - 1``.
        base: image id of ``out[0]``.
        use: ``"numba"`` or ``"numpy"`` (default: :func:`backend`).

    Returns:
        The number of postings whose image lies outside ``out``.
    """
    tf = np.asarray(tf)
    args = (
        _arr(offsets, np.int64),
        _arr(ids, np.uint32),
        _arr(tf, tf.dtype if tf.dtype in (np.uint16, np.int32) else np.int64),
        _arr(words, np.int64),
        _arr(idf, np.float64),
        _arr(q, np.float64),
        _arr(inv_norm, np.float64),
    )
    if backend(use) == "numba":
        return int(_nb.tree_scan(*args, int(base), out, BLOCK, _parts(out.size)))
    return _tree_np(*args, int(base), out)


def warm() -> str:
    """Compile (or load from the on-disk cache) every kernel on tiny inputs; returns the backend.

    A long-lived searcher calls this when it opens, so no query pays for compilation.
    """
    use = backend()
    if use != "numba":
        return use
    off = np.array([0, 1], np.int64)
    one_id = np.zeros(1, np.uint32)
    w = np.zeros(1, np.int64)
    out = np.zeros(1)
    sig = np.zeros(1, np.uint64)
    he_scan(off, one_id, sig, w, sig, np.ones(1), np.ones(65), 24, out)
    asmk_scan(off, one_id, sig[:, None], w, sig[:, None], np.ones(65), out)
    for tf_type in (np.uint16, np.int32):
        tree_scan(off, one_id, np.ones(1, tf_type), w, np.ones(1), np.ones(1), np.ones(1), out)
    return use


def image_word_stats(
    segments, n_words: int, n_images: int, weight_of_df
) -> tuple[np.ndarray, np.ndarray]:
    """``(df, norm2)`` over segments: images per word, and ``Σ_w weight_w · n_w(d)²`` per image.

    Args:
        segments: inverted-file segments (lists sorted by image id, as built).
        n_words: ``W``.
        n_images: ``N``.
        weight_of_df: maps the ``(W,)`` int64 document frequencies to ``(W,)`` float64 weights.

    Returns:
        ``(W,)`` int64 and ``(N,)`` float64.
    """
    from delfx.index.invfile import word_image_runs

    df = np.zeros(n_words, dtype=np.int64)
    norm2 = np.zeros(n_images)
    fast = backend() == "numba"
    dummy = np.zeros(1)
    for seg in segments if fast else ():
        off, ids = _arr(seg.offsets, np.int64), _arr(seg.image_ids, np.uint32)
        if _nb.runs(off, ids, dummy, df, norm2, 0) < 0:
            fast, df[:] = False, 0
            break
    if not fast:
        for seg in segments:
            df += np.bincount(word_image_runs(seg, n_words)[0], minlength=n_words)
    weight = weight_of_df(df)
    for seg in segments:
        if fast:
            off, ids = _arr(seg.offsets, np.int64), _arr(seg.image_ids, np.uint32)
            _nb.runs(off, ids, _arr(weight, np.float64), df, norm2, 1)
        else:
            words, ids, counts = word_image_runs(seg, n_words)
            w = weight[words] * counts.astype(np.float64) ** 2
            norm2 += np.bincount(ids, weights=w, minlength=n_images)
    return df, norm2


def tree_norms(segments, idf: np.ndarray, n_images: int) -> np.ndarray:
    """``(N,)`` float64 ``Σ tf · idf_w`` per image, summed in posting order (as ``np.add.at``)."""
    norms = np.zeros(n_images, dtype=np.float64)
    idf = _arr(idf, np.float64)
    for seg in segments:
        off, ids = _arr(seg.offsets, np.int64), _arr(seg.image_ids, np.uint32)
        tf = np.asarray(seg.payload["tf"])
        if backend() == "numba":
            _nb.tree_norms(off, ids, _arr(tf, tf.dtype), idf, norms)
            continue
        counts = np.diff(off)
        lo = 0
        while lo < idf.size:  # word ranges of about _MAX_HITS postings
            hi = int(np.searchsorted(off, off[lo] + _MAX_HITS, "right")) - 1
            hi = min(max(hi, lo + 1), idf.size)
            a, b = off[lo], off[hi]
            weight = tf[a:b] * np.repeat(idf[lo:hi], counts[lo:hi])
            np.add.at(norms, ids[a:b], weight)
            lo = hi
    return norms

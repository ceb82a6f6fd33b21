"""The inverted-file scorers as they were before the scan kernels (numpy, via ``lookup``).

Kept verbatim in behaviour as the reference the compiled and vectorised kernels are tested
against: gather every hit of the query's words with :meth:`InvertedFile.lookup`, compute each
hit's contribution, and sum per image with ``np.bincount``.
"""

from __future__ import annotations

import numpy as np

from delfx.index.invfile import accumulate, word_chunks


def he_scores(index, words: np.ndarray, sigs: np.ndarray) -> np.ndarray:
    """``(n_images,)`` HE scores of an encoded query (``HEIndex.score_encoded`` before)."""
    words = np.asarray(words, dtype=np.int64).reshape(-1)
    sigs = np.asarray(sigs, dtype=np.uint64).reshape(-1)
    if not index.ivf.segments or words.size == 0:
        return np.zeros(index.n_images)
    raw = np.zeros(index.n_images)
    for part in word_chunks(index.ivf, words, max(1 << 20, 4 * index.n_images)):
        hits = index.ivf.lookup(words[part], fields=("sig",))
        h = np.bitwise_count(hits.payload["sig"] ^ sigs[part][hits.query_pos])
        near = np.flatnonzero(h <= index.max_h)
        w = index._lut[h[near]] * index._idf2[words[part][hits.query_pos[near]]]
        raw += accumulate(hits.image_ids[near], w, index.n_images)
    qnorm = np.sqrt(np.dot(index._idf2, np.bincount(words, minlength=index.n_words) ** 2.0))
    denom = qnorm * index.norms
    return np.divide(raw, denom, out=np.zeros_like(raw), where=denom > 0)


def asmk_scores(index, words: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``(n_images,)`` ASMK* scores of an aggregated query (``ASMKIndex.score_encoded`` before)."""
    words = np.asarray(words, dtype=np.int64).reshape(-1)
    bits = np.asarray(bits, dtype=np.uint64).reshape(words.size, index.n64)
    if not index.ivf.segments or words.size == 0:
        return np.zeros(index.n_images)
    raw = np.zeros(index.n_images)
    for part in word_chunks(index.ivf, words, max(1 << 20, 4 * index.n_images)):
        hits = index.ivf.lookup(words[part], fields=("bits",))
        hb, pos = hits.payload["bits"], hits.query_pos
        h = np.bitwise_count(hb ^ bits[part][pos]).astype(np.int64).sum(axis=1)
        raw += accumulate(hits.image_ids, index._lut[h], index.n_images)
    return raw * index.gamma / np.sqrt(words.size)


def tree_scores(index, leaves: np.ndarray) -> np.ndarray:
    """``(N,)`` NS L1 similarities of a query given by its leaves (``TreeIndex`` before)."""
    idf, inv_norm = index.derived()
    words, _, counts = index._postings([np.asarray(leaves, dtype=np.int64)])
    q = counts * idf[words]
    keep = q > 0
    words, q = words[keep], q[keep]
    total = q.sum()
    if index.n_images == 0 or total <= 0:
        return np.zeros(index.n_images, dtype=np.float64)
    q /= total
    hits = index.inverted.lookup(words, fields=["tf"])
    pos = hits.query_pos
    d = idf[words].take(pos)
    d *= hits.payload["tf"]
    d *= inv_norm.take(hits.image_ids)
    np.minimum(d, q.take(pos), out=d)
    return accumulate(hits.image_ids, d, index.n_images)

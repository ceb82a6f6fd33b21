"""Tentative correspondences between the local features of a query and a database image.

Every function returns an ``M x 2`` ``int64`` array of ``(query index, database index)`` rows; an
empty result has shape ``(0, 2)``. Nothing here looks at keypoint positions: geometry is checked
later by :mod:`delfx.verify.ransac`.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from delfx.errors import InputError

logger = logging.getLogger(__name__)

#: Default cap on the pairs one visual word contributes (see :func:`word_matches`).
DEFAULT_MAX_PER_WORD = 10


def _empty() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.int64)


def _as_descriptors(desc: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(desc)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected N x D descriptors, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def ratio_matches(
    desc_q: np.ndarray,
    desc_d: np.ndarray,
    ratio: float = 0.9,
    mutual: bool = False,
    one_to_one: bool = False,
) -> np.ndarray:
    """Lowe's 2-NN ratio test, query to database, on exact L2 distances (faiss brute force).

    Query feature ``i`` is matched to its nearest database feature ``j`` when
    ``d1**2 < ratio**2 * d2**2`` (strict; the squared distances are compared in float64), where
    ``d1 <= d2`` are the L2 distances to the two nearest database features. A tie ``d1 == d2`` is
    therefore always rejected, whichever of the tied features the search lists first. With fewer
    than two database features the test cannot be applied and nothing is matched.

    With ``mutual=True`` a match ``(i, j)`` is also required to be a nearest query feature of
    ``j``: ``d(i, j)`` may exceed the smallest distance from ``j`` to any query feature by at most
    a float32 rounding margin (so ties in the reverse direction are kept).

    With ``one_to_one=True`` each database feature keeps only the closest of the query features
    matched to it (ties: the lowest query index). This costs no second search, and it matters for
    verification: many query features matched to one database feature let a degenerate model
    (a homography that collapses them onto one point) collect many "inliers" between unrelated
    images.

    Args:
        desc_q: ``Nq x D`` query descriptors (converted to float32).
        desc_d: ``Nd x D`` database descriptors.
        ratio: the ratio threshold in ``(0, 1]``; the seed used 0.9.
        mutual: also require the reverse nearest-neighbour check.
        one_to_one: keep at most one match per database feature.

    Returns:
        ``M x 2`` int64 ``(query index, database index)`` rows in increasing query index; every
        query index appears at most once (and every database index too with ``one_to_one``).

    Raises:
        InputError: on non-2-D input, a dimension mismatch or a ratio outside ``(0, 1]``.
    """
    q = _as_descriptors(desc_q, "desc_q")
    d = _as_descriptors(desc_d, "desc_d")
    if q.shape[1] != d.shape[1]:
        raise InputError(f"descriptor dimensions differ: query {q.shape[1]}, db {d.shape[1]}")
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"ratio must be in (0, 1], got {ratio}")
    if q.shape[0] == 0 or d.shape[0] < 2:
        return _empty()
    dist, idx = faiss.knn(q, d, 2)
    dist = np.maximum(dist.astype(np.float64), 0.0)  # the BLAS path can give tiny negatives
    keep = dist[:, 0] < (float(ratio) ** 2) * dist[:, 1]
    qi = np.flatnonzero(keep)
    dj = idx[qi, 0].astype(np.int64)
    if mutual and qi.size:
        back_dist, _ = faiss.knn(d, q, 1)
        best_back = np.maximum(back_dist[:, 0].astype(np.float64), 0.0)
        d_ij = dist[qi, 0]
        slack = 1e-6 * np.maximum(d_ij, best_back[dj]) + 1e-12
        ok = d_ij <= best_back[dj] + slack
        qi, dj = qi[ok], dj[ok]
    if one_to_one and qi.size:
        order = np.lexsort((qi, dist[qi, 0], dj))
        qi, dj = qi[order], dj[order]
        first = np.ones(qi.size, dtype=bool)
        first[1:] = dj[1:] != dj[:-1]
        qi, dj = qi[first], dj[first]
        order = np.argsort(qi, kind="stable")
        qi, dj = qi[order], dj[order]
    return np.stack([qi.astype(np.int64), dj], axis=1)


def _feature_words(words: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a word assignment into ``(feature, word)`` pairs sorted by ``(word, feature)``.

    Negative words (``-1`` = no assignment) are dropped, and so is a feature listed twice for the
    same word.
    """
    w = np.asarray(words)
    if w.ndim == 1:
        w = w[:, None]
    if w.ndim != 2:
        raise InputError(f"{name}: expected (N,) or (N, k) word ids, got shape {w.shape}")
    if w.size and not np.issubdtype(w.dtype, np.integer):
        raise InputError(f"{name}: word ids must be integers, got {w.dtype}")
    n, k = w.shape
    feat = np.repeat(np.arange(n, dtype=np.int64), k)
    word = w.reshape(-1).astype(np.int64)
    valid = word >= 0
    feat, word = feat[valid], word[valid]
    order = np.lexsort((feat, word))
    feat, word = feat[order], word[order]
    if feat.size > 1:
        first = np.ones(feat.size, dtype=bool)
        first[1:] = (word[1:] != word[:-1]) | (feat[1:] != feat[:-1])
        feat, word = feat[first], word[first]
    return feat, word


def word_matches(
    words_q: np.ndarray, words_d: np.ndarray, max_per_word: int | None = DEFAULT_MAX_PER_WORD
) -> np.ndarray:
    """Correspondences between features that share a visual word.

    For each word ``w`` used on both sides, let ``A = (a_0 < a_1 < ...)`` be the query features
    and ``B = (b_0 < b_1 < ...)`` the database features assigned to ``w``. The candidate pairs
    ``(a_r, b_s)`` are ordered along anti-diagonals, by ``(r + s, r)``, and the first
    ``max_per_word`` are kept. This caps bursts (repeated structures that put many features in one
    word) while spreading the kept pairs over many distinct features on both sides, instead of
    pairing one query feature with every database feature. Ranks follow feature index order, so
    pass features sorted by strength to keep the strongest ones. The union over all words is then
    de-duplicated (with multiple assignment one pair can share several words).

    Args:
        words_q: ``(Nq,)`` or ``(Nq, k)`` int word ids of the query features; ``-1`` = none.
        words_d: ``(Nd,)`` or ``(Nd, k')`` int word ids of the database features.
        max_per_word: the most pairs one word may contribute; ``None`` keeps all of them.

    Returns:
        ``M x 2`` int64 unique ``(query index, database index)`` rows, sorted lexicographically.

    Raises:
        InputError: on malformed word arrays or ``max_per_word < 1``.
    """
    if max_per_word is not None and max_per_word < 1:
        raise InputError(f"max_per_word must be >= 1 or None, got {max_per_word}")
    fq, wq = _feature_words(words_q, "words_q")
    fd, wd = _feature_words(words_d, "words_d")
    if fq.size == 0 or fd.size == 0:
        return _empty()
    uq, start_q, count_q = np.unique(wq, return_index=True, return_counts=True)
    ud, start_d, count_d = np.unique(wd, return_index=True, return_counts=True)
    _, iq, id_ = np.intersect1d(uq, ud, assume_unique=True, return_indices=True)
    if iq.size == 0:
        return _empty()
    sa, na = start_q[iq], count_q[iq]
    sb, nb = start_d[id_], count_d[id_]
    if max_per_word is not None:
        # The first ``cap`` pairs in anti-diagonal order only use ranks below ``cap``.
        na = np.minimum(na, max_per_word)
        nb = np.minimum(nb, max_per_word)
    sizes = na * nb
    group = np.repeat(np.arange(sizes.size), sizes)
    offsets = np.cumsum(sizes) - sizes
    local = np.arange(group.size, dtype=np.int64) - offsets[group]
    r = local // nb[group]
    s = local % nb[group]
    if max_per_word is not None:
        order = np.lexsort((r, r + s, group))
        group, r, s = group[order], r[order], s[order]
        rank = np.arange(group.size, dtype=np.int64) - offsets[group]
        keep = rank < max_per_word
        group, r, s = group[keep], r[keep], s[keep]
    pairs = np.stack([fq[sa[group] + r], fd[sb[group] + s]], axis=1)
    return np.unique(pairs, axis=0).astype(np.int64, copy=False)


def combine(*match_arrays: np.ndarray) -> np.ndarray:
    """The union of several match arrays, without duplicates.

    Args:
        *match_arrays: ``M_i x 2`` integer ``(query index, database index)`` arrays.

    Returns:
        ``M x 2`` int64 unique rows, sorted lexicographically.

    Raises:
        InputError: when an array is not ``M x 2``.
    """
    parts = []
    for i, m in enumerate(match_arrays):
        arr = np.asarray(m)
        if arr.size == 0:
            continue
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise InputError(f"match array {i}: expected M x 2, got shape {arr.shape}")
        parts.append(arr.astype(np.int64, copy=False))
    if not parts:
        return _empty()
    return np.unique(np.concatenate(parts, axis=0), axis=0)

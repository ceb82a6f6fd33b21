"""Re-ranking a first-stage shortlist by spatial verification.

The flow: :func:`shortlist` picks the ids to verify (dropping excluded ids such as the protocol's
junk images first, so the budget goes to real candidates), :func:`verify_candidates` counts the
inliers of each, :func:`rerank` orders them, and :func:`merge` puts the re-ranked head back in
front of the rest of the first-stage ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import faiss
import numpy as np

from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.verify.ransac import RansacConfig, verify_pair

logger = logging.getLogger(__name__)

#: ``matches_fn(query, db) -> M x 2`` tentative correspondences.
MatchesFn = Callable[[LocalFeatures, LocalFeatures], np.ndarray]


def rerank(first_scores: np.ndarray, inliers: np.ndarray, min_inliers: int) -> np.ndarray:
    """The re-ranked order of a shortlist.

    The inputs are in first-stage rank order (position 0 = the best first-stage result). An image
    is *verified* when ``inliers >= min_inliers``. The new order is:

    1. the verified images, by inlier count descending, ties broken by first-stage score
       descending, remaining ties by first-stage position ascending;
    2. then the unverified images, in their first-stage order (their inlier counts and scores are
       not consulted).

    So every verified image moves above every unverified one, and the unverified ones keep their
    relative order. A NaN first score ranks last among verified images with the same count.

    Args:
        first_scores: ``(K,)`` first-stage similarity (higher = better).
        inliers: ``(K,)`` inlier counts.
        min_inliers: the fewest inliers for a verified image.

    Returns:
        ``(K,)`` int64 positions into the inputs, best first.

    Raises:
        InputError: when the arrays are not 1-D of the same length.
    """
    s = np.asarray(first_scores, dtype=np.float64)
    n = np.asarray(inliers)
    if s.ndim != 1 or n.ndim != 1 or s.shape != n.shape:
        raise InputError(f"first_scores {s.shape} and inliers {n.shape}: expected equal (K,)")
    pos = np.arange(s.size, dtype=np.int64)
    verified = n >= min_inliers
    v = pos[verified]
    # lexsort: last key is primary. -NaN is NaN, which lexsort puts last.
    v = v[np.lexsort((v, -s[v], -n[v].astype(np.float64)))]
    return np.concatenate([v, pos[~verified]])


def shortlist(
    ranked: np.ndarray, k: int, exclude: np.ndarray | Sequence[int] | None = None
) -> np.ndarray:
    """The first ``k`` ids of a ranking to re-rank, after dropping excluded ids.

    Args:
        ranked: ``(K_all,)`` database ids, best first.
        k: how many to keep.
        exclude: ids to remove first (e.g. the protocol's junk images, which the evaluation
            ignores anyway); ``None`` removes nothing.

    Returns:
        ``(min(k, K_left),)`` int64 ids in their ranked order.

    Raises:
        InputError: when ``ranked`` is not 1-D or ``k < 0``.
    """
    r = np.asarray(ranked)
    if r.ndim != 1:
        raise InputError(f"ranked: expected (K,), got shape {r.shape}")
    if k < 0:
        raise InputError(f"k must be >= 0, got {k}")
    r = r.astype(np.int64, copy=False)
    if exclude is not None:
        ex = np.asarray(exclude, dtype=np.int64).reshape(-1)
        if ex.size:
            r = r[~np.isin(r, ex)]
    return r[:k].copy()


def check_ranked_ids(
    ranks: np.ndarray, n_images: int, source: str, query_names: Sequence[str] | None = None
) -> None:
    """Refuse a ranking whose ids do not all name an image of the index.

    Args:
        ranks: ``Q x K`` image ids (or one ``(K,)`` list per query).
        n_images: the index size; valid ids are ``0 .. n_images - 1``.
        source: the ranks file (or what the ranks are), for the message.
        query_names: the queries' names, for the message (positions when None).

    Raises:
        InputError: one line naming ``source``, the query and the first bad id.
    """
    for q, row in enumerate(ranks):
        r = np.asarray(row).reshape(-1)
        bad = r[(r < 0) | (r >= n_images)]
        if bad.size:
            name = f"'{query_names[q]}'" if query_names is not None else str(q)
            raise InputError(
                f"{source}: query {name} ranks image id {int(bad[0])}, "
                f"outside the index's [0, {n_images})"
            )


def merge(ranked: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Put re-ranked ids in front of the rest of a ranking.

    Args:
        ranked: ``(K_all,)`` the first-stage ranking.
        head: ``(k,)`` ids in their new order (typically ``ids[rerank(...)]``).

    Returns:
        ``(K_all,)`` int64: ``head`` followed by the other ids of ``ranked`` in their order
        (excluded ids that were left out of the shortlist land here).
    """
    r = np.asarray(ranked, dtype=np.int64).reshape(-1)
    h = np.asarray(head, dtype=np.int64).reshape(-1)
    return np.concatenate([h, r[~np.isin(r, h)]])


def _one_omp_thread() -> None:
    """Pool initializer: one OpenMP thread for faiss (and its BLAS) in this worker thread.

    OpenMP's thread count is a per-thread setting, and a new thread starts from the process
    default (all cores), so without this every worker would start its own team of OpenMP
    threads, oversubscribing the cores; with busy-waiting OpenMP threads on a loaded machine that
    made two workers slower than one.
    """
    faiss.omp_set_num_threads(1)


@contextmanager
def _single_omp_thread() -> Iterator[None]:
    """One OpenMP thread for faiss in the calling thread, restored afterwards."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def verify_candidates(
    query: LocalFeatures,
    candidates: Sequence[LocalFeatures] | Callable[[int], LocalFeatures],
    conf: RansacConfig,
    *,
    matches_fn: MatchesFn | None = None,
    workers: int = 2,
    count: int | None = None,
    ratio: float = 0.9,
) -> np.ndarray:
    """Inlier counts of a query against each candidate, verified in parallel threads.

    Threads pay off because faiss and OpenCV release the GIL during their work; the counts do not
    depend on ``workers`` (each fit re-seeds OpenCV's thread-local generator, see
    :mod:`delfx.verify.ransac`). When ``candidates`` is a callable (e.g. a feature-store reader)
    it is called from the worker threads, so it must be thread-safe.

    Args:
        query: the query image's features.
        candidates: the candidates' features, or a function from position ``0..count-1`` to them.
        conf: the estimator settings.
        matches_fn: ``(query, db) -> M x 2`` correspondences; default
            :func:`~delfx.verify.matching.ratio_matches` at ``ratio``.
        workers: threads; ``1`` runs in the calling thread.
        count: the number of candidates, required when ``candidates`` is a callable.
        ratio: the ratio-test threshold of the default matcher.

    Returns:
        ``(K,)`` int64 scores (:attr:`~delfx.verify.ransac.VerifyResult.inliers`, distinct inlier
        positions) in candidate order.

    Raises:
        InputError: on ``workers < 1`` or a callable without ``count``.
    """
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if callable(candidates):
        if count is None:
            raise InputError("count is required when candidates is a callable")
        get = candidates
        k = int(count)
    else:
        seq = candidates
        k = len(seq) if count is None else min(int(count), len(seq))

        def get(i: int) -> LocalFeatures:
            return seq[i]

    def one(i: int) -> int:
        db = get(i)
        matches = None if matches_fn is None else matches_fn(query, db)
        return verify_pair(query, db, conf, matches=matches, ratio=ratio).inliers

    if workers == 1 or k <= 1:
        with _single_omp_thread():
            counts = [one(i) for i in range(k)]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, k), initializer=_one_omp_thread) as pool:
            counts = list(pool.map(one, range(k)))
    logger.debug("verified %d candidates with %d workers", k, workers)
    return np.asarray(counts, dtype=np.int64)

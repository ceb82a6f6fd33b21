"""Stage: spatial verification of the top of each ranked list.

For each query, the first ``rerank_num`` candidates (after dropping the protocol's junk images
when asked) are matched to the query, a model is fitted with OpenCV's USAC (MAGSAC++ by
default), and the candidates with at least ``min_inliers`` inliers move to the front, ordered by
inlier count with ties broken by the first-stage score (:func:`delfx.verify.rerank.rerank`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.io.featurestore import FeatureReader
from delfx.verify.matching import combine, ratio_matches, word_matches
from delfx.verify.ransac import RansacConfig
from delfx.verify.rerank import check_ranked_ids, merge, rerank, shortlist, verify_candidates

logger = logging.getLogger(__name__)

MATCHES = ("ratio", "words", "both")


@dataclass(frozen=True)
class RerankConfig:
    """Settings of spatial verification.

    Attributes:
        rerank_num: candidates verified per query.
        matches: tentative matches from the ``ratio`` test, shared visual ``words``, or ``both``.
        ratio: ratio-test threshold (the seed used 0.9).
        ransac: the model, estimator and thresholds.
        drop_junk: drop the ground truth's junk images before taking the shortlist.
        workers: verification threads.
        max_features: verify with at most this many features per image, the strongest by
            detector score (None: all).
    """

    rerank_num: int = 100
    matches: str = "ratio"
    ratio: float = 0.9
    ransac: RansacConfig = field(default_factory=RansacConfig)
    drop_junk: bool = False
    workers: int = 2
    max_features: int | None = 1000

    def __post_init__(self) -> None:
        if self.matches not in MATCHES:
            raise InputError(f"matches '{self.matches}': expected one of {', '.join(MATCHES)}")
        if self.rerank_num < 0:
            raise InputError(f"rerank-num must be at least 0, got {self.rerank_num}")
        if not 0.0 < self.ratio <= 1.0:
            raise InputError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.workers < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")
        if self.max_features is not None and self.max_features < 1:
            raise InputError(f"max-features must be at least 1, got {self.max_features}")


def _matcher(
    conf: RerankConfig, words_fn: Callable[[np.ndarray], np.ndarray] | None
) -> Callable[[LocalFeatures, LocalFeatures], np.ndarray]:
    if conf.matches != "ratio" and words_fn is None:
        raise InputError(f"matches='{conf.matches}' needs the index's visual words")

    def fn(q: LocalFeatures, d: LocalFeatures) -> np.ndarray:
        parts = []
        if conf.matches in ("ratio", "both"):
            parts.append(ratio_matches(q.descriptors, d.descriptors, conf.ratio, one_to_one=True))
        if conf.matches in ("words", "both"):
            parts.append(word_matches(words_fn(q.descriptors), words_fn(d.descriptors)))
        return combine(*parts) if len(parts) > 1 else parts[0]

    return fn


def rerank_all(
    conf: RerankConfig,
    ranks: np.ndarray,
    scores: np.ndarray,
    reader: FeatureReader,
    query_names: Sequence[str],
    db_names: Sequence[str],
    *,
    junk: Sequence[np.ndarray] | None = None,
    words_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = True,
    source: str = "ranks",
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank every query's list.

    Args:
        conf: verification settings.
        ranks: ``Q x K`` first-stage image ids.
        scores: ``Q x K`` first-stage scores.
        reader: feature store with the queries and the database images.
        query_names: store names of the queries.
        db_names: store name of each image id.
        junk: per query, image ids to drop before the shortlist (with ``conf.drop_junk``).
        words_fn: descriptors -> visual words (for ``words`` matches).
        progress: progress bar.
        source: where ``ranks`` come from (e.g. the ranks file), for error messages.

    Returns:
        ``(new_ranks, inliers)``: ``Q x K'`` image ids (junk dropped from the head re-enter
        after it) and ``Q x rerank_num`` inlier counts of the shortlist, -1 where absent.

    Raises:
        InputError: an id in ``ranks`` outside ``[0, len(db_names))`` (naming ``source``, the
            query and the id), or fewer ranked lists than queries.
    """
    if len(ranks) != len(query_names):
        raise InputError(f"{source}: {len(ranks)} ranked lists for {len(query_names)} queries")
    check_ranked_ids(ranks, len(db_names), source, query_names)
    matches_fn = _matcher(conf, words_fn)
    out, all_inliers = [], np.full((len(query_names), conf.rerank_num), -1, dtype=np.int64)
    for q, qname in enumerate(
        tqdm(
            query_names,
            desc="verify",
            unit="query",
            leave=False,
            disable=None if progress else True,
        )
    ):
        exclude = junk[q] if (conf.drop_junk and junk is not None) else None
        if shortlist(ranks[q], conf.rerank_num, exclude).size == 0:
            out.append(ranks[q])
            continue
        row, inl = rerank_one(
            conf,
            ranks[q],
            scores[q],
            reader.get(qname),
            lambda i: reader.get(db_names[i]),
            exclude=exclude,
            matches_fn=matches_fn,
        )
        out.append(row)
        all_inliers[q, : inl.size] = inl
    return np.stack(out), all_inliers


def rerank_one(
    conf: RerankConfig,
    ranked: np.ndarray,
    scores: np.ndarray,
    query: LocalFeatures,
    get_db: Callable[[int], LocalFeatures],
    *,
    exclude: np.ndarray | None = None,
    matches_fn: Callable[[LocalFeatures, LocalFeatures], np.ndarray] | None = None,
    words_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Verify the head of one ranked list and move verified images first.

    Args:
        conf: verification settings (``rerank_num`` candidates).
        ranked: ``(K,)`` image ids, best first.
        scores: ``(K,)`` their first-stage scores.
        query: the query's features.
        get_db: image id -> its features (called in this thread, before the fits).
        exclude: ids to drop before taking the shortlist.
        matches_fn: tentative matches (default: from ``conf.matches`` and ``words_fn``).
        words_fn: descriptors -> visual words, for ``words`` matches.

    Returns:
        ``(new_ranked, inliers)``: ``(K,)`` ids and the shortlist's inlier counts in their
        new order (``(k,)``, ``k <= rerank_num``).
    """
    cand = shortlist(ranked, conf.rerank_num, exclude)
    if cand.size == 0:
        return np.asarray(ranked, dtype=np.int64), np.zeros(0, dtype=np.int64)
    fn = matches_fn if matches_fn is not None else _matcher(conf, words_fn)
    q = _strongest(query, conf.max_features)
    # read here, not in the threads: h5py serialises access anyway
    feats = [_strongest(get_db(int(i)), conf.max_features) for i in cand]
    inl = verify_candidates(
        q, feats, conf.ransac, matches_fn=fn, workers=conf.workers, ratio=conf.ratio
    )
    first = scores_of(ranked, scores, cand)
    order = rerank(first, inl, conf.ransac.min_inliers)
    return merge(ranked, cand[order]), inl[order]


def _strongest(feats: LocalFeatures, n: int | None) -> LocalFeatures:
    """The ``n`` features with the highest score (all when ``n`` is None or not exceeded)."""
    if n is None or len(feats) <= n:
        return feats
    return feats.subset(np.sort(np.argsort(-feats.scores, kind="stable")[:n]))


def scores_of(ranked: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """First-stage scores of ``ids``, each of which appears once in ``ranked``.

    Shape:
        ``ranked`` and ``scores`` ``(K,)``, ``ids`` ``(k,)`` -> ``(k,)`` float64.
    """
    order = np.argsort(ranked, kind="stable")
    return scores[order[np.searchsorted(ranked[order], ids)]].astype(np.float64)


def main(
    conf: RerankConfig,
    ranks_path: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    features: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    progress: bool = True,
) -> Path:
    """Re-rank a search output (``ranks``, ``scores``, ``queries`` in ``.npz``) into ``out``.

    The index gives the image names behind the ids and, for word matches, the visual words.
    ``root`` and ``dataset`` give the junk images to drop when ``conf.drop_junk`` is set.
    """
    from delfx.datasets.revisited import RetrievalDataset
    from delfx.engine.searcher import Searcher
    from delfx.index.storage import save_arrays
    from delfx.io.rankings import load_search_output

    ranks, scores, queries = load_search_output(ranks_path)
    junk = None
    if conf.drop_junk:
        if root is None or dataset is None:
            raise InputError("dropping junk needs --root and --dataset")
        junk = [t.junk for t in RetrievalDataset(root, dataset).truth]
    with Searcher.from_index(index_dir, [features]) as searcher:
        new_ranks, inliers = searcher.verify_stored(
            conf, ranks, scores, queries, junk=junk, progress=progress, source=str(ranks_path)
        )
    names = np.asarray(queries, dtype=np.str_)
    return save_arrays(out, {"ranks": new_ranks, "inliers": inliers, "queries": names})

"""Stage: rank the indexed images for each query of a feature store."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from delfx.errors import InputError
from delfx.index import local
from delfx.index.storage import save_arrays
from delfx.io.featurestore import FeatureReader

logger = logging.getLogger(__name__)


def rank_queries(
    index: local.LocalIndex,
    reader: FeatureReader,
    query_names: Sequence[str],
    *,
    top_k: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Search every query.

    Args:
        index: an open index.
        reader: the feature store holding the queries.
        query_names: store names of the queries, in query order.
        top_k: results per query (None: every indexed image).
        progress: progress bar.

    Returns:
        ``(ranks, scores)``: ``Q x K`` int64 image ids, best first, and ``Q x K`` float64 scores.

    Raises:
        InputError: a query with no features, or with descriptors of the wrong dimension.
    """
    k = index.n_images if top_k is None else min(int(top_k), index.n_images)
    dim = local.dim_of(index)
    ranks = np.empty((len(query_names), k), dtype=np.int64)
    scores = np.empty((len(query_names), k), dtype=np.float64)
    for q, name in enumerate(
        tqdm(
            query_names,
            desc="search",
            unit="query",
            leave=False,
            disable=None if progress else True,
        )
    ):
        desc = reader.descriptors(name)
        if desc.shape[0] == 0:
            raise InputError(f"{reader.path}: query '{name}' has no features")
        if desc.shape[1] != dim:
            raise InputError(
                f"{reader.path}: query '{name}' has {desc.shape[1]}-d descriptors; "
                f"the index expects {dim}-d"
            )
        ids, sc = index.search(desc, k)
        ranks[q], scores[q] = ids, sc
    return ranks, scores


def main(
    index_dir: str | os.PathLike[str],
    features: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    query_names: Sequence[str] | None = None,
    top_k: int | None = None,
    progress: bool = True,
) -> Path:
    """Search the queries of ``features`` in an index; write ``out`` (``.npz``).

    The output holds ``ranks`` (``Q x K`` image ids), ``scores`` and ``queries`` (names); the
    ranks are ids into the index's image list, which is ``imlist`` order when the index was
    built from a dataset's feature store.

    Returns:
        ``out`` as a Path.
    """
    from delfx.engine.searcher import Searcher

    with FeatureReader(features) as reader:  # checks the file before the index is read
        names = list(reader.names("query/") if query_names is None else query_names)
        if not names:
            raise InputError(_no_queries(reader))
    with Searcher.from_index(index_dir, [features]) as searcher:
        ranks, scores = searcher.rank_stored(names, top_k=top_k, progress=progress)
    return save_arrays(
        out, {"ranks": ranks, "scores": scores, "queries": np.asarray(names, dtype=np.str_)}
    )


def _no_queries(reader: FeatureReader) -> str:
    """The one line for a feature file without ``query/`` entries, saying what it holds."""
    n_db = len(reader.names("db/"))
    if n_db:
        return (
            f"{reader.path}: no query entries (its {n_db} images are database entries, as "
            "'delfx extract sift --images' stores photos); to search with photos, use "
            "'delfx query COLLECTION PHOTO' or extract a dataset with queries"
        )
    return f"{reader.path}: no query entries to search with"

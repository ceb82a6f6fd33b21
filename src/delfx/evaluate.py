"""Stage: score a rankings file against a dataset's ground truth and write the results JSON."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from delfx.datasets.revisited import RetrievalDataset
from delfx.errors import InputError
from delfx.evaluation.report import format_lines, results_dict
from delfx.evaluation.revisited import ProtocolScore, evaluate
from delfx.io import atomic
from delfx.io.rankings import load_rankings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    Attributes:
        kappas: cut-offs for mP@k.
        layout: rank-matrix layout of ``.npy`` files (``auto``, ``db-by-query``, ``query-by-k``).
        method: the method name recorded in the results JSON.
    """

    kappas: tuple[int, ...] = (1, 5, 10)
    layout: str = "auto"
    method: str = "unknown"


PRESETS: dict[str, EvalConfig] = {"revisited": EvalConfig()}


def score(
    dataset: RetrievalDataset, rankings: Sequence[np.ndarray], kappas: Sequence[int] = (1, 5, 10)
) -> dict[str, ProtocolScore]:
    """Score per-query ranked lists under every protocol of ``dataset``.

    Args:
        dataset: the dataset whose ground truth to use.
        rankings: ``len(dataset.queries)`` arrays of database indices, best first.
        kappas: cut-offs for mP@k.

    Returns:
        Protocol name -> :class:`ProtocolScore` (``easy``/``medium``/``hard``, or ``old``).
    """
    if len(rankings) != len(dataset.queries):
        raise InputError(
            f"{dataset.name}: {len(rankings)} ranked lists for {len(dataset.queries)} queries"
        )
    return {p: evaluate(rankings, dataset.protocol_sets(p), kappas) for p in dataset.protocols}


def write_results(
    output: str | os.PathLike[str],
    dataset: RetrievalDataset,
    method: str,
    scores: Mapping[str, ProtocolScore],
    timings: Mapping[str, float] | None = None,
    **extra: Any,
) -> Path:
    """Write the results JSON atomically and log the seed's lines; returns its path."""
    payload = results_dict(
        dataset.name,
        method,
        scores,
        timings,
        n_images=len(dataset.images),
        n_queries=len(dataset.queries),
        **extra,
    )
    path = atomic.write_json(output, payload)
    for line in format_lines(payload):
        logger.debug("%s", line)
    return path


def main(
    conf: EvalConfig,
    root: str | os.PathLike[str],
    dataset_name: str,
    ranks_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
) -> Path:
    """Evaluate a rankings file and write ``output`` (results JSON).

    Returns:
        The path of the results JSON.
    """
    start = time.perf_counter()
    dataset = RetrievalDataset(root, dataset_name)
    rankings = load_rankings(ranks_path, dataset.images, dataset.queries, layout=conf.layout)
    scores = score(dataset, rankings, conf.kappas)
    timings = {"evaluate": time.perf_counter() - start}
    return write_results(
        output, dataset, conf.method, scores, timings, config=asdict(conf), ranks=str(ranks_path)
    )

"""Stage: the global-descriptor pipelines of ``delfx run`` (``global-gem``, ``global-gem-whiten``).

Describe the database and the cropped queries with a network (a checkpoint, or an architecture
with ``--pretrained``), optionally whiten, optionally augment the database (DBA) and expand the
queries (αQE), rank by inner product and evaluate. Descriptors are cached in the work folder.

``global-gem-whiten`` learns the whitening on images independent of the queries. With
``--whiten-pairs ROOT:NAME`` it is the learned Lw of Radenović et al. from query-positive pairs:
the whitening pairs of ``retrieval-SfM-120k``, or the training pairs of a set written by
``delfx data build-training``. Otherwise it is PCA-whitening on images chosen as the local
pipelines choose codebook images: ``--codebook-from ROOT:NAME``, else the Oxford <-> Paris
companion when present, else the dataset's images unrelated to every query.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from delfx import extract_global
from delfx.datasets.revisited import COMPANIONS, RetrievalDataset, unrelated_images
from delfx.datasets.training import SFM120K, load_training, load_whitening_pairs
from delfx.errors import InputError
from delfx.evaluate import score, write_results
from delfx.global_options import GLOBAL_PIPELINES, GlobalOptions
from delfx.index.global_search import alpha_qe, dba, rank_ip
from delfx.io.cache_key import digest, model_id
from delfx.io.images import read_image
from delfx.models.describe import describe_images
from delfx.models.whitening import apply_whitening, learn_whitening, pca_whiten

logger = logging.getLogger(__name__)


def describe_cached(opts: GlobalOptions, root: Path, name: str, work: Path, progress: bool) -> Path:
    """Global descriptors of dataset ``name`` in ``work`` (described once per setting)."""
    # keyed on the weights' content: a checkpoint retrained in place gets new descriptors
    key = digest(
        [
            model_id(opts.model),
            model_id(opts.pretrained),
            opts.pooling,
            opts.image_size,
            list(opts.scales),
        ]
    )
    out = work / f"global-{name}-{key}.h5"
    if not out.is_file():
        conf = extract_global.GlobalExtractConfig(image_size=opts.image_size, scales=opts.scales)
        extract_global.main(
            conf,
            out,
            root=root,
            dataset=name,
            model=opts.model,
            pretrained=opts.pretrained,
            pooling=opts.pooling,
            device=opts.device,
            progress=progress,
        )
    return out


def _whitening_data(
    opts: GlobalOptions,
    ds: RetrievalDataset,
    db: np.ndarray,
    work: Path,
    codebook_from: str | None,
    progress: bool,
) -> tuple[np.ndarray, str]:
    other = None
    if codebook_from is not None:
        if ":" not in codebook_from:
            raise InputError(f"--codebook-from '{codebook_from}': expected ROOT:NAME")
        other_root, other = codebook_from.rsplit(":", 1)
    elif (ds.root / COMPANIONS.get(ds.name, "\0")).is_dir():
        other_root, other = str(ds.root), COMPANIONS[ds.name]
    if other is not None:
        path = describe_cached(opts, Path(other_root), other, work, progress)
        return extract_global.load_global(path)[0], f"dataset {other}"
    unrelated = unrelated_images(ds)
    if len(unrelated) < 2 * db.shape[1] // 8:
        logger.warning("whitening learned on only %d unrelated images", len(unrelated))
    if len(unrelated) < 2:
        raise InputError(
            f"{ds.name}: too few unrelated images to learn whitening; "
            "pass --codebook-from ROOT:NAME"
        )
    return db[unrelated], f"{len(unrelated)} images of {ds.name} unrelated to every query"


def _learned_whitening(opts: GlobalOptions, spec: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Lw from the query-positive pairs of a training set given as ``ROOT:NAME``."""
    if ":" not in spec:
        raise InputError(f"--whiten-pairs '{spec}': expected ROOT:NAME")
    root, name = spec.rsplit(":", 1)
    if name == SFM120K:
        paths, qidxs, pidxs = load_whitening_pairs(root)
    else:
        split = load_training(root, name).train
        paths, qidxs, pidxs = list(split.images), split.qidxs, split.pidxs
    net = extract_global.resolve_model(
        opts.model, pretrained=opts.pretrained, pooling=opts.pooling, device=opts.device
    )
    x = describe_images(
        net,
        (read_image(p) for p in paths),
        image_size=opts.image_size,
        scales=opts.scales,
        device=opts.device,
    )
    m, P = learn_whitening(x, qidxs, pidxs)
    return m, P, f"learned whitening (Lw) from {len(qidxs)} pairs of {name}"


def global_ranking(
    pipeline: str,
    ds: RetrievalDataset,
    work: Path,
    opts: GlobalOptions,
    *,
    codebook_from: str | None = None,
    whiten_pairs: str | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:
    """Rank a dataset's database for every query by a global descriptor.

    Every option of ``opts`` is applied: scales, whitening (``global-gem-whiten``), DBA and αQE.

    Args:
        timings: where to add the seconds spent describing (``describe``) and ranking
            (``search``).

    Returns:
        ``(ranks Q x N, scores Q x N, method name, extra results fields)``.
    """
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    if pipeline not in GLOBAL_PIPELINES:
        raise InputError(f"pipeline '{pipeline}': expected one of {', '.join(GLOBAL_PIPELINES)}")
    if whiten_pairs is not None and pipeline != "global-gem-whiten":
        raise InputError(f"--whiten-pairs: only {GLOBAL_PIPELINES[1]} learns a whitening")
    db, q, _, _, attrs = extract_global.load_global(
        describe_cached(opts, ds.root, ds.name, work, progress)
    )
    timings["describe"] = timings.get("describe", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    extra: dict[str, Any] = {"model_meta": attrs.get("model_meta", {})}
    if pipeline == "global-gem-whiten":
        if whiten_pairs is not None:
            m, P, label = _learned_whitening(opts, whiten_pairs)
        else:
            train, source = _whitening_data(opts, ds, db, work, codebook_from, progress)
            m, P = pca_whiten(train, dim=min(train.shape[0] - 1, train.shape[1]))
            label = f"PCA-whitening, {P.shape[0]} dims, learned on {source}"
        db = apply_whitening(db, m, P).astype(np.float32)
        q = apply_whitening(q, m, P).astype(np.float32)
        extra["whitening"] = label
    if opts.dba > 0:
        db = dba(db, opts.dba, opts.alpha)
    ranks, scores = rank_ip(db, q)
    if opts.qe > 0:
        ranks, scores = rank_ip(db, alpha_qe(db, q, ranks, opts.qe, opts.alpha))
    timings["search"] = timings.get("search", 0.0) + time.perf_counter() - t0
    method = (
        pipeline + (f"+dba{opts.dba}" if opts.dba else "") + (f"+aqe{opts.qe}" if opts.qe else "")
    )
    return ranks, scores, method, extra


def main(
    pipeline: str,
    root: str | os.PathLike[str],
    dataset: str,
    work: str | os.PathLike[str],
    output: str | os.PathLike[str],
    opts: GlobalOptions,
    *,
    codebook_from: str | None = None,
    whiten_pairs: str | None = None,
    progress: bool = True,
) -> Path:
    """Run a global pipeline and write the results JSON; returns its path."""
    if pipeline not in GLOBAL_PIPELINES:
        raise InputError(f"pipeline '{pipeline}': expected one of {', '.join(GLOBAL_PIPELINES)}")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ds = RetrievalDataset(root, dataset)
    timings: dict[str, float] = {}
    ranks, _, method, extra = global_ranking(
        pipeline,
        ds,
        work,
        opts,
        codebook_from=codebook_from,
        whiten_pairs=whiten_pairs,
        progress=progress,
        timings=timings,
    )
    t0 = time.perf_counter()
    scores = score(ds, list(ranks))
    timings["evaluate"] = time.perf_counter() - t0
    return write_results(output, ds, method, scores, timings, options=asdict(opts), **extra)

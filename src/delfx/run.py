"""Stage: one named experiment from features to results JSON, reusing what the work folder has.

``delfx run PIPELINE --root R --dataset NAME --work W --output results.json`` runs extraction,
codebook training, indexing, search, optional spatial verification and evaluation. Every stage
output is cached in ``W`` under a name derived from its settings, so a second run (or another
pipeline sharing a stage) reuses it.

Codebook training images, in order of preference:

1. ``--codebook-from ROOT:NAME`` (another dataset) or ``--codebook-from FILE.h5`` (features);
2. the conventional companion dataset when present under ROOT (Oxford <-> Paris);
3. the dataset's unrelated images: database images in no query's positive or junk lists, so
   nothing that is searched for shapes the vocabulary;
4. the database itself, only where the pipeline asks for it (``*-voctree-seed``, as the
   seed did) or ``--codebook-from database`` is given; a warning says so.

The ``delf-*`` pipelines use DELF features of the network in ``delf`` (:mod:`delfx.run_delf`);
their PCA, when the pipeline has one, is learned on the independent images of 1-2 only.
``global+local`` takes the ranking of a global descriptor (``global_opts``) as its first stage
and verifies its top ``rerank_num`` with DELF features, as DELG does; ``global+asmk`` ranks by
the sum of the DELF ASMK* score and the global cosine similarity (weighted by
``fusion_weight``). ``global+sift-sv`` and ``global+sift-asmk`` do the same with RootSIFT. The
global stage applies every global option (scales, αQE, DBA, learned whitening) as ``global-gem``
does (:func:`delfx.run_global.global_ranking`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from delfx import build_index, extract, run_delf
from delfx.datasets.revisited import COMPANIONS, RetrievalDataset, unrelated_images
from delfx.errors import InputError
from delfx.evaluate import score, write_results
from delfx.features.sift import PRESETS as SIFT_PRESETS
from delfx.global_options import GlobalOptions
from delfx.index import local
from delfx.index.fusion import fuse_rankings
from delfx.index.storage import IndexDir, load_arrays, save_arrays
from delfx.io.cache_key import digest
from delfx.io.descriptor_sample import load_descriptors
from delfx.io.featurestore import FeatureReader
from delfx.run_presets import PIPELINES, PipelineConfig

logger = logging.getLogger(__name__)

MIN_UNRELATED = 10  # fewer unrelated images than this are too few to train a codebook


@dataclass
class _Run:
    root: Path
    dataset: RetrievalDataset
    work: Path
    workers: int | None
    progress: bool
    delf: run_delf.DelfOptions = field(default_factory=run_delf.DelfOptions)
    pca_from: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    distributor: Any = None

    def timed(self, key: str, t0: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def features(self, preset: str, root: Path | None = None, name: str | None = None) -> Path:
        root, name = root or self.root, name or self.dataset.name
        t0 = time.perf_counter()
        if preset.startswith("delf:"):
            if self.distributor is not None and self.distributor.sharded:
                logger.info("DELF features are extracted in this process (not sharded)")
            out = run_delf.delf_features(
                self.delf, preset[5:], root, name, self.work,
                pca_from=self.pca_from if self.delf.pca_dim else None, progress=self.progress,
            )  # fmt: skip
        else:
            conf = extract.ExtractConfig(sift=SIFT_PRESETS[preset], workers=self.workers)
            out = self.work / f"features-sift-{preset}-{name}.h5"
            extract.main(
                conf, out, root=root, dataset=name, progress=self.progress,
                distributor=self.distributor,
            )  # resumes  # fmt: skip
        self.timed("extract", t0)
        return out


def _training_set(
    run: _Run, pipe: PipelineConfig, feats: Path, codebook_from: str | None
) -> tuple[np.ndarray, str]:
    """Descriptors to train the codebook on, and a description of their source."""
    db_names = [f"db/{n}" for n in run.dataset.images]
    source_file, names, label = feats, db_names, ""
    if codebook_from == "database" or (codebook_from is None and pipe.codebook_on_database):
        label = f"database of {run.dataset.name} (the seed's setting; results are optimistic)"
        logger.warning("training the codebook on the test database itself: %s", label)
    elif codebook_from is not None and codebook_from.endswith(".h5"):
        source_file, names, label = Path(codebook_from), None, f"features {codebook_from}"
    elif codebook_from is not None or COMPANIONS.get(run.dataset.name, "") in _present(run.root):
        if codebook_from is not None:
            if ":" not in codebook_from:
                raise InputError(
                    f"--codebook-from '{codebook_from}': expected ROOT:NAME, "
                    "a features .h5 file, or 'database'"
                )
            other_root, other = codebook_from.rsplit(":", 1)
        else:
            other_root, other = str(run.root), COMPANIONS[run.dataset.name]
        source_file = run.features(pipe.features, Path(other_root), other)
        names, label = None, f"dataset {other}"
    else:
        unrelated = unrelated_images(run.dataset)
        if len(unrelated) < MIN_UNRELATED:
            raise InputError(
                f"{run.dataset.name}: only {len(unrelated)} images unrelated to every query; "
                "pass --codebook-from ROOT:NAME (independent images) or --codebook-from database"
            )
        names = [db_names[i] for i in unrelated]
        label = f"{len(unrelated)} images of {run.dataset.name} unrelated to every query"
    with FeatureReader(source_file) as reader:
        if names is None:
            names = reader.names("db/")
        desc, _ = load_descriptors(reader, names, pipe.index.train_per_image, pipe.index.seed)
    return desc, label


def _present(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()


def main(
    pipeline: str,
    root: str | os.PathLike[str],
    dataset: str,
    work: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    rerank_num: int | None = None,
    codebook_from: str | None = None,
    drop_junk: bool = False,
    model: str | None = None,
    matches: str | None = None,
    index_overrides: dict[str, Any] | None = None,
    workers: int | None = None,
    delf: run_delf.DelfOptions | None = None,
    global_opts: GlobalOptions | None = None,
    whiten_pairs: str | None = None,
    fusion_weight: float | None = None,
    progress: bool = True,
    distributor: Any = None,
) -> Path:
    """Run a named pipeline and write the results JSON.

    Args:
        pipeline: a key of :data:`PIPELINES`.
        root: datasets root.
        dataset: dataset name.
        work: cache folder for stage outputs.
        output: results JSON path.
        rerank_num: verify this many candidates per query (None: the pipeline's default).
        codebook_from: see the module docstring.
        drop_junk: drop the ground truth's junk images before choosing what to verify.
        model: verification model (``homography``, ``fundamental``, ``affine``).
        matches: tentative matches (``ratio``, ``words``, ``both``).
        index_overrides: replace index settings (e.g. ``{"n_words": 1024}`` for small data).
        workers: extraction processes and verification threads.
        delf: the network and settings of DELF features (``delf-*`` and ``global+local``).
        global_opts: the global descriptor of the hybrid pipelines (default: ``delf.model``);
            its scales, αQE and DBA are applied as in ``global-gem``.
        whiten_pairs: learn the global descriptor's whitening (Lw) from this training set's
            pairs (``ROOT:NAME``), as ``global-gem-whiten`` does.
        fusion_weight: weight of the global similarity in fused pipelines (None: the
            pipeline's default).
        progress: progress bars.
        distributor: extract SIFT features in shards, here or on Ray
            (:class:`~delfx.cluster.distributor.Distributor`; the feature file is the same).

    Returns:
        The results JSON path.
    """
    if pipeline not in PIPELINES:
        raise InputError(f"pipeline '{pipeline}': expected one of {', '.join(PIPELINES)}")
    pipe = PIPELINES[pipeline]
    if index_overrides:
        pipe = replace(pipe, index=replace(pipe.index, **index_overrides))
    rconf = pipe.rerank if rerank_num is None else replace(pipe.rerank, rerank_num=rerank_num)
    rconf = replace(rconf, drop_junk=drop_junk, workers=workers or rconf.workers)
    if model is not None:
        rconf = replace(rconf, ransac=replace(rconf.ransac, model=model, min_inliers=None))
    if matches is not None:
        rconf = replace(rconf, matches=matches)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ds = RetrievalDataset(root, dataset)
    delf = delf if delf is not None else run_delf.DelfOptions()
    if pipe.pca_dim is not None and delf.pca_dim is None:
        delf = replace(delf, pca_dim=pipe.pca_dim)
    pca_from = _independent(Path(root), ds.name, codebook_from)
    run = _Run(Path(root), ds, work, workers, progress, delf, pca_from, distributor=distributor)
    feats = run.features(pipe.features)
    db_names = [f"db/{n}" for n in run.dataset.images]
    q_names = [f"query/{n}" for n in run.dataset.queries]
    index_dir = None if pipe.global_first else _local_index(run, pipe, feats, codebook_from)
    # one engine for the run: its index ranks, its feature file verifies
    with _searcher(pipeline, index_dir, feats, db_names) as searcher:
        extra: dict[str, Any] = {}
        if index_dir is not None:
            ranks, scores, extra = _local_ranking(run, searcher, index_dir, q_names)
        if pipe.global_first or pipe.fuse_global:
            from delfx import run_global  # needs torch

            gopts = global_opts if global_opts is not None else GlobalOptions(model=delf.model)
            g_ranks, g_scores, g_method, g_extra = run_global.global_ranking(
                "global-gem-whiten" if whiten_pairs is not None else "global-gem",
                run.dataset,
                work,
                gopts,
                whiten_pairs=whiten_pairs,
                progress=progress,
                timings=run.timings,
            )
            if pipe.fuse_global:
                t0 = time.perf_counter()
                weight = pipe.fusion_weight if fusion_weight is None else fusion_weight
                ranks, scores = fuse_rankings(
                    ranks, scores, g_ranks, g_scores, len(db_names), weight
                )
                run.timed("search", t0)
                extra["fusion_weight"] = weight
            else:
                ranks, scores = g_ranks, g_scores
            extra["global_model"] = g_extra.pop("model_meta")
            extra.update(global_method=g_method, global_options=asdict(gopts), **g_extra)
        run.timings["search_per_query_ms"] = 1000 * run.timings.get("search", 0.0) / len(q_names)

        method = pipeline
        if rconf.rerank_num > 0:
            t0 = time.perf_counter()
            junk = [t.junk for t in run.dataset.truth]
            ranks, _ = searcher.verify_stored(
                rconf, ranks, scores, q_names, junk=junk, progress=progress
            )
            run.timed("verify", t0)
            run.timings["verify_per_query_ms"] = 1000 * run.timings["verify"] / len(q_names)
            method = f"{pipeline}+sv{rconf.rerank_num}"

    t0 = time.perf_counter()
    scores_by_protocol = score(run.dataset, list(ranks))
    run.timed("evaluate", t0)
    return write_results(
        output,
        run.dataset,
        method,
        scores_by_protocol,
        run.timings,
        pipeline={
            "name": pipeline,
            "features": pipe.features,
            "index": asdict(pipe.index),
            "rerank": {**asdict(rconf), "ransac": asdict(rconf.ransac)},
            **({"delf": asdict(delf)} if pipe.features.startswith("delf:") else {}),
        },
        **extra,
    )


def _independent(root: Path, name: str, codebook_from: str | None) -> str | None:
    """``ROOT:NAME`` of an independent dataset (``--codebook-from`` or the companion), or None."""
    if codebook_from is not None and ":" in codebook_from and not codebook_from.endswith(".h5"):
        return codebook_from
    other = COMPANIONS.get(name)
    if codebook_from is None and other is not None and other in _present(root):
        return f"{root}:{other}"
    return None


def _local_index(run: _Run, pipe: PipelineConfig, feats: Path, codebook_from: str | None) -> Path:
    """Build the local index of a run, unless the work folder has it; returns its folder."""
    dataset = run.dataset.name
    db_names = [f"db/{n}" for n in run.dataset.images]
    key = digest(
        [asdict(pipe.index), pipe.features, pipe.codebook_on_database, codebook_from, feats.name]
    )
    index_dir = run.work / f"index-{pipe.index.kind}-{dataset}-{key}"
    if not IndexDir(index_dir).exists():
        _ranks_file(index_dir).unlink(missing_ok=True)  # ranks of an earlier build of this index
        t0 = time.perf_counter()
        train, source = _training_set(run, pipe, feats, codebook_from)
        run.timed("codebook_data", t0)
        t0 = time.perf_counter()
        build_index.build(
            pipe.index,
            feats,
            index_dir,
            train_descriptors=train,
            train_source=source,
            centroids=_shared_codebook(run, pipe, train, [pipe.features, source, feats.name]),
            names=db_names,
            allow_empty=True,
            overwrite=True,
            progress=run.progress,
        )
        run.timed("index", t0)
    return index_dir


def _ranks_file(index_dir: Path) -> Path:
    # beside the index, not in it: an index folder holds only the index's own files
    return index_dir.parent / f"ranks-{index_dir.name}.npz"


def _local_ranking(
    run: _Run, searcher: Any, index_dir: Path, q_names: list[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rank every query with the run's index (cached beside it): ``(ranks, scores, info)``."""
    index = searcher.index
    db_names = [f"db/{n}" for n in run.dataset.images]
    if searcher.names != db_names:
        raise InputError(f"{index_dir}: indexed images differ from {run.dataset.name}'s database")
    ranks_path = _ranks_file(index_dir)
    if ranks_path.is_file():
        arrays = load_arrays(ranks_path)
        ranks, scores = arrays["ranks"], arrays["scores"]
    else:
        t0 = time.perf_counter()
        ranks, scores = searcher.rank_stored(q_names, progress=run.progress)
        run.timed("search", t0)
        save_arrays(ranks_path, {"ranks": ranks, "scores": scores})
    info = {
        "codebook": IndexDir(index_dir).manifest().get("train_source"),
        "index_bytes_per_image": index.nbytes() / max(index.n_images, 1),
    }
    return ranks, scores, info


def _searcher(pipeline: str, index_dir: Path | None, feats: Path, db_names: list[str]) -> Any:
    """The engine of one run: its index (None for a global shortlist) over the run's features."""
    from delfx.engine.searcher import Searcher
    from delfx.engine.spec import named

    return Searcher.from_index(index_dir, [feats], spec=named(pipeline), names=db_names)


def _shared_codebook(
    run: _Run, pipe: PipelineConfig, train: np.ndarray, data_key: list[Any]
) -> np.ndarray | None:
    """The flat codebook of an HE or ASMK* index, trained once per training set and settings
    and reused by every index kind that uses one (cached in the work folder)."""
    if pipe.index.kind == "voctree":
        return None
    key = digest([local.codebook_key(pipe.index), *data_key, int(train.shape[0])])
    path = run.work / f"codebook-{key}.npz"
    if path.is_file():
        centroids = load_arrays(path)["centroids"]
        if centroids.shape == (pipe.index.n_words, train.shape[1]):
            logger.info("codebook reused from %s", path)
            return centroids
    centroids = local.train_codebook(pipe.index, train)
    save_arrays(path, {"centroids": centroids})
    return centroids

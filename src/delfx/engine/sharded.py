"""A collection's new photos into feature shards: one in this process, or many (``--shards``,
``--shard I/N``, ``--ray``), extracted and indexed apart.

The photos of a create (or an add) are planned in shards (:mod:`delfx.cluster.plan`); shard
``i`` becomes the collection's feature shard ``features-<next + i>.h5`` (and its ``global-``
file), so nothing is copied afterwards. Then the driver trains the codebook once, on the same
sample a single-process build draws (every image, in id order, across the shards); each worker
writes the postings of its shard as index segments with the collection's image ids; the driver
lists the segments in shard order and recomputes the statistics over all of them. The result
equals a single-process build: same features, postings, statistics and rankings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delfx.cluster import distributor as dist_mod
from delfx.cluster import plan as shard_plan
from delfx.cluster.distributor import SEQUENTIAL, Distributor
from delfx.cluster.work import EngineWork, IndexWork
from delfx.engine import manifest as mf
from delfx.engine.extractor import Extractor
from delfx.engine.spec import EngineSpec
from delfx.engine.vectors import describe_jobs, write_vectors
from delfx.errors import InputError
from delfx.extract import Job, _results, write_store
from delfx.index import local
from delfx.index.storage import IndexDir

logger = logging.getLogger(__name__)


@dataclass
class Extracted:
    """The shards of a run once extracted: their manifest entries and plan shards (after a
    ``--shard I/N`` slice the others may not be done: the run without ``--shard`` indexes)."""

    entries: list[dict[str, Any]]
    shards: list[shard_plan.Shard]


def extract(
    folder: Path,
    spec: EngineSpec,
    jobs: Sequence[Job],
    dist: Distributor,
    *,
    first_shard: int,
    first_id: int,
    workers: int,
    device: str,
    progress: bool,
    overwrite: bool = False,
) -> Extracted:
    """Extract ``jobs`` into feature (and global) shards ``first_shard, first_shard + 1, ...``.

    Args:
        folder: the collection folder.
        spec: the engine.
        jobs: the photos, sorted by name (their ids follow from ``first_id``).
        dist: where the shards run.
        first_shard: the number of the first shard file.
        first_id: the id of the first photo.
        workers: SIFT processes of a sequential run.
        device: torch device of each worker's global network.
        progress: progress bar.
        overwrite: replace an unfinished plan of other photos or settings.

    Returns:
        The shards.

    Raises:
        InputError: a shard not done after a run that is not a slice.
    """
    names = [j.name for j in jobs]
    if names != sorted(names):
        raise InputError(f"{folder}: photos must be given sorted by name")
    settings = {"spec": spec.to_dict(), "first_shard": first_shard, "first_id": first_id}
    n_workers = dist_mod.connect_workers(dist, device)
    default = dist_mod.n_shards(dist, len(names), n_workers)
    plan, fresh = shard_plan.settle(
        folder, names, settings, dist.shards, default, overwrite=overwrite
    )

    def files(i: int) -> tuple[Path, Path | None]:
        feats, vecs = mf.shard_names(first_shard + i)
        return folder / feats, (folder / vecs) if spec.uses_global else None

    shards = shard_plan.shards(jobs, plan["n_shards"], files, first_id=first_id)
    if fresh:
        for s in shards:
            shard_plan.clear(s)
    work = EngineWork(spec.to_dict(), processes=workers if dist.kind == "sequential" else 1)
    dist_mod.run(dist, work, shards, plan, device=device, label="extract", progress=progress)
    if dist.only is None and not all(shard_plan.is_done(s, plan) for s in shards):
        raise InputError(f"{folder}: a shard is not done; rerun the command to resume")
    entries = [
        {
            "features": s.features.name,
            "global": None if s.vectors is None else s.vectors.name,
            "n": len(s.jobs),
            "first": s.first_id,
        }
        for s in shards
    ]
    return Extracted(entries, shards)


def distributor_for(dist: Distributor | None, folder: Path) -> Distributor:
    """The run's distributor; an unfinished sharded run in ``folder`` is finished sharded."""
    dist = dist or SEQUENTIAL
    if not dist.sharded and (folder / shard_plan.PLAN).is_file():
        return Distributor(workers=dist.workers, shards=shard_plan.read_plan(folder)["n_shards"])
    return dist


def extract_new(
    folder: Path,
    spec: EngineSpec,
    jobs: Sequence[Job],
    dist: Distributor,
    *,
    number: int,
    first_id: int,
    resume: bool,
    workers: int | None,
    device: str,
    progress: bool,
    overwrite: bool = False,
) -> tuple[Extracted | None, list[dict[str, Any]]]:
    """Extract new photos into shard files from ``number`` on: one shard written in this
    process (the plain run), or the planned shards of ``dist``.

    Returns:
        ``(the sharded run, or None for the plain one; the manifest's shard entries)``.
    """
    n_proc = workers or os.cpu_count() or 1
    if dist.sharded:
        run = extract(
            folder, spec, jobs, dist, first_shard=number, first_id=first_id, workers=n_proc,
            device=device, progress=progress, overwrite=overwrite,
        )  # fmt: skip
        return run, run.entries
    extractor = Extractor(spec, device)
    feat_name, glob_name = mf.shard_names(number)
    _extract(extractor, jobs, folder / feat_name, resume=resume, workers=n_proc, progress=progress)
    names = [j.name for j in jobs]
    shard: dict[str, Any] = {
        "features": feat_name, "global": None, "n": len(names), "first": first_id,
    }  # fmt: skip
    if spec.uses_global:
        write_vectors(folder / glob_name, names, describe_jobs(extractor, jobs, progress))
        shard["global"] = glob_name
    return None, [shard]


def _extract(
    extractor: Extractor,
    jobs: Sequence[Job],
    out: Path,
    *,
    resume: bool,
    workers: int,
    progress: bool,
) -> None:
    n = max(1, min(workers, len(jobs) // 4 or 1))  # a pool pays off only for several photos
    write_store(
        out,
        extractor.store_config,
        jobs,
        lambda todo: _results(todo, extractor.sift, n),
        label="extract sift",
        source=f"{len(jobs)} photos",
        progress=progress,
        overwrite=not resume,
    )


def index(
    store: IndexDir,
    base: local.LocalIndex,
    model: str,
    shards: Sequence[shard_plan.Shard],
    dist: Distributor,
    *,
    batch_images: int,
    device: str,
    progress: bool,
) -> tuple[local.LocalIndex, list[str]]:
    """Index every shard's photos into ``store``: each worker writes its shard's segments.

    Args:
        store: the index folder (its model file is written).
        base: the index so far (empty after training, or the collection's before an add).
        model: the model file's name in ``store``.
        shards: the extracted shards, ids following ``base.n_images``.
        dist: where the shards run.
        batch_images: images per segment.
        device: unused by indexing; passed to the workers.
        progress: progress bar.

    Returns:
        ``(the index with every shard added, the new segment names in id order)``.
    """
    meta, arrays = local.state_of(base)
    work = IndexWork(store.path, model, meta, batch_images=batch_images)
    results = dist_mod.run(dist, work, shards, {}, device=device, label="index", progress=progress)
    segments = [name for r in results if r is not None for name in r["segments"]]
    added = [store.read_segment(name)[0] for name in segments]
    n_total = base.n_images + sum(len(s.jobs) for s in shards)
    full = local.restore(meta, arrays, [*local.segments_of(base), *added], n_total)
    return full, segments

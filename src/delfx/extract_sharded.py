"""Stage: a feature file extracted in shards, in this process, as an array job or on Ray.

``delfx extract sift --out F.h5 --shards N`` (or ``--ray ...``, or ``--shard I/N``) works in the
folder ``F.h5.shards/``: the plan (``shards.json``), then per shard ``features-NNNNN.h5`` and its
done marker. When every shard is done, the driver copies them, image by image, into ``F.h5``
(resumable like any feature file) and deletes the folder. A ``--shard I/N`` process does its
shard only; the same command without ``--shard`` then finishes (it skips the done shards).
The file is equal, image for image, to the one a single process writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from delfx.cluster import distributor as dist_mod
from delfx.cluster import plan as shard_plan
from delfx.cluster.distributor import Distributor
from delfx.errors import InputError
from delfx.extract import Job, write_store
from delfx.io.featureset import FeatureSet

logger = logging.getLogger(__name__)


def shard_folder(out: Path) -> Path:
    """The working folder of a sharded run writing ``out``."""
    return out.with_name(out.name + ".shards")


def _own(path: Path) -> bool:
    name = path.name
    return name == shard_plan.PLAN or (
        name.startswith("features-") and name.endswith((".h5", shard_plan.DONE_SUFFIX))
    )


def _remove_folder(folder: Path) -> None:
    """Delete a shard folder's own files, then the folder if nothing else is left in it."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for p in folder.iterdir():
        if (_own(p) or p.name.startswith(".")) and p.is_file() and not p.is_symlink():
            p.unlink()
    try:
        folder.rmdir()
    except OSError:
        logger.warning("%s: left in place (it holds files delfx did not write)", folder)


def plan_shards(
    out: Path,
    jobs: Sequence[Job],
    config: dict[str, Any],
    dist: Distributor,
    *,
    device: str = "cpu",
    overwrite: bool = False,
) -> tuple[list[shard_plan.Shard], dict[str, Any]]:
    """The shards of a run writing ``out`` (an unfinished plan of the same run is resumed)."""
    folder = shard_folder(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: not a folder (delfx keeps the shards of {out.name} there)")
    if overwrite and dist.only is None:
        _remove_folder(folder)
    names = sorted(j.name for j in jobs)
    if len(set(names)) != len(names):
        raise InputError(f"{out}: two images of one name in the run")
    n_workers = dist_mod.connect_workers(dist, device)
    default = dist_mod.n_shards(dist, len(names), n_workers)
    plan, fresh = shard_plan.settle(folder, names, config, dist.shards, default)
    shards = shard_plan.shards(
        jobs, plan["n_shards"], lambda i: (folder / f"features-{i:05d}.h5", None)
    )
    if fresh:
        for s in shards:
            shard_plan.clear(s)
    return shards, plan


def main(
    work: Any,
    out: str | Path,
    jobs: Sequence[Job],
    dist: Distributor,
    *,
    label: str,
    device: str = "cpu",
    half: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Extract ``jobs`` into ``out`` in shards.

    Args:
        work: the shard work (e.g. :class:`~delfx.cluster.work.SiftWork`).
        out: the feature file to write.
        jobs: every image of the run.
        dist: where the shards run.
        label: progress bar text.
        device: torch device of each worker's model.
        half: descriptors as float16.
        progress: progress bar.
        overwrite: start anew (the shard folder and ``out``) instead of resuming.

    Returns:
        ``out``; for a ``--shard I/N`` slice, the shard folder (``out`` is written by the run
        that finds every shard done).
    """
    out = Path(out)
    shards, plan = plan_shards(out, jobs, work.config, dist, device=device, overwrite=overwrite)
    dist_mod.run(dist, work, shards, plan, device=device, label=label, progress=progress)
    done = sum(shard_plan.is_done(s, plan) for s in shards)
    if dist.only is not None:
        logger.info("%s: %d of %d shards done", shard_folder(out), done, len(shards))
        return shard_folder(out)
    if done != len(shards):  # a shard of another process failed under us
        raise InputError(f"{shard_folder(out)}: {len(shards) - done} shard(s) not done; rerun")
    with FeatureSet([s.features for s in shards]) as feats:

        def copied(todo: list[Job]) -> Iterator[tuple[str, Any, dict[str, Any]]]:
            for job in todo:
                yield job.name, feats.get(job.name), feats.attrs(job.name)

        write_store(
            out, work.config, jobs, copied, label="merge shards", source=f"{len(shards)} shards",
            progress=progress, overwrite=overwrite, half=half,
        )  # fmt: skip
    _remove_folder(shard_folder(out))
    return out

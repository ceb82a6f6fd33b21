"""Where shards run: in this process, as one slice of an array job, or on a Ray cluster.

- ``sequential`` (the default): shards one after another in this process (each may still use
  a pool of extraction processes).
- ``--shard I/N``: this process does shard ``I`` of ``N`` and stops; the user (a SLURM array,
  say) launches the ``N`` processes, then runs the command once more without ``--shard`` to
  finish (that run skips the done shards).
- ``--ray auto|ADDRESS|local[N]``: one Ray actor per worker holds the model and takes shards
  until none is left (:mod:`delfx.cluster.ray_pool`).

The driver skips shards whose done marker matches the plan, so a killed run resumes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from delfx.cluster import plan as shard_plan
from delfx.cluster.plan import Shard
from delfx.errors import InputError

logger = logging.getLogger(__name__)

_LOCAL = re.compile(r"local(?:\[(\d+)\])?")


@dataclass(frozen=True)
class Distributor:
    """How a run's shards are spread.

    Attributes:
        kind: ``sequential`` or ``ray``.
        address: Ray: ``auto``, a cluster address, or None to start a local cluster.
        local_cpus: Ray, local cluster: its CPUs (``local[N]``; None: every core).
        workers: Ray actors (None: the cluster's CPUs over ``cpus_per_worker``, or its GPUs when
            a GPU device is given); sequential: extraction processes.
        shards: how many shards (None: the unfinished plan's, else one for a sequential run and
            :func:`~delfx.cluster.plan.default_shards` on Ray).
        only: ``I`` of ``--shard I/N``: this process does that shard alone.
        cpus_per_worker: CPUs a Ray actor asks for.
    """

    kind: str = "sequential"
    address: str | None = None
    local_cpus: int | None = None
    workers: int | None = None
    shards: int | None = None
    only: int | None = None
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("sequential", "ray"):
            raise InputError(f"distributor: unknown kind {self.kind!r} (sequential or ray)")
        if self.only is not None and (self.shards is None or not 0 <= self.only < self.shards):
            raise InputError(f"--shard: shard {self.only} of {self.shards}")
        if self.only is not None and self.kind == "ray":
            raise InputError("--shard and --ray go separately: one slice, or a Ray cluster")
        if self.shards is not None and self.shards < 1:
            raise InputError(f"--shards: must be >= 1, got {self.shards}")
        if self.cpus_per_worker <= 0:
            raise InputError(f"cpus per worker: must be > 0, got {self.cpus_per_worker}")

    @property
    def sharded(self) -> bool:
        """True when the run is split in shard files (any flag given)."""
        return self.kind == "ray" or self.shards is not None

    @property
    def label(self) -> str:
        """How the run is spread, for logs and reports."""
        if self.kind == "ray":
            return f"ray ({self.address or f'local[{self.local_cpus or 0}]'})"
        if self.only is not None:
            return f"shard {self.only}/{self.shards}"
        return "sequential"


SEQUENTIAL = Distributor()


def parse_ray(text: str) -> tuple[str | None, int | None]:
    """``--ray`` -> ``(address, local CPUs)``: ``auto`` / an address, or ``local[N]``.

    Raises:
        InputError: an empty value or ``local[0]``.
    """
    text = text.strip()
    if not text:
        raise InputError("--ray: expected auto, ADDRESS or local[N]")
    m = _LOCAL.fullmatch(text)
    if m:
        n = int(m.group(1)) if m.group(1) else None
        if n is not None and n < 1:
            raise InputError(f"--ray: local[{n}] needs at least one CPU")
        return None, n
    return text, None


def from_flags(
    ray: str | None = None,
    shard: tuple[int, int] | None = None,
    shards: int | None = None,
    workers: int | None = None,
) -> Distributor:
    """The distributor of the command-line flags ``--ray``, ``--shard I/N``, ``--shards``.

    Raises:
        InputError: ``--shard`` with ``--ray``, or ``--shards`` that disagrees with ``--shard``.
    """
    if shard is not None:
        if ray is not None:
            raise InputError("--shard and --ray go separately: one slice, or a Ray cluster")
        if shards is not None and shards != shard[1]:
            raise InputError(f"--shards {shards} disagrees with --shard {shard[0]}/{shard[1]}")
        return Distributor(shards=shard[1], only=shard[0], workers=workers)
    if ray is None:
        return Distributor(shards=shards, workers=workers)
    address, cpus = parse_ray(ray)
    return Distributor("ray", address, cpus, workers=workers, shards=shards)


def run(
    dist: Distributor,
    work: Any,
    shards: Sequence[Shard],
    plan: Mapping[str, Any],
    *,
    device: str = "cpu",
    label: str = "shards",
    progress: bool = True,
) -> list[dict[str, Any] | None]:
    """Run ``work`` on every shard not yet done; results in shard order (None: done before).

    Args:
        dist: where the shards run.
        work: a work of :mod:`delfx.cluster.work`.
        shards: the plan's shards.
        plan: the plan (done markers are checked against it).
        device: torch device of each worker's model.
        label: progress bar text.
        progress: progress bar (on a terminal), fed by the workers.
    """
    pick = [s for s in shards if dist.only is None or s.index == dist.only]
    todo = [s for s in pick if not (work.resumable and shard_plan.is_done(s, plan))]
    results: list[dict[str, Any] | None] = [None] * len(shards)
    if len(todo) < len(pick):
        logger.info("%s: %d of %d shards already done", label, len(pick) - len(todo), len(pick))
    if not todo:
        return results
    bar = tqdm(
        total=sum(len(s.jobs) for s in todo),
        desc=f"{label} [{dist.label}]",
        unit="img",
        leave=False,
        disable=None if progress else True,
    )
    with bar:
        if dist.kind == "ray":
            from delfx.cluster.ray_pool import run_on_ray

            done = run_on_ray(dist, work, todo, plan, device=device, report=bar.update)
        else:
            runner = work.open(device)
            done = [runner.run(s, plan, bar.update) for s in todo]
    for shard, result in zip(todo, done, strict=True):
        results[shard.index] = result
    return results


def connect_workers(dist: Distributor, device: str = "cpu") -> int:
    """How many workers the run has (on Ray this starts or joins the cluster)."""
    if dist.kind == "ray":
        from delfx.cluster.ray_pool import worker_count

        return worker_count(dist, device)
    return 1


def n_shards(dist: Distributor, n_images: int, n_workers: int) -> int:
    """The shard count of a new plan: the flag's, one for a plain sequential run, else the
    default for ``n_workers`` workers."""
    if dist.shards is not None:
        return dist.shards
    if dist.kind == "sequential":
        return 1
    return shard_plan.default_shards(n_images, n_workers)

"""Shards on Ray: one actor per worker holds the model and takes shards until none is left.

The driver starts a local cluster (``local[N]``) or joins one (``auto``, an address) once per
process, and it stays up until the process exits; when Ray is already initialised in the
process (a test session, a notebook) that connection is used. Each actor asks for
``cpus_per_worker`` CPUs, and one GPU when the device is a GPU (Ray then shows the actor only
its own GPU, so ``cuda:N`` becomes ``cuda``). Actors report each finished image through a
Ray queue to the driver's progress bar.

A worker process that dies (killed, out of memory, its node lost) is restarted by Ray and its
shard retried; the retry resumes the shard's feature file, so the images stored before the
death are not extracted again. When a worker cannot be restarted (after :data:`RESTARTS`), the
run stops with one line naming the shard; rerunning the command resumes it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from delfx.cluster.distributor import Distributor
from delfx.cluster.plan import Shard
from delfx.errors import DelfxError

logger = logging.getLogger(__name__)

#: Restarts of a dead actor, and retries of the shard it held, before the run gives up.
RESTARTS = 3
INSTALL = "--ray needs Ray: pip install 'delfx[cluster]'"


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        DelfxError: Ray is not installed (one line saying what to install).
    """
    try:
        import ray
    except ImportError:
        raise DelfxError(INSTALL) from None
    return ray


def _is_gpu(device: str) -> bool:
    return device.startswith("cuda")


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) that no server answers at once, where
    ``ray.init`` would wait for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DelfxError(
            f"--ray {address}: no Ray head answers there ({reason}); start one with "
            "'ray start --head' or check the address"
        ) from None


def connect(dist: Distributor) -> Any:
    """Start or join the cluster once per process (it stays up until the process exits); the
    ``ray`` module.

    Raises:
        DelfxError: Ray missing, or no cluster at the address.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from a closed host
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    try:
        if dist.address is None:
            ray.init(num_cpus=dist.local_cpus or os.cpu_count() or 1, **kwargs)
        else:
            if dist.address != "auto":
                _check_reachable(dist.address)
            ray.init(address=dist.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = dist.address or "a local cluster"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DelfxError(f"--ray {where}: cannot start or join Ray ({first})") from None
    return ray


def worker_count(dist: Distributor, device: str = "cpu") -> int:
    """Actors the cluster holds: ``dist.workers``, else its GPUs (GPU device) or its CPUs over
    ``cpus_per_worker``. Starts or joins the cluster (it stays up for the run)."""
    ray = connect(dist)
    if dist.workers is not None:
        return dist.workers
    res = ray.cluster_resources()
    if _is_gpu(device):
        n = int(res.get("GPU", 0))
        if n < 1:
            raise DelfxError(f"--ray: device {device} asked for, but the cluster has no GPU")
        return n
    return max(1, int(res.get("CPU", 1) // dist.cpus_per_worker))


class _ShardActor:
    """The Ray actor: builds the work's runner once, then runs shards."""

    def __init__(self, work: Any, device: str, cpus: float) -> None:
        import cv2

        threads = max(1, int(cpus))
        cv2.setNumThreads(threads)
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
        self.runner = work.open("cuda" if _is_gpu(device) else device)

    def run(self, shard: Shard, plan: Mapping[str, Any], queue: Any) -> dict[str, Any]:
        return self.runner.run(shard, plan, queue.put_nowait)


def _cause(exc: Exception, ray: Any) -> BaseException:
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, DelfxError):
        return exc.cause
    return exc


def run_on_ray(
    dist: Distributor,
    work: Any,
    shards: Sequence[Shard],
    plan: Mapping[str, Any],
    *,
    device: str,
    report: Callable[[int], Any],
) -> list[dict[str, Any]]:
    """Run ``work`` on ``shards`` with one actor per worker; results in ``shards`` order.

    Raises:
        DelfxError: a worker's input error (the worker's own message), or a shard whose
            workers kept dying (rerun to resume).
    """
    ray = connect(dist)
    from ray.util.queue import Queue

    n_actors = min(worker_count(dist, device), len(shards))
    gpus = 1 if _is_gpu(device) else 0
    actor_cls = ray.remote(
        num_cpus=dist.cpus_per_worker,
        num_gpus=gpus,
        max_restarts=RESTARTS,
        max_task_retries=RESTARTS,
    )(_ShardActor)
    queue = Queue(actor_options={"num_cpus": 0})
    actors = [actor_cls.remote(work, device, dist.cpus_per_worker) for _ in range(n_actors)]
    logger.info("ray: %d shards on %d workers", len(shards), n_actors)
    results: dict[int, dict[str, Any]] = {}
    pending: dict[Any, tuple[int, Any]] = {}
    todo = deque(range(len(shards)))
    free = list(actors)

    def drain() -> None:
        n = queue.qsize()
        if n:
            report(sum(queue.get_nowait_batch(n)))

    try:
        while todo or pending:
            while free and todo:
                i, actor = todo.popleft(), free.pop()
                pending[actor.run.remote(shards[i], dict(plan), queue)] = (i, actor)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
            drain()
            for ref in ready:
                i, actor = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = _cause(exc, ray)
                    if isinstance(cause, DelfxError):
                        raise cause from None
                    raise DelfxError(
                        f"shard {shards[i].index} ({shards[i].features.name}): the worker "
                        f"failed ({type(exc.cause).__name__}: {exc.cause}); rerun to resume"
                    ) from None
                except ray.exceptions.RayActorError as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    raise DelfxError(
                        f"shard {shards[i].index} ({shards[i].features.name}): its worker died "
                        f"and was not restarted ({first}); rerun the command to resume"
                    ) from None
                free.append(actor)
        drain()
    finally:
        for actor in actors:
            ray.kill(actor)
        ray.kill(queue.actor)
    return [results[i] for i in range(len(shards))]

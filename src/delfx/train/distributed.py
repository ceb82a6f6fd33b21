"""Multi-process training with :class:`~torch.nn.parallel.DistributedDataParallel`.

Multi-GPU / multi-process: launch the ordinary training command under ``torchrun``::

    torchrun --nproc_per_node 2 -m delfx train global EXPORT_DIR --root DATA --device cuda ...

Every process reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun``) and joins a
process group: NCCL on ``cuda:<LOCAL_RANK>`` for a CUDA device, gloo for ``--device cpu``. All
ranks use the same seed, so they sample the same queries and pool; each rank describes a disjoint
contiguous shard of those images and the descriptors are all-gathered, so every rank mines the
same hard negatives. Each rank then trains on a strided shard of the tuples (padded to a multiple
of the world size by repeating the first ones) and DDP averages the gradients: one step is the
mean over ranks of each rank's summed tuple loss, i.e. ``world_size * batch_size`` tuples per
step. Only rank 0 evaluates and writes checkpoints and ``log.csv``. Without ``WORLD_SIZE`` (or
with ``WORLD_SIZE=1``) everything is single-process and unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from delfx.errors import InputError

logger = logging.getLogger(__name__)

SeqT = TypeVar("SeqT", bound=Sequence[Any] | np.ndarray)


def active() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(
    backend: str | None = None, timeout: timedelta = timedelta(hours=1)
) -> tuple[int, int, int]:
    """Join the process group described by ``torchrun``'s environment variables.

    Args:
        backend: ``nccl`` or ``gloo``; default NCCL when CUDA is available, else gloo.
        timeout: collective timeout (rank 0 evaluates while the others wait at a barrier).

    Returns:
        ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` without ``WORLD_SIZE`` (or with 1). An
        already initialised group is reused.

    Raises:
        InputError: ``WORLD_SIZE`` > 1 but ``RANK`` missing, or torch built without distributed.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if active():
        rank, world = rank_world()
        return rank, world, local_rank
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    if "RANK" not in os.environ:
        raise InputError("WORLD_SIZE > 1 but RANK is not set (launch with torchrun)")
    rank = int(os.environ["RANK"])
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    logger.info("rank %d of %d (local rank %d, %s)", rank, world, local_rank, backend)
    return rank, world, local_rank


def is_main() -> bool:
    """Whether this process is rank 0 (always true single-process)."""
    return rank_world()[0] == 0


def _comm_device() -> torch.device:
    """Where tensors for collectives live: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op single-process)."""
    if not active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def shard(indices: SeqT, rank: int, world: int, *, contiguous: bool = True) -> SeqT:
    """This rank's part of ``indices``: together the ranks' parts hold every item exactly once.

    Contiguous parts (sizes differ by at most one, larger first) concatenate back in rank order;
    strided parts are ``indices[rank::world]``.
    """
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"shard: need 0 <= rank < world, got rank {rank}, world {world}")
    if not contiguous:
        return indices[rank::world]  # type: ignore[return-value]
    base, extra = divmod(len(indices), world)
    start = rank * base + min(rank, extra)
    return indices[start : start + base + (rank < extra)]  # type: ignore[return-value]


def pad_to_multiple(items: list[Any], world: int) -> list[Any]:
    """``items`` followed by its first ones repeated until the length is a multiple of ``world``.

    Every rank then gets as many items, so the ranks reach the same gradient syncs.
    """
    if not items:
        return list(items)
    out = list(items)
    while len(out) % world:
        out.extend(items[: world - len(out) % world])
    return out


def all_gather_array(arr: np.ndarray) -> np.ndarray:
    """Concatenate every rank's ``arr`` along axis 0, in rank order (``arr`` single-process).

    Ranks may hold different numbers of rows; the other dimensions and the dtype must agree.
    """
    arr = np.asarray(arr)
    if not active():
        return arr
    if arr.ndim < 1:
        raise InputError("all_gather_array: need an array with at least one dimension")
    dev = _comm_device()
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(dev)
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    if x.shape[0] < max(counts):
        pad = torch.zeros((max(counts) - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=dev)
        x = torch.cat([x, pad])
    parts = [torch.empty_like(x) for _ in counts]
    dist.all_gather(parts, x)
    return np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, counts, strict=True)])


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` when world size > 1.

    CPU modules get no ``device_ids``. Buffers are not re-broadcast each forward: batch-norm
    statistics are frozen during training and the ranks start from the same state.
    """
    if rank_world()[1] <= 1:
        return module
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def cleanup() -> None:
    """Destroy the default process group, if any."""
    if active():
        dist.destroy_process_group()


__all__ = [
    "active",
    "all_gather_array",
    "barrier",
    "cleanup",
    "init_from_env",
    "is_main",
    "pad_to_multiple",
    "rank_world",
    "shard",
    "wrap",
]

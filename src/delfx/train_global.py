"""Stage: fine-tune a global descriptor network on a training set (cirtorch / DELF-PyTorch).

Output folder ``EXPORT_ROOT/<export_name(conf)>/``::

    model_epoch<N>.pth   checkpoint after epoch N (network, optimizer, scheduler, RNG, ...)
    model_last.pth       the latest of those
    model_best.pth       the best one: mean medium mAP over the test datasets (or lowest loss)
    log.csv              epoch, loss, lr, per-dataset mAP E/M/H

Checkpoints load with :func:`delfx.models.global_net.load_checkpoint` (e.g. for
``delfx extract global``) and resume exactly with ``resume=``. Under ``torchrun`` the run is
data-parallel over the processes (see :mod:`delfx.train.distributed`); rank 0 evaluates and writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from delfx.errors import InputError
from delfx.evaluation.report import format_lines
from delfx.train import distributed
from delfx.train.loop import TrainConfig, Trainer, export_name

logger = logging.getLogger(__name__)

#: Called with ``(epoch, lines)`` after each evaluation; epoch 0 is the network before training.
EvalCallback = Callable[[int, list[str]], None]


def check_device(device: str | torch.device) -> torch.device:
    """Parse a torch device, refusing a CUDA device on a machine without CUDA.

    Raises:
        InputError: unparsable device, or CUDA requested but not available.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device '{device}': {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{device}': CUDA is not available here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) here"
            )
    return dev


def _report(epoch: int, results: dict, on_eval: EvalCallback | None) -> None:
    lines = [line for res in results.values() for line in format_lines(res)]
    logger.info("# %d", epoch)
    for line in lines:
        logger.info("%s", line)
    if on_eval is not None:
        on_eval(epoch, lines)


def main(
    conf: TrainConfig,
    export_root: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str],
    resume: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_eval: EvalCallback | None = None,
) -> Path:
    """Fine-tune for ``conf.epochs`` epochs (continuing from ``resume`` when given).

    Args:
        conf: training settings.
        export_root: folder that receives ``<export_name(conf)>/``.
        root: datasets root with the training set and the test datasets.
        resume: a ``model_epoch<N>.pth`` / ``model_last.pth`` to continue from.
        device: torch device, e.g. ``cpu`` or ``cuda:0``; under ``torchrun`` a CUDA device
            becomes ``cuda:<LOCAL_RANK>``.
        progress: show progress bars (rank 0 only).
        on_eval: called with ``(epoch, seed lines)`` after each evaluation (on rank 0).

    Returns:
        The export folder.

    Raises:
        InputError: bad training set, test dataset, checkpoint or device (the message names it).
    """
    export_dir = Path(export_root) / export_name(conf)

    def build(dev: torch.device, show: bool) -> Trainer:
        return Trainer(conf, export_dir, root=root, device=dev, progress=show)

    return run_stage(build, resume, device, progress, on_eval)


def run_stage(
    build: Callable[[torch.device, bool], Trainer],
    resume: str | os.PathLike[str] | None,
    device: str | torch.device,
    progress: bool,
    on_eval: EvalCallback | None,
) -> Path:
    """The training stage around a trainer: device, process group, epochs, evaluations, logs.

    Args:
        build: makes the :class:`~delfx.train.loop.Trainer` from ``(device, progress)``; called
            once the device is checked and (under ``torchrun``) the process group is set up.
        resume: a checkpoint to continue from; otherwise epoch 0 (the network before training)
            is evaluated first.
        device: torch device; under ``torchrun`` a CUDA device becomes ``cuda:<LOCAL_RANK>``.
        progress: show progress bars (rank 0 only).
        on_eval: called with ``(epoch, seed lines)`` after each evaluation (on rank 0).

    Returns:
        The trainer's export folder.
    """
    dev = check_device(device)
    owned = not distributed.active()
    rank, world, local_rank = distributed.init_from_env("nccl" if dev.type == "cuda" else "gloo")
    owned = owned and world > 1
    if world > 1 and dev.type == "cuda":
        dev = torch.device(f"cuda:{local_rank}")
    try:
        return _run(build(dev, progress and rank == 0), resume, on_eval)
    finally:
        if owned:
            distributed.cleanup()


def _run(
    trainer: Trainer, resume: str | os.PathLike[str] | None, on_eval: EvalCallback | None
) -> Path:
    conf = trainer.conf
    main_rank = distributed.is_main()
    logger.info(
        "training %s (%s) on %s, export to %s",
        conf.arch,
        type(trainer.net).__name__,
        trainer.device,
        trainer.export_dir,
    )
    if resume is not None:
        trainer.resume(resume)
    elif conf.test_datasets and main_rank:
        results = trainer.evaluate()
        trainer.log_initial(results)  # epoch 0 in log.csv: the network before training
        _report(0, results, on_eval)
    start = time.perf_counter()
    while trainer.epoch < conf.epochs:
        t0 = time.perf_counter()
        lr = trainer.lr
        loss = trainer.train_epoch()
        results = trainer.evaluate() if trainer.due_for_test() and main_rank else {}
        best = trainer.end_epoch(loss, results)
        distributed.barrier()
        if not main_rank:
            continue
        logger.info(
            "epoch %d/%d: loss %.6g, lr %.3g, %.1f s%s",
            trainer.epoch,
            conf.epochs,
            loss,
            lr,
            time.perf_counter() - t0,
            " (best)" if best else "",
        )
        if results:
            _report(trainer.epoch, results, on_eval)
    logger.info(">> Training finished in %.1f s", time.perf_counter() - start)
    return trainer.export_dir

"""Stage: train an attention score function on a frozen global network (the seed's attention step).

The global network fine-tuned by :mod:`delfx.train_global` is loaded and frozen; an
:class:`~delfx.models.attention.AttentionNet` (``kind="learned"``: 1x1 conv C->C, ReLU, 1x1 conv
C->1, softplus) weights its feature map before pooling, and only that head is trained, with the
same tuples, hard-negative mining, loss, optimizer settings and schedule as global fine-tuning
(:class:`~delfx.train.loop.Trainer`, :func:`~delfx.train_global.run_stage`).

Output folder ``EXPORT_ROOT/<export_name(conf)>/`` holds the files that
:mod:`delfx.train_global` writes (``model_epoch<N>.pth``, ``model_last.pth``, ``model_best.pth``,
``log.csv``); the checkpoints load with :func:`delfx.models.attention.load_attention` and resume
exactly with ``resume=``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from delfx.errors import InputError
from delfx.models.attention import AttentionNet, has_attention
from delfx.models.global_net import load_checkpoint
from delfx.train.loop import TrainConfig, Trainer, export_name
from delfx.train_global import EvalCallback, run_stage

logger = logging.getLogger(__name__)

#: File name of the global model looked up in a ``param_directory`` folder.
BASE_NAME = "model_best.pth"


def find_base_model(param_directory: str | os.PathLike[str], conf: TrainConfig) -> Path:
    """The global model's checkpoint given by ``param_directory``.

    ``param_directory`` is (a) a checkpoint file, (b) a folder holding ``model_best.pth``, or
    (c) a folder holding ``<export_name(conf)>/model_best.pth``, the layout the seed's
    ``--param-directory ./models`` refers to when given the fine-tuning flags.

    Raises:
        InputError: none of those exists; the one-line message names every path tried.
    """
    path = Path(param_directory)
    if path.is_file():
        return path
    tried = [path]
    if path.is_dir():
        tried = [path / BASE_NAME, path / export_name(conf) / BASE_NAME]
        for candidate in tried:
            if candidate.is_file():
                return candidate
    raise InputError(
        f"param directory {path}: no global model found (tried {', '.join(map(str, tried))})"
    )


def load_base(
    path: str | os.PathLike[str], block: str, seed: int, device: torch.device
) -> AttentionNet:
    """The global model at ``path``, frozen, under a new learned attention head on ``block``.

    The head is initialised from ``seed`` (so every rank of a data-parallel run builds the same).

    Raises:
        InputError: unreadable checkpoint, a model that already has attention, or a block the
            backbone lacks; the message names the file.
    """
    if has_attention(path):
        raise InputError(f"{path}: already has an attention head; give the fine-tuned global model")
    base = load_checkpoint(path, device)
    torch.manual_seed(seed)
    try:
        return AttentionNet(base, kind="learned", block=block)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def main(
    conf: TrainConfig,
    export_root: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str],
    param_directory: str | os.PathLike[str],
    block: str = "last",
    resume: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_eval: EvalCallback | None = None,
) -> Path:
    """Train the attention head for ``conf.epochs`` epochs (continuing from ``resume`` when given).

    Args:
        conf: training settings, as for global fine-tuning. ``arch``, ``pool``, ``whitening_dim``
            and ``pretrained`` do not build anything here (the base network comes from the
            checkpoint; a different architecture or pooling there is logged), but they name the
            export folder and the layout-(c) lookup, as in fine-tuning.
        export_root: folder that receives ``<export_name(conf)>/``.
        root: datasets root with the training set and the test datasets.
        param_directory: the fine-tuned global model: a checkpoint, a folder with
            ``model_best.pth``, or a folder with ``<export_name(conf)>/model_best.pth``.
        block: the trunk block attention sits on, ``"last"`` (the seed) or ``"block3"`` (DELF,
            ResNets only).
        resume: a ``model_epoch<N>.pth`` / ``model_last.pth`` of this stage to continue from.
        device: torch device, e.g. ``cpu`` or ``cuda:0``; under ``torchrun`` a CUDA device
            becomes ``cuda:<LOCAL_RANK>``.
        progress: show progress bars (rank 0 only).
        on_eval: called with ``(epoch, seed lines)`` after each evaluation (on rank 0); epoch 0 is
            the untrained head.

    Returns:
        The export folder.

    Raises:
        InputError: no global model at ``param_directory``, a bad block, training set, test
            dataset, checkpoint or device (the message names it).
    """
    base_path = find_base_model(param_directory, conf)
    export_dir = Path(export_root) / export_name(conf)
    logger.info("attention on %s (block %s)", base_path, block)

    def build(dev: torch.device, show: bool) -> Trainer:
        net = load_base(base_path, block, conf.seed, dev)
        for key, want in (("architecture", conf.arch), ("pooling", conf.pool)):
            if net.base.meta[key] != want:
                logger.warning("%s: %s is %s, not %s", base_path, key, net.base.meta[key], want)
        return Trainer(conf, export_dir, root=root, device=dev, progress=show, net=net)

    return run_stage(build, resume, device, progress, on_eval)

"""Fine-tuning a global descriptor on query-positive tuples (the cirtorch / DELF-PyTorch recipe).

Each epoch: draw ``query_size`` query-positive pairs and a pool of ``pool_size`` images, describe
them with the current network (eval mode, no grad) and mine ``neg_num`` hard negatives per query;
then, in train mode with batch-norm layers frozen (eval), forward every image of every tuple one by
one, stack the ``S x D`` descriptors, apply the tuple loss and back-propagate; the optimizer steps
every ``update_every`` batches of ``batch_size`` tuples; the learning rate decays exponentially
per epoch. :class:`Trainer` keeps the state and writes checkpoints and ``log.csv``. Under
``torchrun`` the trainer runs data-parallel (see :mod:`delfx.train.distributed`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from delfx.datasets.training import load_training
from delfx.errors import InputError
from delfx.io import atomic
from delfx.models.global_net import create
from delfx.train import distributed, state
from delfx.train.config import TrainConfig, export_name
from delfx.train.epoch import TupleForward, evaluate_dataset, mine_tuples, train_tuples
from delfx.train.losses import ContrastiveLoss, TripletLoss

logger = logging.getLogger(__name__)


def make_optimizer(net: nn.Module, conf: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD over ``net``'s trainable parameters.

    A network with ``trainable_parameters()`` (an :class:`~delfx.models.attention.AttentionNet`
    over a frozen base) gets one group of those. A global network gets its trunk, its pooling
    parameters (GeM ``p``, at ``10 * lr`` and no weight decay) and its whitening.
    """
    groups: list[dict[str, Any]]
    if callable(getattr(net, "trainable_parameters", None)):
        groups = [{"params": list(net.trainable_parameters())}]
    else:
        groups = [{"params": list(net.trunk.parameters())}]
        pool_params = list(net.pool.parameters())
        if pool_params:
            groups.append({"params": pool_params, "lr": conf.lr * 10, "weight_decay": 0.0})
        if net.whiten is not None:
            groups.append({"params": list(net.whiten.parameters())})
    if conf.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=conf.lr, momentum=conf.momentum, weight_decay=conf.weight_decay
        )
    return torch.optim.Adam(groups, lr=conf.lr, weight_decay=conf.weight_decay)


class Trainer:
    """The network, optimizer, scheduler, RNG, best metric and log of one fine-tuning run.

    Args:
        conf: the settings.
        export_dir: where checkpoints and ``log.csv`` go.
        root: datasets root holding the training set and the test datasets.
        device: torch device.
        progress: show progress bars.
        net: a prebuilt network to train (moved to ``device``), e.g. an
            :class:`~delfx.models.attention.AttentionNet`; by default a new global network from
            ``conf`` (``arch``, ``pool``, ``pretrained``, ``whitening_dim``).

    In an initialised process group (world size > 1) the network is trained through
    DistributedDataParallel on this rank's shard of each epoch's tuples, and only rank 0 writes
    checkpoints and ``log.csv``; every rank must build its trainer with the same settings.
    """

    def __init__(
        self,
        conf: TrainConfig,
        export_dir: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        progress: bool = False,
        net: nn.Module | None = None,
    ) -> None:
        self.conf = conf
        self.export_dir = Path(export_dir)
        self.root = Path(root)
        self.device = torch.device(device)
        self.progress = progress
        self.split = load_training(root, conf.training_dataset).train
        torch.manual_seed(conf.seed)
        self.rng = np.random.default_rng(conf.seed)
        fresh = net is None
        if net is None:
            net = create(conf.arch, conf.pool, conf.pretrained, conf.whitening_dim)
        self.net = net.to(self.device)
        if fresh and conf.pretrained == "none" and conf.bn_calibration > 0:
            self._calibrate()
        self.rank, self.world = distributed.rank_world()
        self.model = distributed.wrap(TupleForward(self.net), self.device)
        self.optimizer = make_optimizer(self.net, conf)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, conf.lr_decay)
        margin = conf.loss_margin
        self.criterion = (
            ContrastiveLoss(margin) if conf.loss == "contrastive" else TripletLoss(margin)
        )
        self.epoch = 0
        self.best: float | None = None
        self.fields = state.log_fields(conf.test_datasets)
        self.rows: list[dict[str, str]] = []

    def _calibrate(self) -> None:
        """Batch-norm statistics of a random network from training images (seeded sample)."""
        from delfx.io.images import read_image
        from delfx.train.bn_calibration import calibrate_batchnorm

        pick = np.random.default_rng(self.conf.seed + 1).permutation(len(self.split.images))
        paths = [self.split.images[i] for i in pick[: self.conf.bn_calibration]]
        calibrate_batchnorm(
            self.net,
            (read_image(p) for p in paths),
            self.conf.image_size,
            self.device,
            self.net.mean,
            self.net.std,
        )

    @property
    def lr(self) -> float:
        """Current learning rate of the first parameter group (the trunk, or the head)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self) -> float:
        """Mine tuples with the current network and train one epoch; returns the mean loss.

        With several ranks, each trains on a strided shard of the (padded) tuples and the
        returned loss is the mean over every rank's tuples.
        """
        tuples = mine_tuples(self.net, self.split, self.conf, self.rng, self.device)
        if self.world > 1:
            padded = distributed.pad_to_multiple(tuples, self.world)
            tuples = distributed.shard(padded, self.rank, self.world, contiguous=False)
        loss = train_tuples(
            self.net,
            self.split,
            tuples,
            self.criterion,
            self.optimizer,
            self.conf,
            self.device,
            self.progress,
            model=self.model,
        )
        if self.world > 1:
            sums = distributed.all_gather_array(np.array([[loss * len(tuples), len(tuples)]]))
            loss = float(sums[:, 0].sum() / max(sums[:, 1].sum(), 1.0))
        if not math.isfinite(loss):
            raise FloatingPointError(f"epoch {self.epoch + 1}: loss is {loss}")
        self.epoch += 1
        return loss

    def due_for_test(self) -> bool:
        """Whether the epoch just trained is evaluated (every ``test_freq``, and the last)."""
        return bool(self.conf.test_datasets) and (
            self.epoch % self.conf.test_freq == 0 or self.epoch == self.conf.epochs
        )

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Results dict per test dataset, at ``test_image_size``."""
        size = self.conf.test_image_size
        return {
            name: evaluate_dataset(self.net, self.root, name, size, self.device)
            for name in self.conf.test_datasets
        }

    def end_epoch(self, loss: float, results: dict[str, dict[str, Any]]) -> bool:
        """Decay the lr, log the epoch and save checkpoints; returns True for a new best.

        The best metric is the mean medium mAP over the test datasets (when evaluated), or the
        negated training loss when there are no test datasets. Only rank 0 writes files.
        """
        lr = self.lr
        self.scheduler.step()
        improved = False
        if results:
            metric = float(np.nanmean([state.medium_map(r) for r in results.values()]))
        else:
            metric = -loss if not self.conf.test_datasets else float("nan")
        if math.isfinite(metric) and (self.best is None or metric > self.best):
            self.best, improved = metric, True
        self.rows.append(state.log_row(self.epoch, loss, lr, results))
        extra = {
            "epoch": self.epoch,
            "loss": loss,
            "best": self.best,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": state.rng_state(self.rng, self.device),
            "config": asdict(self.conf),
            "log": [dict(r) for r in self.rows],  # log.csv as of this epoch, for resume
        }
        if self.rank != 0:
            return improved
        data = state.checkpoint_bytes(self.net, extra)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        # model_last.pth last: a run killed before it resumes from the epoch before and
        # writes this epoch's files again (model_best.pth included, if this one is the best)
        if improved:
            atomic.write_bytes(self.export_dir / "model_best.pth", data)
        atomic.write_bytes(self.export_dir / f"model_epoch{self.epoch}.pth", data)
        state.write_log(self.export_dir / "log.csv", self.fields, self.rows)
        atomic.write_bytes(self.export_dir / "model_last.pth", data)
        return improved

    def log_initial(self, results: dict[str, Any]) -> None:
        """Record the evaluation before training as ``log.csv``'s epoch-0 row (no loss)."""
        row = state.log_row(0, float("nan"), self.lr, results)
        self.rows.append({**row, "loss": ""})
        if self.rank == 0:
            self.export_dir.mkdir(parents=True, exist_ok=True)
            state.write_log(self.export_dir / "log.csv", self.fields, self.rows)

    def resume(self, path: str | os.PathLike[str]) -> int:
        """Restore network, optimizer, scheduler, epoch, best metric, RNG states and log rows.

        Continuing afterwards gives the same parameters as a run that was never interrupted.

        Returns:
            The epoch the checkpoint was saved after.
        """
        ckpt = state.read_checkpoint(path)
        extra = ckpt["extra"]
        saved = extra.get("config", {})
        changed = [k for k, v in asdict(self.conf).items() if k in saved and saved[k] != v]
        if changed:
            logger.warning("%s: resuming with changed settings: %s", path, ", ".join(changed))
        try:
            self.net.load_state_dict(ckpt["state_dict"], strict=True)
            self.optimizer.load_state_dict(extra["optimizer"])
            self.scheduler.load_state_dict(extra["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise InputError(f"{path}: does not fit this network or optimizer ({exc})") from None
        state.set_rng_state(extra["rng"], self.rng, self.device)
        self.epoch = int(extra["epoch"])
        self.best = None if extra.get("best") is None else float(extra["best"])
        # the log rows the checkpoint carries (log.csv may have been killed before its
        # last row); older checkpoints have none, then log.csv's rows up to this epoch
        old = extra.get("log") or state.read_log(self.export_dir / "log.csv")
        self.rows = [
            dict(r) for r in old if r.get("epoch", "").isdigit() and int(r["epoch"]) <= self.epoch
        ]
        if self.rank == 0:
            self.export_dir.mkdir(parents=True, exist_ok=True)
            state.write_log(self.export_dir / "log.csv", self.fields, self.rows)
        logger.info("%s: resumed after epoch %d", path, self.epoch)
        return self.epoch


__all__ = [
    "TrainConfig",
    "Trainer",
    "evaluate_dataset",
    "export_name",
    "make_optimizer",
    "mine_tuples",
    "train_tuples",
]

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from delfx.datasets.training import load_training
from delfx.errors import InputError
from delfx.io import atomic
from delfx.models.global_net import ARCHS, create
from delfx.train import distributed, state
from delfx.train.epoch import TupleForward, evaluate_dataset, mine_tuples, train_tuples
from delfx.train.losses import ContrastiveLoss, TripletLoss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning settings; the defaults are the seed's Ex1 (resnet18, GeM, contrastive 0.85).

    Attributes:
        training_dataset: training set name under the datasets root.
        test_datasets: benchmarks evaluated every ``test_freq`` epochs.
        arch: backbone, a key of :data:`~delfx.models.global_net.ARCHS`.
        pool: pooling (``mac``, ``spoc``, ``gem``, ``rmac``).
        loss: ``contrastive`` or ``triplet``.
        loss_margin: margin of the loss.
        optimizer: ``adam`` or ``sgd``.
        lr: learning rate of the trunk (and whitening); pooling parameters get ``10 * lr``.
        momentum: SGD momentum.
        weight_decay: weight decay (not applied to pooling parameters).
        lr_decay: per-epoch multiplicative learning-rate decay (``exp(-0.01)``).
        neg_num: hard negatives per tuple.
        query_size: query-positive pairs drawn per epoch.
        pool_size: images in the negative pool per epoch.
        batch_size: tuples per batch.
        update_every: batches whose gradients accumulate before an optimizer step.
        image_size: longer image side for training and mining.
        test_image_size: longer image side for evaluation (cirtorch tests at 1024).
        epochs: training epochs.
        test_freq: evaluate every this many epochs (and after the last one).
        whitening_dim: learned whitening ``nn.Linear`` output size, or None.
        pretrained: ``none``, ``imagenet`` or a backbone state-dict path.
        seed: seed of the torch and numpy generators.
        workers: threads that read images (0 reads in the main thread).
        bn_calibration: with ``pretrained == "none"``, set the frozen batch-norm statistics from
            this many training images before training (0: keep mean 0, variance 1); see
            :mod:`delfx.train.bn_calibration`.
    """

    training_dataset: str = "retrieval-SfM-120k"
    test_datasets: tuple[str, ...] = ("roxford5k", "rparis6k")
    arch: str = "resnet18"
    pool: str = "gem"
    loss: str = "contrastive"
    loss_margin: float = 0.85
    optimizer: str = "adam"
    lr: float = 5e-7
    momentum: float = 0.9
    weight_decay: float = 1e-6
    lr_decay: float = math.exp(-0.01)
    neg_num: int = 3
    query_size: int = 2000
    pool_size: int = 22000
    batch_size: int = 1
    update_every: int = 1
    image_size: int = 900
    test_image_size: int = 1024
    epochs: int = 100
    test_freq: int = 1
    whitening_dim: int | None = None
    pretrained: str = "imagenet"
    seed: int = 0
    workers: int = 0
    bn_calibration: int = 200

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(
                f"arch '{self.arch}': unknown architecture; use one of {', '.join(ARCHS)}"
            )
        if self.loss not in ("contrastive", "triplet"):
            raise InputError(f"loss '{self.loss}': expected contrastive or triplet")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer '{self.optimizer}': expected adam or sgd")
        sizes = ("query_size", "pool_size", "batch_size", "update_every", "image_size")
        for name in (*sizes, "test_image_size", "epochs", "test_freq"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.neg_num < 1 or self.workers < 0 or not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise InputError("neg_num >= 1, workers >= 0, lr > 0 and 0 < lr_decay <= 1 required")


def export_name(conf: TrainConfig) -> str:
    """The seed's export folder name, e.g. ``retrieval-SfM-120k_resnet18_gem_contrastive_m0.85_
    adam_lr5.0e-07_wd1.0e-06_nnum3_qsize2000_psize22000_bsize1_uevery1_imsize900``.

    As in cirtorch, ``_notpretrained`` follows the pooling for ``pretrained == "none"`` and
    ``_whiten`` for a learned whitening.
    """
    name = f"{conf.training_dataset}_{conf.arch}_{conf.pool}"
    name += "_notpretrained" if conf.pretrained == "none" else ""
    name += "_whiten" if conf.whitening_dim else ""
    name += f"_{conf.loss}_m{conf.loss_margin:.2f}"
    name += f"_{conf.optimizer}_lr{conf.lr:.1e}_wd{conf.weight_decay:.1e}"
    name += f"_nnum{conf.neg_num}_qsize{conf.query_size}_psize{conf.pool_size}"
    return name + f"_bsize{conf.batch_size}_uevery{conf.update_every}_imsize{conf.image_size}"


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
        }
        if self.rank != 0:
            return improved
        data = state.checkpoint_bytes(self.net, extra)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(self.export_dir / f"model_epoch{self.epoch}.pth", data)
        atomic.write_bytes(self.export_dir / "model_last.pth", data)
        if improved:
            atomic.write_bytes(self.export_dir / "model_best.pth", data)
        state.write_log(self.export_dir / "log.csv", self.fields, self.rows)
        return improved

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
        old = state.read_log(self.export_dir / "log.csv")
        self.rows = [
            r for r in old if r.get("epoch", "").isdigit() and int(r["epoch"]) <= self.epoch
        ]
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

"""Fine-tuning settings and the seed's export folder name (no torch needed to read them)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from delfx.errors import InputError
from delfx.models.archs import ARCHS


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
        # named as the flags of delfx train (and the dashed keys of a pipeline file)
        sizes = ("query_size", "pool_size", "batch_size", "update_every", "image_size")
        least = {n: 1 for n in (*sizes, "test_image_size", "epochs", "test_freq", "neg_num")}
        least.update(workers=0, seed=0, bn_calibration=0)
        if self.whitening_dim is not None:
            least["whitening_dim"] = 1
        for name, low in least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputError(f"{_flag(name)} must be an integer, got {value!r}")
            if value < low:
                raise InputError(f"{_flag(name)} must be at least {low}, got {value}")
        reals = {
            "lr": (lambda v: v > 0, "> 0"),
            "lr_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
            "loss_margin": (lambda v: v > 0, "> 0"),
            "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
            "weight_decay": (lambda v: v >= 0, ">= 0"),
        }
        for name, (ok, rule) in reals.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InputError(f"{_flag(name)} must be a number, got {value!r}")
            if not (math.isfinite(value) and ok(value)):
                raise InputError(f"{_flag(name)} must be {rule}, got {value}")


def _flag(field_name: str) -> str:
    return field_name.replace("_", "-")


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


__all__ = ["TrainConfig", "export_name"]

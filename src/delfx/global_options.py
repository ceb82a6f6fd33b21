"""Settings of the global-descriptor pipelines, importable without torch (for the CLI and demo)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from delfx.errors import InputError


@dataclass(frozen=True)
class GlobalOptions:
    """Settings of a global-descriptor run.

    Attributes:
        model: checkpoint path or architecture name.
        pretrained: backbone weights for an architecture (``imagenet``, ``none``, a path).
        pooling: pooling for an architecture (a checkpoint carries its own).
        image_size: longer side of the images given to the network.
        scales: image scales, averaged (``1,0.707,0.5`` is the usual multi-scale setting).
        qe: αQE neighbours (0: off).
        dba: database-side augmentation neighbours (0: off).
        alpha: αQE / DBA weight exponent.
        device: torch device.
    """

    model: str = "resnet50"
    pretrained: str = "imagenet"
    pooling: str = "gem"
    image_size: int = 1024
    scales: tuple[float, ...] = (1.0,)
    qe: int = 0
    dba: int = 0
    alpha: float = 3.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        # named as the flags of delfx run
        for name, value, low in (
            ("image-size", self.image_size, 1),
            ("qe", self.qe, 0),
            ("dba", self.dba, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputError(f"{name} must be an integer, got {value!r}")
            if value < low:
                raise InputError(f"{name} must be at least {low}, got {value}")
        scales = tuple(self.scales)
        if not scales or not all(_positive(s) for s in scales):
            raise InputError(f"multiscale must be positive numbers, got {list(scales)}")
        if not (_real(self.alpha) and math.isfinite(self.alpha) and self.alpha >= 0):
            raise InputError(f"alpha must be a number >= 0, got {self.alpha!r}")


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive(value: object) -> bool:
    return _real(value) and math.isfinite(value) and value > 0  # type: ignore[arg-type]


GLOBAL_PIPELINES = ("global-gem", "global-gem-whiten")


__all__ = ["GLOBAL_PIPELINES", "GlobalOptions"]

"""Settings of the global-descriptor pipelines, importable without torch (for the CLI and demo)."""

from __future__ import annotations

from dataclasses import dataclass


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


GLOBAL_PIPELINES = ("global-gem", "global-gem-whiten")


__all__ = ["GLOBAL_PIPELINES", "GlobalOptions"]

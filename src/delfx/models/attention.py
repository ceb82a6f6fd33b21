"""Attention on a frozen global network: the seed's score function, L2-norm attention, reduction.

:class:`AttentionNet` wraps a :class:`~delfx.models.global_net.GlobalNet` whose weights are frozen
(``requires_grad = False``) and reads a feature map from a chosen block of its trunk:

- ``block="last"``: the trunk's output, as the seed did (stride 32 on ResNets);
- ``block="block3"``: the stride-16 stage, as DELF did: ResNet ``layer3``, EfficientNet-Lite
  ``blocks[4]`` (the stage of :data:`~delfx.models.archs.SPECS`).

Attention is either ``"learned"`` (:class:`AttentionHead`: 1x1 conv C->C, ReLU, 1x1 conv C->1,
softplus) or ``"l2"`` (the L2 norm of each location's feature, no parameters). An optional 1x1
``reduction`` conv (C->d) maps local features to ``d`` dimensions; it is set from a PCA-whitening
with :meth:`AttentionNet.set_reduction`, as HOW does.

``forward`` gives the attention-weighted global descriptor (``pool(f * a)``, L2-normalised, then the
base network's whitening when the block is the last one), so the tuple training and evaluation of
:mod:`delfx.train` work unchanged; :meth:`AttentionNet.local` gives the dense local features and
their attention for DELF extraction.

Checkpoints use the ``{"meta", "state_dict"}`` format of :mod:`delfx.models.global_net`; the meta
has an ``"attention"`` entry ``{"kind", "block", "reduction"}``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from delfx.errors import InputError
from delfx.models.archs import SPECS
from delfx.models.global_net import (
    ARCHS,
    GlobalNet,
    base_from_meta,
    create,
    load_checkpoint,
    load_weights,
    read_checkpoint_file,
)
from delfx.models.pooling import l2n

logger = logging.getLogger(__name__)

#: Attention kinds.
KINDS = ("learned", "l2")
#: Blocks of the trunk that attention can sit on.
BLOCKS = ("last", "block3")


class AttentionHead(nn.Module):
    """The seed's score function: 1x1 conv C->C, ReLU, 1x1 conv C->1, softplus.

    Shape:
        ``B x C x h x w`` -> ``B x h x w``, non-negative.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(self.conv2(F.relu(self.conv1(x))))[:, 0]


def l2_attention(x: Tensor) -> Tensor:
    """The L2 norm of each location's feature, an attention that needs no training.

    Shape:
        ``B x C x h x w`` -> ``B x h x w``.
    """
    return torch.linalg.vector_norm(x, dim=1)


def block_channels(arch: str, block: str) -> int:
    """Channels of the feature map at ``block`` of ``arch``.

    Raises:
        InputError: unknown block, or ``block3`` on a backbone without a stride-16 stage.
    """
    if block not in BLOCKS:
        raise InputError(f"block '{block}': expected one of {', '.join(BLOCKS)}")
    if block == "last":
        return ARCHS[arch]
    spec = SPECS.get(arch)
    if spec is None or spec.local_channels is None:
        raise InputError(
            f"block 'block3' is defined for ResNets only (and EfficientNet-Lite), not '{arch}'"
        )
    return spec.local_channels


class AttentionNet(nn.Module):
    """A frozen global network with attention over one block's feature map.

    Args:
        base: the global network; its parameters are frozen here.
        kind: ``"learned"`` or ``"l2"``.
        block: ``"last"`` or ``"block3"``.
        reduction: output dimension of a 1x1 reduction conv for local features, or None.
    """

    def __init__(
        self,
        base: GlobalNet,
        kind: str = "learned",
        block: str = "last",
        reduction: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise InputError(f"attention '{kind}': expected one of {', '.join(KINDS)}")
        channels = block_channels(base.arch, block)
        if reduction is not None and not 1 <= int(reduction) <= channels:
            raise InputError(f"reduction must be in 1..{channels}, got {reduction}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.kind = kind
        self.block = block
        self.channels = channels
        self.head = AttentionHead(channels) if kind == "learned" else None
        self.reduction = nn.Conv2d(channels, int(reduction), 1) if reduction else None
        if self.reduction is not None:
            for p in self.reduction.parameters():
                p.requires_grad_(False)
        self.mean = base.mean
        self.std = base.std

    # --- what the training and description code reads -------------------------------------
    @property
    def arch(self) -> str:
        return self.base.arch

    @property
    def whiten(self) -> nn.Linear | None:
        """The base network's whitening when it applies (last block only)."""
        return self.base.whiten if self.block == "last" else None

    @property
    def gem_p(self) -> float | None:
        return self.base.gem_p

    @property
    def outputdim(self) -> int:
        """Dimension of :meth:`forward`'s descriptor."""
        return self.whiten.out_features if self.whiten is not None else self.channels

    @property
    def local_dim(self) -> int:
        """Dimension of :meth:`local`'s descriptors."""
        return self.reduction.out_channels if self.reduction is not None else self.channels

    @property
    def stride(self) -> int:
        """Input pixels per feature-map cell."""
        spec = SPECS[self.base.arch]
        return spec.local_stride if self.block == "block3" else spec.stride

    @property
    def meta(self) -> dict[str, Any]:
        """The base network's meta plus ``"attention": {"kind", "block", "reduction"}``."""
        meta = dict(self.base.meta)
        meta["outputdim"] = self.outputdim
        meta["local_dim"] = self.local_dim
        meta["attention"] = {
            "kind": self.kind,
            "block": self.block,
            "reduction": self.reduction.out_channels if self.reduction is not None else None,
        }
        return meta

    def train(self, mode: bool = True) -> AttentionNet:
        """Train mode for the attention only; the frozen base always stays in eval mode."""
        super().train(mode)
        self.base.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters attention training updates (the head's)."""
        return [] if self.head is None else list(self.head.parameters())

    # --- computation ----------------------------------------------------------------------
    def feature_map(self, x: Tensor) -> Tensor:
        """The chosen block's feature map.

        Shape:
            ``B x 3 x H x W`` -> ``B x C x h x w`` with ``h = ceil(H / stride)`` (about).
        """
        trunk = self.base.trunk
        if self.block == "last":
            return trunk(x)
        depth = SPECS[self.base.arch].local_depth
        for module in list(trunk)[:depth]:  # e.g. ResNet: up to layer3
            x = module(x)
        return x

    def attention(self, fmap: Tensor) -> Tensor:
        """Attention scores of a feature map.

        Shape:
            ``B x C x h x w`` -> ``B x h x w``, non-negative.
        """
        return self.head(fmap) if self.head is not None else l2_attention(fmap)

    def local(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Dense local descriptors (reduced, not normalised) and their attention.

        Shape:
            ``B x 3 x H x W`` -> (``B x D x h x w``, ``B x h x w``), ``D = local_dim``.
        """
        fmap = self.feature_map(x)
        att = self.attention(fmap)
        desc = self.reduction(fmap) if self.reduction is not None else fmap
        return desc, att

    def forward(self, x: Tensor) -> Tensor:
        """Attention-weighted global descriptor.

        Shape:
            ``B x 3 x H x W`` -> ``B x D`` unit rows, ``D = outputdim``.
        """
        fmap = self.feature_map(x)
        v = l2n(self.base.pool(fmap * self.attention(fmap)[:, None]))
        if self.whiten is not None:
            v = l2n(self.whiten(v))
        return v

    def set_reduction(self, mean: np.ndarray, projection: np.ndarray) -> None:
        """Set the reduction conv to ``x -> P (x - m)`` (a PCA-whitening learned elsewhere).

        Args:
            mean: ``(C,)`` mean of the local features.
            projection: ``d x C`` projection, ``d = reduction``.
        """
        if self.reduction is None:
            raise InputError("this attention network has no reduction layer")
        d, c = self.reduction.out_channels, self.channels
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        projection = np.asarray(projection, dtype=np.float32)
        if mean.shape != (c,) or projection.shape != (d, c):
            raise InputError(
                f"reduction: expected mean ({c},) and projection {d} x {c}, "
                f"got {mean.shape} and {projection.shape}"
            )
        with torch.no_grad():
            w = torch.from_numpy(projection)
            self.reduction.weight.copy_(w[:, :, None, None])
            self.reduction.bias.copy_(-(w @ torch.from_numpy(mean)))


def wrap(
    base: GlobalNet, kind: str = "learned", block: str = "last", reduction: int | None = None
) -> AttentionNet:
    """:class:`AttentionNet` over ``base`` (on ``base``'s device)."""
    device = next(base.parameters()).device
    return AttentionNet(base, kind, block, reduction).to(device)


def load_attention(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> AttentionNet:
    """Rebuild an :class:`AttentionNet` saved with :func:`~delfx.models.global_net.save_checkpoint`.

    Raises:
        InputError: missing or unreadable file, or a checkpoint without an attention head (a plain
            global model); the message names the file.
    """
    meta, state_dict = read_checkpoint_file(path)
    att = meta.get("attention")
    if not isinstance(att, dict):
        raise InputError(
            f"{path}: model has no attention head (train one with 'delfx train attention', "
            "or use L2-norm attention with --attention l2)"
        )
    base = base_from_meta(meta, path)
    try:
        net = AttentionNet(base, att["kind"], att["block"], att.get("reduction"))
    except KeyError as exc:
        raise InputError(f"{path}: checkpoint attention meta lacks {exc}") from None
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    load_weights(net, state_dict, path)
    return net.to(torch.device(device)).eval()


def has_attention(path: str | os.PathLike[str]) -> bool:
    """Whether a checkpoint file carries an attention head (False for unreadable files)."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return (
        isinstance(ckpt, dict)
        and isinstance(ckpt.get("meta"), dict)
        and (isinstance(ckpt["meta"].get("attention"), dict))
    )


def resolve_attention(
    model: str,
    *,
    pretrained: str = "none",
    pooling: str = "gem",
    attention: str | None = None,
    block: str = "last",
    device: str | torch.device = "cpu",
) -> AttentionNet:
    """An attention network from a checkpoint path or an architecture name.

    - a checkpoint with an attention head: loaded as is (``attention`` must be None or match);
    - a plain global checkpoint: wrapped with ``attention`` (required; ``"l2"`` needs no training);
    - an architecture name: a new base network (``pretrained`` weights) wrapped with ``attention``.

    Raises:
        InputError: a model without an attention head and no ``attention`` given, or bad names.
    """
    if Path(model).is_file():
        if has_attention(model):
            net = load_attention(model, device)
            if attention is not None and attention != net.kind:
                raise InputError(f"{model}: has '{net.kind}' attention, not '{attention}'")
            return net
        if attention is None or attention == "learned":
            raise InputError(
                f"{model}: model has no attention head (train one with 'delfx train attention', "
                "or use L2-norm attention with --attention l2)"
            )
        base = load_checkpoint(model, "cpu")
    elif model in ARCHS:
        if attention is None or attention == "learned":
            raise InputError(
                f"model '{model}' is an architecture without a trained attention head; "
                "give a checkpoint from 'delfx train attention' or use --attention l2"
            )
        base = create(model, pooling, pretrained)
    else:
        raise InputError(
            f"model '{model}': not a file and not an architecture ({', '.join(ARCHS)})"
        )
    return wrap(base, attention, block).to(torch.device(device)).eval()

"""The global CNN descriptor network (cirtorch style): conv trunk, pooling, whitening, L2n.

An image batch ``B x 3 x H x W`` (normalised with ``meta["mean"]``/``meta["std"]``) goes through the
convolutional trunk of a torchvision or timm backbone (no classifier, no global average pool), a
pooling
layer from :data:`~delfx.models.pooling.POOLINGS`, L2 normalisation, an optional whitening
``nn.Linear`` and a final L2 normalisation, giving ``B x D`` unit vectors.

Checkpoints are ``torch.save`` of ``{"meta": dict, "state_dict": dict of tensors}`` (plus an
optional plain ``"extra"`` dict), read back with ``weights_only=True``.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from delfx.errors import InputError
from delfx.io import atomic
from delfx.models import efficientnet
from delfx.models.archs import ARCHS, SPECS
from delfx.models.pooling import POOLINGS, GeM, l2n
from delfx.models.weights import IMAGENET_MEAN, IMAGENET_STD, resolve_weights

logger = logging.getLogger(__name__)

_META_KEYS = ("architecture", "pooling", "whitening")
_RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

#: How each backbone family's classifier is cut into a trunk (cirtorch's cuts).
_TRUNKS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "resnet": lambda m: nn.Sequential(*(getattr(m, n) for n in _RESNET_TRUNK)),
    "vgg": lambda m: nn.Sequential(*list(m.features.children())[:-1]),  # drop the last max-pool
    "densenet": lambda m: nn.Sequential(*m.features.children(), nn.ReLU(inplace=True)),
    "efficientnet": efficientnet.trunk,
}


def _trunk(arch: str, model: nn.Module) -> nn.Module:
    """The convolutional part of a classifier: the modules that :data:`SPECS` describes."""
    if arch not in SPECS:
        raise InputError(f"unknown architecture '{arch}' (expected one of {', '.join(ARCHS)})")
    return _TRUNKS[SPECS[arch].family](model)


class GlobalNet(nn.Module):
    """Trunk + pooling + optional whitening, with L2-normalised output.

    Args:
        arch: one of :data:`ARCHS`.
        trunk: the convolutional feature extractor (``B x 3 x H x W`` -> ``B x C x h x w``).
        pooling: a key of :data:`POOLINGS`.
        pool: the pooling module.
        whitening_dim: output dimension of the whitening layer, or None for no whitening.
    """

    def __init__(
        self,
        arch: str,
        trunk: nn.Module,
        pooling: str,
        pool: nn.Module,
        whitening_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.pooling = pooling
        self.trunk = trunk
        self.pool = pool
        channels = ARCHS[arch]
        self.whiten = nn.Linear(channels, whitening_dim, bias=True) if whitening_dim else None
        self.mean: tuple[float, ...] = IMAGENET_MEAN
        self.std: tuple[float, ...] = IMAGENET_STD
        #: where the backbone's weights came from (``"none"``, a package, a path); None: unknown
        self.pretrained: str | None = "none"

    @property
    def outputdim(self) -> int:
        """Dimension ``D`` of the descriptor."""
        return self.whiten.out_features if self.whiten is not None else ARCHS[self.arch]

    @property
    def gem_p(self) -> float | None:
        """The current GeM exponent, or None for another pooling."""
        if isinstance(self.pool, GeM):
            return float(self.pool.p.detach().reshape(-1)[0])
        return None

    @property
    def meta(self) -> dict[str, Any]:
        """Plain description of the network, stored with checkpoints and descriptor files."""
        return {
            "architecture": self.arch,
            "pooling": self.pooling,
            "outputdim": self.outputdim,
            "mean": list(self.mean),
            "std": list(self.std),
            "whitening": self.whiten.out_features if self.whiten is not None else None,
            "p": self.gem_p,
            "pretrained": self.pretrained,
        }

    def features(self, x: Tensor) -> Tensor:
        """The trunk's feature map.

        Shape:
            ``B x 3 x H x W`` -> ``B x C x h x w``, with ``h, w`` about ``H/S, W/S`` for the
            stride ``S`` of :data:`SPECS` (32; 16 for vgg16).
        """
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """Global descriptors.

        Shape:
            ``B x 3 x H x W`` -> ``B x D``, unit rows.
        """
        v = l2n(self.pool(self.features(x)))
        if self.whiten is not None:
            v = l2n(self.whiten(v))
        return v


def create(
    arch: str,
    pooling: str = "gem",
    pretrained: str = "none",
    whitening_dim: int | None = None,
    *,
    p: float = 3.0,
) -> GlobalNet:
    """Build a :class:`GlobalNet` on the CPU.

    Args:
        arch: one of :data:`ARCHS`.
        pooling: a key of :data:`POOLINGS` (``mac``, ``spoc``, ``gem``, ``rmac``).
        pretrained: ``"none"``, ``"imagenet"`` or a state-dict path (see
            :func:`~delfx.models.weights.resolve_weights`); the network takes the mean/std
            those weights expect and records their origin in :attr:`GlobalNet.meta`.
        whitening_dim: add a whitening ``nn.Linear`` ``C -> whitening_dim`` (initialised to
            identity-like; load a learned one with ``linear_from_whitening``).
        p: initial GeM exponent (GeM only).

    Raises:
        InputError: unknown architecture or pooling, bad whitening dimension, or weights trouble.
    """
    if arch not in ARCHS:
        raise InputError(f"unknown architecture '{arch}' (expected one of {', '.join(ARCHS)})")
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling '{pooling}' (expected one of {', '.join(POOLINGS)})")
    if whitening_dim is not None and not 1 <= int(whitening_dim) <= ARCHS[arch]:
        raise InputError(f"whitening dimension must be in 1..{ARCHS[arch]}, got {whitening_dim}")
    backbone = resolve_weights(arch, pretrained)
    pool = POOLINGS[pooling](p=p) if pooling == "gem" else POOLINGS[pooling]()
    net = GlobalNet(arch, _trunk(arch, backbone.model), pooling, pool, whitening_dim)
    net.mean, net.std, net.pretrained = backbone.mean, backbone.std, backbone.origin
    if net.whiten is not None:
        with torch.no_grad():
            net.whiten.weight.copy_(torch.eye(net.whiten.out_features, ARCHS[arch]))
            net.whiten.bias.zero_()
    return net


def save_checkpoint(
    path: str | os.PathLike[str], net: GlobalNet, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``{"meta", "state_dict"[, "extra"]}`` atomically (temporary file, then rename).

    ``extra`` must hold only plain values (numbers, strings, lists, dicts, tensors).
    """
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    payload: dict[str, Any] = {"meta": net.meta, "state_dict": state}
    if extra is not None:
        payload["extra"] = extra
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic.write_bytes(path, buf.getvalue())


def read_checkpoint_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta, state_dict)`` of a :func:`save_checkpoint` file, read with ``weights_only=True``.

    Raises:
        InputError: the file is missing, unreadable, lacks ``meta``/``state_dict`` keys or the
            meta keys of :data:`_META_KEYS`, or names an unknown architecture; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or "meta" not in ckpt or "state_dict" not in ckpt:
        raise InputError(f"{path}: not a delfx checkpoint (needs 'meta' and 'state_dict' keys)")
    meta = ckpt["meta"]
    missing = [k for k in _META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise InputError(f"{path}: checkpoint meta lacks {', '.join(missing)}")
    if meta["architecture"] not in ARCHS:
        raise InputError(f"{path}: unknown architecture '{meta['architecture']}'")
    return meta, ckpt["state_dict"]


def base_from_meta(meta: dict[str, Any], path: str | os.PathLike[str]) -> GlobalNet:
    """A new (random) :class:`GlobalNet` shaped as ``meta`` says, with its mean/std and origin.

    Raises:
        InputError: a bad pooling or whitening entry; the message names ``path``.
    """
    try:
        net = create(
            meta["architecture"],
            meta["pooling"],
            "none",
            meta["whitening"],
            p=float(meta.get("p") or 3.0),
        )
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    if "mean" in meta and "std" in meta:
        net.mean = tuple(float(v) for v in meta["mean"])
        net.std = tuple(float(v) for v in meta["std"])
    origin = meta.get("pretrained")
    net.pretrained = None if origin is None else str(origin)
    return net


def load_weights(net: nn.Module, state_dict: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``net.load_state_dict(state_dict, strict=True)``, failing with one line naming ``path``."""
    try:
        net.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError) as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
        raise InputError(f"{path}: weights do not fit the network: {detail}") from None


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> GlobalNet:
    """Rebuild a :class:`GlobalNet` from :func:`save_checkpoint` output, in eval mode on ``device``.

    Raises:
        InputError: the file is missing, unreadable, lacks ``meta``/``state_dict`` keys, names an
            unknown architecture, or its weights do not fit; the message names the file.
    """
    meta, state_dict = read_checkpoint_file(path)
    net = base_from_meta(meta, path)
    load_weights(net, state_dict, path)
    logger.debug("%s: loaded %s", path, meta)
    return net.to(torch.device(device)).eval()

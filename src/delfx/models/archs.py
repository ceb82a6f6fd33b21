"""The supported backbones, importable without torch (for command-line defaults)."""

from __future__ import annotations

#: Supported backbones and the channel count of their trunk's output.
ARCHS: dict[str, int] = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "vgg16": 512,
    "densenet121": 1024,
}

__all__ = ["ARCHS"]

"""Global descriptors of photos with a :class:`~delfx.models.global_net.GlobalNet`.

Each photo is resized so that its longer side equals ``image_size`` (as cirtorch does), normalised
with the network's mean and std, and described at one or more scales. Multi-scale descriptors are
combined by the GeM power mean ``(mean_s v_s^p)^(1/p)`` when the network pools with GeM and has no
whitening (cirtorch's rule: whitened vectors may be negative), else by the plain mean; the result
is L2-normalised.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from delfx.errors import InputError
from delfx.io.images import resize_max
from delfx.models.global_net import GlobalNet
from delfx.models.pooling import l2n

logger = logging.getLogger(__name__)


def resize_to(image: np.ndarray, image_size: int) -> np.ndarray:
    """Resize an ``H x W x 3`` ``uint8`` image so that its longer side is ``image_size``.

    Shrinking uses :func:`~delfx.io.images.resize_max` (Lanczos); enlarging uses bicubic.
    """
    h, w = image.shape[:2]
    if max(h, w) > image_size:
        return resize_max(image, image_size)
    if max(h, w) == image_size:
        return image
    scale = image_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalise an image for the network.

    Shape:
        ``H x W x 3`` ``uint8`` -> ``3 x H x W`` float32.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"describe: expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}"
        )
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def _batches(tensors: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Stack consecutive same-sized tensors into batches of at most ``batch_size``."""
    batch: list[Tensor] = []
    for t in tensors:
        if batch and (len(batch) >= batch_size or t.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(t)
    if batch:
        yield torch.stack(batch)


def describe_batch(net: GlobalNet, x: Tensor, scales: Sequence[float]) -> Tensor:
    """Multi-scale descriptors of a normalised batch (no grad handling; call under inference).

    Shape:
        ``B x 3 x H x W`` -> ``B x D`` float32, unit rows.
    """
    p = net.gem_p if (len(scales) > 1 and net.whiten is None) else None
    p = 1.0 if p is None else p
    acc = None
    for s in scales:
        xs = (
            x
            if s == 1.0
            else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        )
        v = net(xs).float()
        v = v.pow(p) if p != 1.0 else v
        acc = v if acc is None else acc + v
    assert acc is not None
    acc = acc / len(scales)
    if p != 1.0:
        acc = acc.clamp(min=0).pow(1.0 / p)
    return l2n(acc)


def describe_images(
    net: GlobalNet,
    images: Iterable[np.ndarray],
    *,
    image_size: int,
    scales: Sequence[float] = (1.0,),
    device: str | torch.device = "cpu",
    batch_size: int = 1,
) -> np.ndarray:
    """Global descriptors of photos.

    Args:
        net: the network (moved to ``device``; evaluated in eval mode, its mode is restored).
        images: ``H x W x 3`` ``uint8`` RGB arrays.
        image_size: longer side, in pixels, each image is resized to.
        scales: relative scales to describe at (e.g. ``(1, 1/sqrt(2), 1/2)``).
        device: where to run; automatic mixed precision is used on CUDA only.
        batch_size: images per forward pass (consecutive images of equal size only).

    Returns:
        ``N x D`` float32, unit rows (``0 x D`` for no images).
    """
    if image_size < 1 or batch_size < 1 or not scales or any(s <= 0 for s in scales):
        raise InputError("describe: image_size and batch_size must be >= 1, scales positive")
    device = torch.device(device)
    was_training = net.training
    net.to(device).eval()
    amp = (
        torch.autocast(device_type="cuda", dtype=torch.float16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    tensors = (to_tensor(resize_to(im, image_size), net.mean, net.std) for im in images)
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode(), amp:
            for batch in _batches(tensors, batch_size):
                v = describe_batch(net, batch.to(device), tuple(scales))
                out.append(v.float().cpu().numpy())
    finally:
        net.train(was_training)
    if not out:
        return np.zeros((0, net.outputdim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)

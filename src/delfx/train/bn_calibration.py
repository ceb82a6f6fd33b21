"""Batch-norm statistics for a network trained from random weights.

Fine-tuning keeps batch-norm layers frozen (eval mode), as cirtorch does: with one image per
forward pass, their statistics cannot be learned tuple by tuple. A pretrained backbone brings
running statistics that fit its activations; a random one (``--pretrained none``) has mean 0 and
variance 1 everywhere, so nothing is normalised and activations grow block after block. Before
training from scratch, the running statistics are therefore set once to the cumulative average
over a sample of training images (a forward pass in train mode, no gradient); they stay frozen
afterwards and are saved with the checkpoints, so evaluation before training already uses them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from delfx.models.describe import resize_to, to_tensor

logger = logging.getLogger(__name__)


def calibrate_batchnorm(
    net: nn.Module,
    images: Iterable[np.ndarray],
    image_size: int,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> int:
    """Reset every batch-norm layer's running statistics to their average over ``images``.

    Args:
        net: the network (its mode is restored afterwards).
        images: ``H x W x 3`` ``uint8`` RGB photos, described one at a time.
        image_size: longer side each photo is resized to.
        device: where ``net`` lives.
        mean, std: the input normalisation.

    Returns:
        The number of images seen (0 leaves the network untouched).
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone()) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = net.training
    net.train()
    n = 0
    with torch.no_grad():
        for image in images:
            x = to_tensor(resize_to(image, image_size), mean, std)[None].to(device)
            net(x)
            n += 1
    net.train(was_training)
    for m, (momentum, rm, rv) in zip(bns, saved, strict=True):
        m.momentum = momentum
        if n == 0:
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
    logger.info("batch-norm statistics of %d layers set from %d images", len(bns), n)
    return n

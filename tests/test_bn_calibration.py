"""Batch-norm statistics of a from-scratch network, against a hand-computed average."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from delfx.models.describe import resize_to, to_tensor
from delfx.train.bn_calibration import calibrate_batchnorm

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size=(20 + 4 * i, 24, 3), dtype=np.uint8) for i in range(5)]


def test_running_statistics_are_the_average_over_images() -> None:
    net = _net().eval()
    conv, bn = net[0], net[1]
    with torch.no_grad():
        maps = [conv(to_tensor(resize_to(im, 24), MEAN, STD)[None]) for im in _images()]
    means = torch.stack([m.mean(dim=(0, 2, 3)) for m in maps])
    variances = torch.stack([m.var(dim=(0, 2, 3), unbiased=True) for m in maps])

    n = calibrate_batchnorm(net, _images(), 24, torch.device("cpu"), MEAN, STD)

    assert n == 5
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, variances.mean(0), rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and not net.training  # mode and momentum restored
    assert bn.num_batches_tracked.item() == 5


def test_no_images_leaves_the_network_as_it_was() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert calibrate_batchnorm(net, [], 24, torch.device("cpu"), MEAN, STD) == 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "num_batches" not in k)


def test_weights_are_untouched() -> None:
    net = _net()
    weights = [p.detach().clone() for p in net.parameters()]
    calibrate_batchnorm(net, _images(), 24, torch.device("cpu"), MEAN, STD)
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))

"""Global pooling of CNN feature maps: MAC, SPoC, GeM and R-MAC, plus L2 normalisation.

Every pooling function maps a ``B x C x H x W`` feature map to a ``B x C`` descriptor. None of them
normalises its output; apply :func:`l2n` afterwards.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from delfx.errors import InputError

#: Target overlap between consecutive R-MAC regions (Tolias et al., 2016).
RMAC_OVERLAP = 0.4


def _check_map(x: Tensor) -> None:
    if x.dim() != 4:
        raise InputError(
            f"pooling: expected a B x C x H x W feature map, got shape {tuple(x.shape)}"
        )


def l2n(x: Tensor, eps: float = 1e-6) -> Tensor:
    """L2-normalise along the last dimension.

    Shape:
        ``(..., D)`` -> ``(..., D)``.
    """
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


def mac(x: Tensor) -> Tensor:
    """Maximum activations of convolutions: the spatial maximum per channel.

    Shape:
        ``B x C x H x W`` -> ``B x C``.
    """
    _check_map(x)
    return x.amax(dim=(-2, -1))


def spoc(x: Tensor) -> Tensor:
    """Sum-pooled convolutional features, as a spatial mean (the scale is irrelevant after L2n).

    Shape:
        ``B x C x H x W`` -> ``B x C``.
    """
    _check_map(x)
    return x.mean(dim=(-2, -1))


def gem(x: Tensor, p: float | Tensor = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalised mean pooling: ``(mean(clamp(x, eps) ** p)) ** (1 / p)`` per channel.

    ``p = 1`` is SPoC; ``p -> inf`` tends to MAC. Activations are clamped to ``eps`` so that
    fractional powers and the gradient with respect to ``p`` stay finite.

    Args:
        x: Feature map (non-negative in practice, e.g. after ReLU).
        p: The exponent, a float or a scalar (or one-element) tensor, e.g. a learnable parameter.
        eps: Lower clamp for activations.

    Shape:
        ``B x C x H x W`` -> ``B x C``.
    """
    _check_map(x)
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def _starts(length: int, width: int, count: int) -> list[int]:
    """``count`` region starts spread evenly over ``[0, length - width]``."""
    if count == 1:
        return [(length - width) // 2]
    step = (length - width) / (count - 1)
    return [int(math.floor(i * step)) for i in range(count)]


def rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """The R-MAC regions of an ``height x width`` map, as ``(top, left, size, size)`` squares.

    At scale ``l = 1..levels`` the squares have side ``floor(2 * min(H, W) / (l + 1))`` (at least 1)
    and are laid out uniformly: ``l`` along the short side and ``l + m`` along the long side. The
    extra count ``m`` (0 for a square map) is chosen once, at scale 1, so that consecutive squares
    along the long side overlap as close to 40% as possible (``m`` in 1..6).

    Returns:
        Regions in scale order, then row-major.
    """
    if levels < 1:
        raise InputError(f"rmac: levels must be >= 1, got {levels}")
    if height < 1 or width < 1:
        raise InputError(f"rmac: empty feature map {height} x {width}")
    short, long_ = min(height, width), max(height, width)
    extra = 0
    if long_ > short:
        best = math.inf
        for m in range(1, 7):
            step = (long_ - short) / m
            err = abs((short - step) / short - RMAC_OVERLAP)
            if err < best:
                best, extra = err, m
    regions = []
    for level in range(1, levels + 1):
        side = max(1, int(math.floor(2 * short / (level + 1))))
        n_short, n_long = level, level + extra
        n_rows, n_cols = (n_short, n_long) if height <= width else (n_long, n_short)
        for top in _starts(height, side, n_rows):
            for left in _starts(width, side, n_cols):
                regions.append((top, left, side, side))
    return regions


def rmac(x: Tensor, levels: int = 3, eps: float = 1e-6) -> Tensor:
    """Regional MAC (Tolias et al., 2016): the sum of L2-normalised MACs of the R-MAC regions.

    The regions are those of :func:`rmac_regions`. Each region is max-pooled, L2-normalised
    (with ``eps``), and the region vectors are summed.

    Shape:
        ``B x C x H x W`` -> ``B x C``.
    """
    _check_map(x)
    out = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
    for top, left, h, w in rmac_regions(x.shape[-2], x.shape[-1], levels):
        out = out + l2n(x[..., top : top + h, left : left + w].amax(dim=(-2, -1)), eps)
    return out


class MAC(nn.Module):
    """Module form of :func:`mac`. Shape: ``B x C x H x W`` -> ``B x C``."""

    def forward(self, x: Tensor) -> Tensor:
        return mac(x)


class SPoC(nn.Module):
    """Module form of :func:`spoc`. Shape: ``B x C x H x W`` -> ``B x C``."""

    def forward(self, x: Tensor) -> Tensor:
        return spoc(x)


class GeM(nn.Module):
    """Module form of :func:`gem` with a (by default learnable) exponent ``p``.

    Args:
        p: Initial exponent.
        learnable: Whether ``p`` is an ``nn.Parameter`` (else a buffer).
        eps: Lower clamp for activations.

    Shape:
        ``B x C x H x W`` -> ``B x C``.
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        value = torch.ones(1) * p
        if learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, eps={self.eps}"


class RMAC(nn.Module):
    """Module form of :func:`rmac`. Shape: ``B x C x H x W`` -> ``B x C``."""

    def __init__(self, levels: int = 3, eps: float = 1e-6) -> None:
        super().__init__()
        self.levels = levels
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rmac(x, self.levels, self.eps)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


#: Pooling modules by name; call with the module's constructor arguments.
POOLINGS: dict[str, type[nn.Module]] = {"mac": MAC, "spoc": SPoC, "gem": GeM, "rmac": RMAC}

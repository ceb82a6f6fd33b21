"""Tuple losses for fine-tuning a global descriptor, in the cirtorch tuple convention.

Convention: a batch holds ``nq`` tuples of equal size ``S``, concatenated row-wise. Each tuple is
``[query, positive, negative_1, ..., negative_{S-2}]``. ``x`` is ``N x D`` with ``N = nq * S``
(one descriptor per row, usually L2-normalised) and ``label`` is ``(N,)`` with ``-1`` for the
query (the first row of each tuple, and only there), ``1`` for a positive and ``0`` for a negative.
Both losses are summed over tuples (not averaged).
"""

from __future__ import annotations

from torch import Tensor, nn

from delfx.errors import InputError


def _split_tuples(x: Tensor, label: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries ``nq x D``, the other items ``nq x (S-1) x D`` and their labels ``nq x (S-1)``."""
    if x.dim() != 2 or label.dim() != 1 or label.shape[0] != x.shape[0]:
        raise InputError(
            f"loss: expected x N x D and label (N,), got {tuple(x.shape)} and {tuple(label.shape)}"
        )
    is_query = label == -1
    nq = int(is_query.sum())
    n = x.shape[0]
    if nq == 0 or n % nq != 0:
        raise InputError(f"loss: {n} items do not split into tuples with {nq} queries")
    size = n // nq
    if size < 2:
        raise InputError("loss: each tuple needs a query and at least one other item")
    lbl = label.view(nq, size)
    if not bool((lbl[:, 0] == -1).all()):
        raise InputError("loss: every tuple must start with its query (label -1)")
    rest = lbl[:, 1:]
    if not bool(((rest == 0) | (rest == 1)).all()):
        raise InputError("loss: non-query labels must be 1 (positive) or 0 (negative)")
    xs = x.view(nq, size, x.shape[1])
    return xs[:, 0], xs[:, 1:], rest.to(x.dtype)


def contrastive_loss(x: Tensor, label: Tensor, margin: float = 0.7, eps: float = 1e-6) -> Tensor:
    """Contrastive loss: ``0.5 * y * d^2 + 0.5 * (1 - y) * max(0, margin - d)^2``.

    Summed over every non-query item of every tuple, with ``y`` its label and
    ``d = sqrt(||q - x||^2 + eps^2)`` its distance to the tuple's query (``eps`` keeps the
    gradient finite at ``d = 0``).

    Shape:
        ``x``: ``N x D``; ``label``: ``(N,)`` (see the module docstring); result: scalar.
    """
    q, items, y = _split_tuples(x, label)
    d = ((items - q[:, None, :]).pow(2).sum(dim=-1) + eps * eps).sqrt()
    loss = 0.5 * y * d.pow(2) + 0.5 * (1 - y) * (margin - d).clamp(min=0).pow(2)
    return loss.sum()


def triplet_loss(x: Tensor, label: Tensor, margin: float = 0.1) -> Tensor:
    """Triplet loss: ``max(0, ||q - p||^2 - ||q - n||^2 + margin)`` summed over the negatives.

    Each tuple must be ``[query, positive, negatives...]``: labels ``-1, 1, 0, ..., 0``.

    Shape:
        ``x``: ``N x D``; ``label``: ``(N,)`` (see the module docstring); result: scalar.
    """
    q, items, y = _split_tuples(x, label)
    if items.shape[1] < 2 or not bool((y[:, 0] == 1).all()) or bool((y[:, 1:] != 0).any()):
        raise InputError("triplet loss: every tuple must be [query, positive, negatives...]")
    d2 = (items - q[:, None, :]).pow(2).sum(dim=-1)
    return (d2[:, :1] - d2[:, 1:] + margin).clamp(min=0).sum()


class ContrastiveLoss(nn.Module):
    """Module form of :func:`contrastive_loss`. Shape: ``N x D``, ``(N,)`` -> scalar."""

    def __init__(self, margin: float = 0.7, eps: float = 1e-6) -> None:
        super().__init__()
        self.margin = margin
        self.eps = eps

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        return contrastive_loss(x, label, self.margin, self.eps)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class TripletLoss(nn.Module):
    """Module form of :func:`triplet_loss`. Shape: ``N x D``, ``(N,)`` -> scalar."""

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        return triplet_loss(x, label, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


__all__ = ["ContrastiveLoss", "TripletLoss", "contrastive_loss", "triplet_loss"]

"""Descriptor whitening: learned whitening from matching pairs (Lw) and PCA whitening.

Descriptors are row-major ``N x D`` (numpy arrays or torch tensors; converted at the boundary).
Everything is computed in numpy float64. A whitening is a pair ``(m, P)`` with ``m`` the ``(D,)``
mean and ``P`` a ``D' x D`` projection (rows ordered by decreasing variance); a descriptor ``x``
maps to ``P @ (x - m)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from delfx.errors import InputError


def _as_f64(x: Any, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise InputError(f"whitening: {name} must be {ndim}-D, got shape {arr.shape}")
    return arr


def _check_whitening(m: np.ndarray, P: np.ndarray, dim: int | None) -> int:
    if P.shape[1] != m.shape[0]:
        raise InputError(f"whitening: P is {P.shape} but the mean has {m.shape[0]} dimensions")
    dim = P.shape[0] if dim is None else int(dim)
    if not 1 <= dim <= P.shape[0]:
        raise InputError(f"whitening: dim must be in 1..{P.shape[0]}, got {dim}")
    return dim


def learn_whitening(X: Any, qidxs: Any, pidxs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Learned whitening (Lw) from query-positive pairs (Radenovic et al.).

    ``m`` is the mean of all descriptors; ``S`` the covariance of the pair differences
    ``X[q] - X[p]``; ``L`` its Cholesky factor and ``P1 = L^-1``, so the differences become white.
    The centred descriptors are whitened with ``P1`` and rotated by the eigenvectors of their
    covariance (decreasing eigenvalue): ``P = V^T @ P1``. The pair differences stay white.

    Args:
        X: Descriptors.
        qidxs: Row indices of the queries.
        pidxs: Row indices of their positives (same length).

    Returns:
        ``(m, P)``, float64.

    Shape:
        ``X``: ``N x D``; ``qidxs``, ``pidxs``: ``(n,)`` with ``n >= D``; ``m``: ``(D,)``;
        ``P``: ``D x D``.
    """
    X = _as_f64(X, "X", 2)
    q = np.asarray(qidxs, dtype=np.int64).ravel()
    p = np.asarray(pidxs, dtype=np.int64).ravel()
    if q.shape != p.shape or q.size == 0:
        raise InputError(
            f"whitening: need equally many queries and positives, got {q.size}, {p.size}"
        )
    n, d = X.shape
    if min(q.min(), p.min()) < 0 or max(q.max(), p.max()) >= n:
        raise InputError(f"whitening: pair indices must be in 0..{n - 1}")
    m = X.mean(axis=0)
    df = X[q] - X[p]
    S = df.T @ df / df.shape[0]
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        raise InputError(
            f"whitening: the covariance of the {q.size} pair differences is singular "
            f"(need at least {d} independent pairs for {d}-D descriptors)"
        ) from None
    P1 = np.linalg.inv(L)
    Xw = (X - m) @ P1.T
    evals, evecs = np.linalg.eigh(Xw.T @ Xw / n)
    order = np.argsort(evals)[::-1]
    P = evecs[:, order].T @ P1
    return m, P


def pca_whiten(X: Any, dim: int | None = None, eps: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """PCA whitening learned on descriptors: ``P = diag(1 / sqrt(lambda + eps)) @ V^T``.

    The covariance is ``(X - m)^T (X - m) / N``; ``V`` holds its eigenvectors by decreasing
    eigenvalue ``lambda``. Projected training data ``(X - m) @ P.T`` has identity covariance (up to
    ``eps``) in every kept dimension with non-zero variance.

    Args:
        X: Training descriptors.
        dim: Number of kept components (default ``D``).
        eps: Added to the eigenvalues before the inverse square root.

    Returns:
        ``(m, P)``, float64.

    Shape:
        ``X``: ``N x D``; ``m``: ``(D,)``; ``P``: ``dim x D``.
    """
    X = _as_f64(X, "X", 2)
    n, d = X.shape
    dim = d if dim is None else int(dim)
    if not 1 <= dim <= d:
        raise InputError(f"whitening: dim must be in 1..{d}, got {dim}")
    m = X.mean(axis=0)
    Xc = X - m
    evals, evecs = np.linalg.eigh(Xc.T @ Xc / n)
    order = np.argsort(evals)[::-1][:dim]
    evals = np.clip(evals[order], 0.0, None)
    P = evecs[:, order].T / np.sqrt(evals + eps)[:, None]
    return m, P


def apply_whitening(
    X: Any, m: Any, P: Any, dim: int | None = None, normalize: bool = True, eps: float = 1e-12
) -> np.ndarray:
    """Whiten descriptors: ``(X - m) @ P[:dim].T``, then L2-normalise each row.

    Args:
        X: Descriptors.
        m: Whitening mean.
        P: Whitening projection; its first ``dim`` rows are used (default all).
        normalize: Whether to L2-normalise the rows (``False`` gives the raw projection).
        eps: Added to the row norms.

    Returns:
        The whitened descriptors, float64.

    Shape:
        ``X``: ``N x D``; ``m``: ``(D,)``; ``P``: ``D' x D``; result: ``N x dim``.
    """
    X = _as_f64(X, "X", 2)
    m = _as_f64(m, "m", 1)
    P = _as_f64(P, "P", 2)
    dim = _check_whitening(m, P, dim)
    if X.shape[1] != m.shape[0]:
        raise InputError(
            f"whitening: descriptors are {X.shape[1]}-D but the whitening is {m.size}-D"
        )
    Y = (X - m) @ P[:dim].T
    if normalize:
        Y /= np.linalg.norm(Y, axis=1, keepdims=True) + eps
    return Y


def linear_from_whitening(m: Any, P: Any, dim: int | None = None) -> nn.Linear:
    """An ``nn.Linear`` computing ``P[:dim] @ (x - m)``: weight ``P[:dim]``, bias ``-P[:dim] @ m``.

    Shape:
        ``m``: ``(D,)``; ``P``: ``D' x D``; the layer maps ``(..., D)`` to ``(..., dim)``
        (float32 parameters on the CPU; move it with ``.to(device)``).
    """
    m = _as_f64(m, "m", 1)
    P = _as_f64(P, "P", 2)
    dim = _check_whitening(m, P, dim)
    W = P[:dim]
    layer = nn.Linear(m.shape[0], dim, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        layer.bias.copy_(torch.from_numpy(-W @ m))
    return layer

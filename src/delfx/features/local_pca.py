"""PCA-whitening of local descriptors, learned on training images and kept in an ``.npz`` file.

The file holds ``mean`` ``(D,)`` float64, ``projection`` ``d x D`` float64 (rows by decreasing
variance, see :func:`~delfx.models.whitening.pca_whiten`) and ``info``, a JSON string that says
where the training descriptors came from (the source and its image names), so that a reader can
check the PCA was not learned on the images it is applied to. It is read with
``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from delfx.errors import InputError
from delfx.io import atomic
from delfx.models.whitening import pca_whiten

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalPCA:
    """A learned PCA-whitening of local descriptors.

    Attributes:
        mean: ``(D,)`` mean of the training descriptors.
        projection: ``d x D`` projection; a descriptor ``x`` maps to ``projection @ (x - mean)``.
        info: provenance (``source``, ``images``, ``descriptors``, ...), JSON-serialisable.
    """

    mean: np.ndarray
    projection: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Output dimension ``d``."""
        return int(self.projection.shape[0])

    @property
    def digest(self) -> str:
        """A short hash of the arrays (to tell two PCAs apart in a feature file's config)."""
        h = hashlib.sha256(np.ascontiguousarray(self.mean, np.float64).tobytes())
        h.update(np.ascontiguousarray(self.projection, np.float64).tobytes())
        return h.hexdigest()[:16]

    def truncated(self, dim: int) -> LocalPCA:
        """The same PCA keeping only its first ``dim`` components.

        Raises:
            InputError: ``dim`` is not in ``1..self.dim``.
        """
        if not 1 <= int(dim) <= self.dim:
            raise InputError(f"PCA dimension must be in 1..{self.dim}, got {dim}")
        return LocalPCA(self.mean, self.projection[: int(dim)], self.info)


def learn_local_pca(
    descriptor_arrays: Sequence[np.ndarray], dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Learn a PCA-whitening on the descriptors of training images.

    Args:
        descriptor_arrays: one ``n_i x D`` array per training image.
        dim: kept components ``d``.

    Returns:
        ``(mean (D,), projection d x D)``, float64.

    Raises:
        InputError: no descriptors, mixed dimensions, or fewer than ``d + 1`` descriptors.
    """
    arrays = [np.asarray(a, dtype=np.float32) for a in descriptor_arrays if len(a)]
    if not arrays:
        raise InputError("local PCA: no training descriptors")
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        raise InputError(f"local PCA: training descriptors of mixed dimensions {sorted(dims)}")
    X = np.concatenate(arrays)
    if X.shape[0] <= int(dim):
        raise InputError(
            f"local PCA: {X.shape[0]} training descriptors cannot give {dim} components "
            f"(need more than {dim}; use more training images or a smaller --pca-dim)"
        )
    logger.info("learning a %d-D local PCA on %d descriptors", int(dim), X.shape[0])
    return pca_whiten(X, int(dim))


def save_local_pca(path: str | os.PathLike[str], pca: LocalPCA) -> Path:
    """Write a PCA to an ``.npz`` file atomically."""
    buf = io.BytesIO()
    np.savez(
        buf,
        mean=np.asarray(pca.mean, np.float64),
        projection=np.asarray(pca.projection, np.float64),
        info=np.array(json.dumps(pca.info, sort_keys=True)),
    )
    return atomic.write_bytes(path, buf.getvalue())


def load_local_pca(path: str | os.PathLike[str]) -> LocalPCA:
    """Read a PCA written by :func:`save_local_pca`.

    Raises:
        InputError: the file is missing, unreadable, or does not hold a consistent PCA; the
            message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such PCA file")
    try:
        with np.load(path, allow_pickle=False) as z:
            mean, proj, info = z["mean"], z["projection"], json.loads(str(z["info"]))
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a delfx local PCA file ({exc})") from None
    if mean.ndim != 1 or proj.ndim != 2 or proj.shape[1] != mean.shape[0]:
        raise InputError(
            f"{path}: PCA mean {mean.shape} and projection {proj.shape} do not fit together"
        )
    return LocalPCA(mean.astype(np.float64), proj.astype(np.float64), dict(info))

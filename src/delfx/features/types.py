"""The record every local-feature extractor returns and the feature store keeps.

Conventions: keypoints are ``(x, y)`` in original-image pixels (pixel centres at ``+0.5``, see
:mod:`delfx.io.images`); ``scales`` are the feature's size in those pixels (SIFT: the keypoint
diameter; DELF: the receptive-field size); ``orientations`` are in degrees, ``-1`` when the
extractor has none. Descriptors are row-major ``N x D`` ``float32``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from delfx.errors import InputError


@dataclass(frozen=True)
class LocalFeatures:
    """Local features of one image.

    Attributes:
        keypoints: ``N x 2`` float32 ``(x, y)`` in original-image pixels.
        scales: ``(N,)`` float32 feature size in pixels.
        orientations: ``(N,)`` float32 degrees (``-1`` when undefined).
        descriptors: ``N x D`` float32.
        scores: ``(N,)`` float32 detector response or attention.
        image_size: ``(width, height)`` of the original image.
    """

    keypoints: np.ndarray
    scales: np.ndarray
    orientations: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        n = self.keypoints.shape[0]
        if self.keypoints.ndim != 2 or self.keypoints.shape[1] != 2:
            raise InputError(f"keypoints: expected N x 2, got {self.keypoints.shape}")
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != n:
            raise InputError(f"descriptors: expected {n} x D, got {self.descriptors.shape}")
        for name in ("scales", "orientations", "scores"):
            if getattr(self, name).shape != (n,):
                raise InputError(f"{name}: expected ({n},), got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def dim(self) -> int:
        """Descriptor dimension ``D``."""
        return int(self.descriptors.shape[1])

    @classmethod
    def empty(cls, dim: int, image_size: tuple[int, int]) -> LocalFeatures:
        """A record with no features (an image where the detector found nothing)."""
        z = np.zeros(0, dtype=np.float32)
        return cls(
            np.zeros((0, 2), np.float32), z, z, np.zeros((0, dim), np.float32), z, image_size
        )

    def subset(self, index: np.ndarray) -> LocalFeatures:
        """The features at ``index`` (boolean mask or integer indices)."""
        return LocalFeatures(
            self.keypoints[index],
            self.scales[index],
            self.orientations[index],
            self.descriptors[index],
            self.scores[index],
            self.image_size,
        )

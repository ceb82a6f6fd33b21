"""Settings of DELF extraction and their named presets (no torch needed to read them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from delfx.errors import InputError


@dataclass(frozen=True)
class DelfConfig:
    """Settings of DELF extraction.

    Attributes:
        image_size: longer image side, in pixels, at scale 1.
        scales: relative scales of the image pyramid.
        feature_num: keep at most this many features (the strongest attention).
        alpha_thresh: keep only locations whose attention is at least this.
    """

    image_size: int = 1024
    scales: tuple[float, ...] = (1.0,)
    feature_num: int = 1000
    alpha_thresh: float = 0.0

    def __post_init__(self) -> None:
        if int(self.feature_num) < 1:
            raise InputError(f"feature-num must be at least 1, got {self.feature_num}")
        if int(self.image_size) < 1:
            raise InputError(f"image-size must be at least 1 pixel, got {self.image_size}")
        scales = tuple(float(s) for s in self.scales)
        if not scales or any(not (math.isfinite(s) and s > 0) for s in scales):
            raise InputError(f"scales must be positive numbers, got {list(self.scales)}")
        if not math.isfinite(float(self.alpha_thresh)):
            raise InputError(f"alpha-thresh must be a finite number, got {self.alpha_thresh}")
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "feature_num", int(self.feature_num))
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "alpha_thresh", float(self.alpha_thresh))


#: ``seed``: the seed's runs (one scale, 2000 features, threshold 0). ``multiscale``: HOW's
#: seven-scale pyramid with 1000 features.
PRESETS: dict[str, DelfConfig] = {
    "seed": DelfConfig(image_size=1024, scales=(1.0,), feature_num=2000, alpha_thresh=0.0),
    "multiscale": DelfConfig(
        image_size=1024,
        scales=(2.0, 1.414, 1.0, 0.707, 0.5, 0.353, 0.25),
        feature_num=1000,
        alpha_thresh=0.0,
    ),
}


__all__ = ["PRESETS", "DelfConfig"]

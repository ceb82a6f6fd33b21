"""Shared fixtures: tiny datasets in the revisited layout, made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from delfx.datasets.gnd_io import write_gnd


def make_photo(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """Write a small textured JPEG and return its path."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90)
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, str]:
    """A 6-image, 2-query revisited dataset under ``tmp_path/data/tiny``."""
    root = tmp_path / "data"
    name = "tiny"
    imlist = [f"db{i}" for i in range(6)]
    qimlist = ["q0", "q1"]
    for i, n in enumerate(imlist + qimlist):
        make_photo(root / name / "jpg" / f"{n}.jpg", seed=i)
    gnd = {
        "imlist": imlist,
        "qimlist": qimlist,
        "gnd": [
            {"bbx": [4, 4, 40, 30], "easy": [0, 2], "hard": [4], "junk": [1]},
            {"bbx": [0, 0, 64, 48], "easy": [3], "hard": [], "junk": [5]},
        ],
    }
    write_gnd(root / name, name, gnd)
    return root, name

"""Shared fixtures: tiny datasets in the revisited layout, made on the fly, and a tiny training
root built from the real photos in ``../shared/data/realviews``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from delfx import build_groups, build_training
from delfx.datasets.gnd_io import write_gnd

REALVIEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "realviews" / "groups"
TRAIN_GROUPS = (
    "aachen_rathaus",
    "admiralty_arch",
    "aerial_city",
    "campus_building",
    "evd_cafe",
    "evd_cat",
)
TEST_GROUPS = ("evd_face", "evd_grand", "evd_mag", "evd_shop")


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


def _copy_small(names: tuple[str, ...], dst: Path) -> Path:
    """Copy groups' photos shrunk to a longer side of 96 px."""
    for name in names:
        for src in sorted((REALVIEWS / name).glob("*.jpg")):
            (dst / name).mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                im = im.convert("RGB")
                im.thumbnail((96, 96))
                im.save(dst / name / src.name, quality=90)
    return dst


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A datasets root with training set ``views`` (6 groups) and benchmark ``tinytest`` (4),
    from real photos at 96 px; skips the test when ``../shared/data/realviews`` is missing."""
    if not REALVIEWS.is_dir():
        pytest.skip("shared/data/realviews missing")
    base = tmp_path_factory.mktemp("train_data")
    root = base / "data"
    build_training.main(_copy_small(TRAIN_GROUPS, base / "g_train"), root, "views", val_fraction=0)
    groups = _copy_small(TEST_GROUPS, base / "g_test")
    build_groups.main(build_groups.GroupsConfig(progress=False), groups, root, "tinytest")
    return root

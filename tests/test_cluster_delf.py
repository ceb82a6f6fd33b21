"""DELF extraction in shards equals one process (a dataset with cropped queries, a PCA)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from delfx import extract_delf
from delfx.cli import main as cli_main
from delfx.cluster.distributor import Distributor
from delfx.features.delf_config import PRESETS
from tests.test_cluster import assert_same_features

#: The CLI's default preset at a tiny size (the flags of the slice test below).
SMALL = dataclasses.replace(
    PRESETS["seed"], image_size=64, scales=(1.0,), feature_num=3, alpha_thresh=0.0
)


def test_delf_shards_equal_one_process(tiny_dataset: tuple[Path, str], tmp_path: Path) -> None:
    root, name = tiny_dataset
    kw = {"root": root, "dataset": name, "model": "resnet18", "attention": "l2", "progress": False}
    single = extract_delf.main(SMALL, tmp_path / "one.h5", **kw)
    spread = extract_delf.main(SMALL, tmp_path / "four.h5", distributor=Distributor(shards=4), **kw)
    assert not (tmp_path / "four.h5.shards").exists()
    assert_same_features(single, spread)  # the queries' crops and boxes included


def test_delf_slices_through_the_cli(
    tiny_dataset: tuple[Path, str], tmp_path: Path, capsys
) -> None:
    root, name = tiny_dataset
    single = extract_delf.main(
        SMALL, tmp_path / "one.h5", root=root, dataset=name, model="resnet18", attention="l2",
        progress=False,
    )  # fmt: skip
    out = tmp_path / "f.h5"
    args = ["-q", "extract", "delf", "--root", str(root), "--dataset", name, "--model",
            "resnet18", "--attention", "l2", "--image-size", "64", "--scales", "1",
            "--feature-num", "3", "--alpha-thresh", "0", "--out", str(out)]  # fmt: skip
    for i in (0, 1):
        assert cli_main([*args, "--shard", f"{i}/2"]) == 0
        assert f"shard {i} of 2 done" in capsys.readouterr().out
    assert not out.exists()
    assert cli_main(args) == 0
    assert_same_features(single, out)

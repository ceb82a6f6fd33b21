"""``delfx train global``: tiny CPU fine-tuning runs on real photos, exact resume, CLI."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from delfx import train_global
from delfx.cli import main as cli_main
from delfx.models.global_net import load_checkpoint
from delfx.train.loop import TrainConfig, export_name

SEED_PATTERN = re.compile(
    r"^(?P<data>[^_]+)_(?P<arch>[a-z0-9]+)_(?P<pool>[a-z]+)(_notpretrained)?(_whiten)?"
    r"_(?P<loss>contrastive|triplet)_m\d+\.\d\d_(adam|sgd)_lr\d\.\de[-+]\d\d_wd\d\.\de[-+]\d\d"
    r"_nnum\d+_qsize\d+_psize\d+_bsize\d+_uevery\d+_imsize\d+$"
)


@pytest.fixture(autouse=True)
def _fixed_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


TINY = TrainConfig(
    training_dataset="views",
    test_datasets=("tinytest",),
    arch="resnet18",
    pool="gem",
    loss="contrastive",
    loss_margin=0.85,
    optimizer="adam",
    lr=1e-4,
    neg_num=2,
    query_size=8,
    pool_size=12,
    batch_size=2,
    image_size=64,
    test_image_size=64,
    epochs=2,
    pretrained="none",
    seed=0,
)


def _log_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_export_name_matches_seed():
    seed = TrainConfig(pretrained="imagenet")
    assert export_name(seed) == (
        "retrieval-SfM-120k_resnet18_gem_contrastive_m0.85_adam_lr5.0e-07_wd1.0e-06_nnum3_"
        "qsize2000_psize22000_bsize1_uevery1_imsize900"
    )
    assert SEED_PATTERN.match(export_name(seed))


def _medium(lines: list[str]) -> float:
    """The Medium mAP of a seed-format line ``>> name: mAP E: x, M: y, H: z``."""
    return float(lines[0].split("M: ")[1].split(",")[0])


def test_two_epochs(data_root, tmp_path):
    seen: list[tuple[int, list[str]]] = []
    out = train_global.main(
        TINY,
        tmp_path / "models",
        root=data_root,
        progress=False,
        on_eval=lambda e, ls: seen.append((e, ls)),
    )
    assert out == tmp_path / "models" / export_name(TINY)
    assert SEED_PATTERN.match(out.name) and "_imsize64" in out.name
    for name in ("model_epoch1.pth", "model_epoch2.pth", "model_last.pth", "model_best.pth"):
        assert (out / name).is_file(), name
    initial, *rows = _log_rows(out)
    # epoch 0: the network before training, evaluated, with no loss
    assert initial["epoch"] == "0" and initial["loss"] == ""
    assert initial["tinytest_mAP_M"] == f"{_medium(seen[0][1]):.2f}"
    assert [r["epoch"] for r in rows] == ["1", "2"]
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    assert float(rows[1]["lr"]) == pytest.approx(1e-4 * math.exp(-0.01))
    assert rows[0]["tinytest_mAP_M"] != ""
    assert [e for e, _ in seen] == [0, 1, 2]
    assert seen[-1][1][0].startswith(">> tinytest: mAP E: ")
    net = load_checkpoint(out / "model_last.pth")  # usable for extraction
    assert net.meta["architecture"] == "resnet18"
    last = torch.load(out / "model_last.pth", weights_only=True)
    assert last["extra"]["epoch"] == 2
    assert torch.equal(last["state_dict"]["pool.p"], net.state_dict()["pool.p"])


def test_resume_gives_identical_parameters(data_root, tmp_path):
    conf = replace(TINY, test_datasets=())
    full = train_global.main(conf, tmp_path / "full", root=data_root, progress=False)
    half = train_global.main(
        replace(conf, epochs=1), tmp_path / "half", root=data_root, progress=False
    )
    resumed = train_global.main(
        conf, tmp_path / "half", root=data_root, resume=half / "model_epoch1.pth", progress=False
    )
    assert resumed.name == full.name  # export name does not depend on epochs
    a = torch.load(full / "model_epoch2.pth", weights_only=True)
    b = torch.load(resumed / "model_epoch2.pth", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    sa, sb = a["extra"]["optimizer"]["state"], b["extra"]["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert a["extra"]["loss"] == b["extra"]["loss"]
    assert [r["epoch"] for r in _log_rows(resumed)] == ["1", "2"]
    # the first epoch moved the weights
    first = torch.load(half / "model_epoch1.pth", weights_only=True)["state_dict"]
    assert not torch.equal(first["trunk.0.weight"], a["state_dict"]["trunk.0.weight"])


def _ex1_flags(data_root: Path, out: Path) -> list[str]:
    return [
        "train",
        "global",
        str(out),
        "--root",
        str(data_root),
        "--gpu-id",
        "3",
        "--training-dataset",
        "views",
        "--test-datasets",
        "tinytest",
        "--arch",
        "resnet18",
        "--pool",
        "gem",
        "--loss",
        "contrastive",
        "--loss-margin",
        "0.85",
        "--optimizer",
        "adam",
        "--lr",
        "5e-7",
        "--neg-num",
        "2",
        "--query-size=4",
        "--pool-size=12",
        "--batch-size",
        "1",
        "--image-size",
        "64",
        "--test-image-size",
        "64",
        "--epochs",
        "1",
        "--pretrained",
        "none",
        "--device",
        "cpu",
        "-q",
    ]


def test_cli_train_global(data_root, tmp_path, capsys):
    assert cli_main(_ex1_flags(data_root, tmp_path / "models")) == 0
    out = capsys.readouterr().out.splitlines()
    assert "# 0" in out and "# 1" in out
    assert any(line.startswith(">> tinytest: mAP E: ") for line in out)
    assert any(line.startswith(">> tinytest: mP@k[1, 5, 10] E: ") for line in out)
    name = "views_resnet18_gem_notpretrained_contrastive_m0.85_adam_lr5.0e-07_wd1.0e-06"
    name += "_nnum2_qsize4_psize12_bsize1_uevery1_imsize64"
    assert out[-1] == f"wrote {tmp_path / 'models' / name}"


def test_cli_bad_training_json(data_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root / "views", root / "views")
    path = root / "views" / "training_views.json"
    data = json.loads(path.read_text())
    del data["train"]["pidxs"]
    path.write_text(json.dumps(data))
    assert cli_main(_ex1_flags(root, tmp_path / "models")[:-1]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "pidxs" in err[0]
    assert not (tmp_path / "models").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cli_cuda_without_cuda(data_root, tmp_path, capsys):
    flags = _ex1_flags(data_root, tmp_path / "models")
    flags[flags.index("--device") + 1] = "cuda:0"
    assert cli_main(flags) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err
    flags = [f for f in flags if f not in ("--device", "cuda:0")]  # --gpu-id 3 alone
    assert cli_main(flags) == 2
    assert "cuda:3" in capsys.readouterr().err

"""Training sets: the retrieval-SfM-120k db pickle, ``build-training`` and tuple sampling."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from delfx import build_training
from delfx.cli import main as cli_main
from delfx.datasets.training import (
    load_sfm120k,
    load_training,
    load_whitening_pairs,
    sfm120k_image_path,
)
from delfx.errors import InputError
from delfx.train.tuples import build_tuples, sample_pool, sample_queries, tuple_labels
from tests.conftest import SAMPLES, make_photo

CIDS = [f"{i:02d}abcdef{i:04d}" for i in range(6)]


def _split() -> dict:
    # clusters 0 0 0 1 1 2; pairs within clusters
    return {
        "cids": list(CIDS),
        "cluster": [0, 0, 0, 1, 1, 2],
        "qidxs": [0, 1, 3, 2],
        "pidxs": [1, 2, 4, 0],
    }


def _write_sfm(root: Path, db: dict) -> Path:
    folder = root / "retrieval-SfM-120k"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "retrieval-SfM-120k.pkl"
    path.write_bytes(pickle.dumps(db, protocol=2))
    return path


def test_load_sfm120k_maps_paths(tmp_path):
    _write_sfm(tmp_path, {"train": _split(), "val": _split()})
    for cid in CIDS:
        dst = sfm120k_image_path(tmp_path / "retrieval-SfM-120k" / "ims", cid)
        make_photo(dst.with_name("x.jpg"), seed=1).rename(dst)  # no extension, as in the field
    ts = load_training(tmp_path, "retrieval-SfM-120k")
    assert ts.name == "retrieval-SfM-120k"
    cid = CIDS[3]
    expected = tmp_path / "retrieval-SfM-120k" / "ims" / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid
    assert ts.train.images[3] == expected
    assert all(p.is_file() for p in ts.train.images)
    assert ts.train.cluster.dtype == np.int64 and ts.train.cluster.tolist() == [0, 0, 0, 1, 1, 2]
    assert ts.train.qidxs.tolist() == [0, 1, 3, 2] and ts.train.pidxs.tolist() == [1, 2, 4, 0]
    assert ts.val is not None and ts.val.num_pairs == 4


def _bad(split: dict, field: str, value) -> dict:
    bad = dict(split)
    if value is None:
        del bad[field]
    else:
        bad[field] = value
    return bad


@pytest.mark.parametrize(
    ("db", "needle"),
    [
        ({"train": _split()}, "'val' is missing"),
        ({"train": _bad(_split(), "cluster", None), "val": _split()}, "train.cluster"),
        ({"train": _split(), "val": _bad(_split(), "qidxs", None)}, "val.qidxs"),
        ({"train": _bad(_split(), "cluster", [0, 0, 1]), "val": _split()}, "train.cluster"),
        ({"train": _bad(_split(), "pidxs", [1, 2, 4]), "val": _split()}, "differ in length"),
        ({"train": _bad(_split(), "pidxs", [1, 2, 4, 6]), "val": _split()}, "out of range"),
        ({"train": _bad(_split(), "pidxs", [1, 2, 4, -1]), "val": _split()}, "pidxs[3]"),
        ({"train": _bad(_split(), "pidxs", [1, 2, 5, 0]), "val": _split()}, "cluster"),
        ({"train": _split(), "val": _bad(_split(), "cluster", [7] * 6)}, "at least 2"),
        ({"train": _bad(_split(), "qidxs", []) | {"pidxs": []}, "val": _split()}, "empty"),
    ],
)
def test_load_sfm120k_bad_input(tmp_path, db, needle):
    path = _write_sfm(tmp_path, db)
    with pytest.raises(InputError) as err:
        load_sfm120k(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and needle in msg


def test_load_sfm120k_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_training(tmp_path, "retrieval-SfM-120k")


def test_whitening_pairs(tmp_path):
    folder = tmp_path / "retrieval-SfM-120k"
    folder.mkdir()
    path = folder / "retrieval-SfM-120k-whiten.pkl"
    path.write_bytes(pickle.dumps({"cids": CIDS, "qidxs": [0, 3], "pidxs": [1, 4]}))
    paths, q, p = load_whitening_pairs(tmp_path)
    assert paths[0] == sfm120k_image_path(folder / "ims", CIDS[0])
    assert q.tolist() == [0, 3] and p.tolist() == [1, 4]
    path.write_bytes(pickle.dumps({"cids": CIDS, "qidxs": [0, 3], "pidxs": [1, 9]}))
    with pytest.raises(InputError, match="out of range"):
        load_whitening_pairs(tmp_path)


def _copy_groups(dst: Path, n: int = 6) -> Path:
    """Copy the first ``n`` shipped sample places (their photos and labels) to ``dst``."""
    src = SAMPLES / "groups"
    for g in sorted(p for p in src.iterdir() if p.is_dir())[:n]:
        shutil.copytree(g, dst / g.name)
        for f in (dst / g.name).iterdir():
            f.chmod(0o644)
        (dst / g.name).chmod(0o755)
    return dst


def test_build_training_round_trip(tmp_path):
    groups = _copy_groups(tmp_path / "groups")
    (groups / sorted(p.name for p in groups.iterdir())[0] / "labels.json").write_text("{}")
    (groups / sorted(p.name for p in groups.iterdir())[0] / "H_01_02.txt").write_text("1 0 0\n")
    out = build_training.main(groups, tmp_path / "out", "views", seed=3)
    assert (out / "training_views.json").is_file()
    assert not list(out.rglob("*.pkl"))
    ts = load_training(tmp_path / "out", "views")
    names = json.loads((out / "training_views.json").read_text())["groups"]
    assert names == sorted(p.name for p in groups.iterdir())
    assert ts.val is not None
    seen: dict[int, set[str]] = {}
    for split in (ts.train, ts.val):
        assert all(p.is_file() for p in split.images)
        for img, c in zip(split.images, split.cluster.tolist(), strict=True):
            assert img.parent.name == names[c]  # cluster = group
            seen.setdefault(c, set()).add(img.name)
        assert np.all(split.cluster[split.qidxs] == split.cluster[split.pidxs])
        assert np.all(split.qidxs != split.pidxs)
        sizes = np.bincount(split.cluster)[np.unique(split.cluster)]
        assert split.num_pairs == int((sizes * (sizes - 1)).sum())  # all ordered pairs
    assert set(ts.train.cluster.tolist()).isdisjoint(ts.val.cluster.tolist())
    assert len(set(ts.val.cluster.tolist())) == 2 and len(set(ts.train.cluster.tolist())) == 4
    for c, g in enumerate(names):
        assert seen[c] == {p.name for p in (groups / g).glob("*.jpg")}

    again = build_training.main(groups, tmp_path / "out2", "views", seed=3)
    assert (again / "training_views.json").read_text() == (out / "training_views.json").read_text()
    other = build_training.main(groups, tmp_path / "out3", "views", seed=4, val_fraction=0.0)
    assert load_training(tmp_path / "out3", "views").val is None
    assert other.is_dir()


@pytest.mark.parametrize("fault", ["one_view", "notes", "truncated", "empty"])
def test_build_training_bad_input(tmp_path, fault):
    groups = _copy_groups(tmp_path / "groups", n=3)
    first = sorted(groups.iterdir())[0]
    photos = sorted(first.glob("*.jpg"))
    if fault == "one_view":
        for p in photos[1:]:
            p.unlink()
        culprit = first
    elif fault == "notes":
        culprit = first / "notes.txt"
        culprit.write_text("taken in spring")
    elif fault == "truncated":
        culprit = photos[-1]
        culprit.write_bytes(culprit.read_bytes()[:2000])
    else:
        culprit = groups / "zz_empty"
        culprit.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError) as err:
        build_training.main(groups, out, "views")
    msg = str(err.value)
    assert "\n" not in msg and str(culprit) in msg
    assert list(out.iterdir()) == []


def test_build_training_needs_two_groups(tmp_path):
    for i in range(2):
        make_photo(tmp_path / "groups" / "only" / f"{i}.jpg", seed=i)
    with pytest.raises(InputError, match="at least 2"):
        build_training.main(tmp_path / "groups", tmp_path / "out", "views")
    assert not (tmp_path / "out" / "views").exists()


def test_cli_build_training(tmp_path, capsys):
    for g in range(4):
        for i in range(3):
            make_photo(tmp_path / "groups" / f"place{g}" / f"v{i}.jpg", seed=10 * g + i)
    argv = ["data", "build-training", str(tmp_path / "groups"), "--out", str(tmp_path / "out")]
    assert cli_main([*argv, "--name", "mine", "--val-fraction", "0.5", "--seed", "1"]) == 0
    ts = load_training(tmp_path / "out", "mine")
    assert len(ts.train) == 6 and ts.val is not None and len(ts.val) == 6
    assert ts.train.num_pairs == 12
    assert cli_main([*argv, "--name", "mine"]) == 2  # exists without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert cli_main([*argv, "--name", "mine", "--overwrite", "--val-fraction", "0"]) == 0
    assert load_training(tmp_path / "out", "mine").val is None


def test_tuples_shapes(tmp_path):
    _write_sfm(tmp_path, {"train": _split(), "val": _split()})
    split = load_sfm120k(tmp_path).train
    rng = np.random.default_rng(0)
    q, p = sample_queries(split, 3, rng)
    assert q.shape == p.shape == (3,) and q.dtype == np.int64
    assert set(zip(q.tolist(), p.tolist(), strict=True)) <= set(
        zip(split.qidxs.tolist(), split.pidxs.tolist(), strict=True)
    )
    q_all, _ = sample_queries(split, 100, rng)
    assert sorted(q_all.tolist()) == sorted(split.qidxs.tolist())
    pool = sample_pool(split, 4, rng)
    assert pool.shape == (4,) and len(set(pool.tolist())) == 4
    assert sample_pool(split, 100, rng).shape == (len(split),)
    negs = torch.tensor([[5, 3], [4, 5], [0, 5]])
    tuples = build_tuples(q, p, negs)
    assert len(tuples) == 3 and all(len(t) == 4 for t in tuples)
    assert tuples[0] == [int(q[0]), int(p[0]), 5, 3]
    assert build_tuples(q, p, np.zeros((3, 0))) == [[a, b] for a, b in zip(q, p, strict=True)]
    with pytest.raises(InputError):
        build_tuples(q, p, np.zeros((2, 5)))
    labels = tuple_labels(5)
    assert labels.shape == (7,) and labels.tolist() == [-1, 1, 0, 0, 0, 0, 0]

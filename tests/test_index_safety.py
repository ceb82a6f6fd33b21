"""Index folders only delete their own files and only read files inside themselves (issue 15)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from delfx import build_index
from delfx.cli import main as cli_main
from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.index.storage import IndexDir
from delfx.io.featurestore import FeatureWriter

DIM = 32


def _features(path: Path, db: list[str], queries: tuple[str, ...] = ("q0",), seed: int = 0) -> Path:
    """A tiny synthetic feature store: 24 random descriptors per image."""
    rng = np.random.default_rng(seed)
    with FeatureWriter(path, {"extractor": "toy"}) as w:
        for name in [f"db/{n}" for n in db] + [f"query/{n}" for n in queries]:
            n = 24
            w.write(
                name,
                LocalFeatures(
                    rng.random((n, 2), dtype=np.float32) * 50,
                    np.ones(n, np.float32),
                    np.zeros(n, np.float32),
                    rng.standard_normal((n, DIM)).astype(np.float32),
                    np.ones(n, np.float32),
                    (64, 64),
                ),
            )
    return path


def _build_argv(feats: Path, out: Path, *extra: str) -> list[str]:
    argv = ["index", "build", "--features", str(feats), "--codebook-from", str(feats)]
    return argv + ["--out", str(out), "--kind", "asmk", "--codebook-size", "8", *extra]


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _search(index: Path, feats: Path, out: Path) -> int:
    return cli_main(
        ["search", "--index", str(index), "--features", str(feats), "--output", str(out)]
    )


@pytest.fixture
def feats(tmp_path: Path) -> Path:
    return _features(tmp_path / "f.h5", [f"im{i}" for i in range(6)])


@pytest.fixture
def index(tmp_path: Path, feats: Path) -> Path:
    out = tmp_path / "idx"
    assert cli_main(_build_argv(feats, out)) == 0
    return out


def _manifest(index: Path) -> dict:
    return json.loads((index / "index.json").read_text())


def _edit(index: Path, **fields: object) -> str:
    meta = {**_manifest(index), **fields}
    text = json.dumps(meta, indent=2)
    (index / "index.json").write_text(text)
    return text


# ---- 1. a build deletes only what an index wrote ------------------------------------------------


def _user_folder(folder: Path, feats: Path) -> None:
    folder.mkdir()
    (folder / "f.h5").write_bytes(feats.read_bytes())
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01\x02")


def test_overwrite_into_a_user_folder_deletes_nothing(tmp_path, feats, capsys):
    folder = tmp_path / "mine"
    _user_folder(folder, feats)
    before = _snapshot(folder)
    names_before = sorted(p.name for p in folder.iterdir())
    # the feature file being indexed lies in the folder itself
    assert cli_main(_build_argv(folder / "f.h5", folder, "--overwrite")) == 2
    _one_error_line(capsys, str(folder), "not empty and not a delfx index")
    assert _snapshot(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == names_before  # not even a lock file


def test_non_index_folder_refused_without_overwrite(tmp_path, feats, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert cli_main(_build_argv(feats, folder)) == 2
    _one_error_line(capsys, str(folder), "not empty and not a delfx index")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_rebuild_over_an_index_keeps_unrelated_files(tmp_path, feats, index, capsys):
    old = _manifest(index)
    old_files = [old["model"], *old["segments"], old["stats"]]
    (index / "f.h5").write_bytes(feats.read_bytes())
    (index / "notes.txt").write_text("my notes\n")
    (index / "sub").mkdir()
    (index / "sub" / "data.bin").write_bytes(b"\x00\x01\x02")
    (index / "ranks-by-hand.npz").write_bytes(b"user data")
    # a segment and a temporary file left by a killed writer: the index's own names
    stale = ["seg-0123456789ab.npz", ".model-0123456789ab.npz.k2j_x9aq.tmp"]
    for name in stale:
        (index / name).write_bytes(b"stale")
    mine = {k: v for k, v in _snapshot(index).items() if k not in old_files + stale}
    mine.pop("index.json")
    # rebuild from the copy of the features inside the index folder
    assert cli_main(_build_argv(index / "f.h5", index, "--overwrite")) == 0
    capsys.readouterr()
    after = _snapshot(index)
    assert {k: after[k] for k in mine} == mine
    for name in old_files + stale:
        assert not (index / name).exists(), name
    new = _manifest(index)
    own = {"index.json", ".lock", new["model"], *new["segments"], new["stats"]}
    assert set(after) == set(mine) | own
    assert _search(index, feats, tmp_path / "r.npz") == 0
    loaded, names, _ = build_index.load(index)
    assert loaded.n_images == 6 and names == [f"db/im{i}" for i in range(6)]


def test_an_index_without_overwrite_is_refused(feats, index, capsys):
    before = _snapshot(index)
    assert cli_main(_build_argv(feats, index)) == 2
    _one_error_line(capsys, "an index exists")
    assert _snapshot(index) == before


def test_leftovers_of_a_killed_build_are_removed_by_the_rerun(tmp_path, feats):
    """Nothing names the files of a killed build: the same command builds and removes them."""
    folder = tmp_path / "killed"
    folder.mkdir()
    (folder / ".lock").touch()
    (folder / "model-aaaaaaaaaaaa.npz").write_bytes(b"half")
    (folder / ".seg-bbbbbbbbbbbb.npz.abc_1234.tmp").write_bytes(b"half")
    (folder / "notes.txt").write_text("x")
    assert cli_main(_build_argv(feats, folder)) == 2  # a file of another name: refused
    (folder / "notes.txt").unlink()
    assert cli_main(_build_argv(feats, folder)) == 0
    meta = _manifest(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".lock", "index.json", meta["model"], *meta["segments"], meta["stats"]]
    )


def test_garbage_lists_only_own_names(tmp_path, index):
    (index / "notes.txt").write_text("x")
    (index / "seg-ffffffffffff.npz").write_bytes(b"x")
    (index / "seg-notmine.npz").write_bytes(b"x")
    assert [p.name for p in IndexDir(index).garbage()] == ["seg-ffffffffffff.npz"]


# ---- 2. a manifest is checked when it is read ---------------------------------------------------


def test_duplicate_segment_is_refused_by_search_and_add(tmp_path, feats, index, capsys):
    meta = _manifest(index)
    text = _edit(index, segments=meta["segments"] * 2)
    assert _search(index, feats, tmp_path / "r.npz") == 2
    _one_error_line(capsys, "index.json", "segments", "twice")
    more = _features(tmp_path / "more.h5", ["new0"], seed=3)
    assert cli_main(["index", "add", "--index", str(index), "--features", str(more)]) == 2
    _one_error_line(capsys, "index.json", "segments")
    assert (index / "index.json").read_text() == text
    assert not (tmp_path / "r.npz").exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"segments": "seg.npz"}, "segments"),
        ({"segments": [1]}, "segments"),
        ({"model": 3}, "model"),
        ({"n_images": -1}, "n_images"),
        ({"n_images": "6"}, "n_images"),
        ({"n_images": True}, "n_images"),
        ({"n_images": 7}, "n_images"),  # one more than the segments hold
        ({"n_images": 5}, "n_images"),  # one fewer
    ],
)
def test_malformed_manifest_fields(tmp_path, feats, index, capsys, fields, field):
    _edit(index, **fields)
    assert _search(index, feats, tmp_path / "r.npz") == 2
    _one_error_line(capsys, "index.json", field)


def test_overlapping_and_missing_segment_ranges(tmp_path, feats):
    idx = tmp_path / "two"
    assert cli_main(_build_argv(feats, idx)) == 0
    more = _features(tmp_path / "more.h5", ["new0", "new1"], seed=3)
    assert cli_main(["index", "add", "--index", str(idx), "--features", str(more)]) == 0
    meta = _manifest(idx)
    assert len(meta["segments"]) == 2 and meta["n_images"] == 8
    first = meta["segments"][0]
    with pytest.raises(InputError, match=r"index\.json.*n_images"):
        _edit(idx, segments=[first])  # images 6..7 missing
        build_index.load(idx)
    with pytest.raises(InputError, match=r"index\.json.*segments"):
        _edit(idx, segments=[first], n_images=2)  # ids 0..5 in a 2-image index
        build_index.load(idx)
    # a copy of the first segment under another name overlaps it
    (idx / "seg-0000000000ff.npz").write_bytes((idx / first).read_bytes())
    with pytest.raises(InputError, match=r"index\.json.*segments"):
        _edit(idx, segments=[first, "seg-0000000000ff.npz"], n_images=12)
        build_index.load(idx)


# ---- 3. manifest entries stay inside the index folder ------------------------------------------


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_model_outside_the_folder_is_refused(tmp_path, feats, index, capsys, where):
    model = _manifest(index)["model"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.npz").write_bytes((index / model).read_bytes())
    value = "../other/model.npz" if where == "parent" else str(other / "model.npz")
    _edit(index, model=value)
    assert _search(index, feats, tmp_path / "r.npz") == 2
    _one_error_line(capsys, "index.json", "model", repr(value))


def test_segment_outside_the_folder_is_refused(tmp_path, feats, index, capsys):
    segs = _manifest(index)["segments"]
    (tmp_path / "seg.npz").write_bytes((index / segs[0]).read_bytes())
    _edit(index, segments=["../seg.npz"])
    assert _search(index, feats, tmp_path / "r.npz") == 2
    _one_error_line(capsys, "index.json", "segments", "'../seg.npz'")
    more = _features(tmp_path / "more.h5", ["new0"], seed=3)
    assert cli_main(["index", "add", "--index", str(index), "--features", str(more)]) == 2
    _one_error_line(capsys, "index.json", "segments")


@pytest.mark.parametrize("value", ["", ".", "..", "a\\b.npz", "x\x00.npz", "sub/seg.npz"])
def test_entries_that_are_not_plain_names(tmp_path, index, value):
    _edit(index, model=value)
    with pytest.raises(InputError, match=r"index\.json.*'model'") as err:
        IndexDir(index).manifest()
    assert "\n" not in str(err.value)


def test_symlink_out_of_the_folder_is_refused(tmp_path, feats, index, capsys):
    meta = _manifest(index)
    outside = tmp_path / "outside.npz"
    os.replace(index / meta["model"], outside)
    os.symlink(outside, index / meta["model"])
    assert _search(index, feats, tmp_path / "r.npz") == 2
    _one_error_line(capsys, "index.json", "model", "outside the index folder")
    # a symlink to a file inside the folder is fine
    os.unlink(index / meta["model"])
    os.replace(outside, index / "real-model.npz")
    os.symlink("real-model.npz", index / meta["model"])
    assert _search(index, feats, tmp_path / "r.npz") == 0

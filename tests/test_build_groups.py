"""``delfx data build-groups``: real photos in, a valid revisited dataset out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from delfx import build_groups
from delfx.cli import main as cli_main
from delfx.datasets.revisited import RetrievalDataset
from tests.conftest import SAMPLES, make_photo


def validate(ds: RetrievalDataset) -> None:
    """Every query has a positive, no query is its own positive, all indices in range."""
    n = len(ds.images)
    assert set(ds.queries).isdisjoint(ds.images)
    for q, t in enumerate(ds.truth):
        pos = np.union1d(t.easy, t.hard)
        assert pos.size >= 1, ds.queries[q]
        for arr in (t.easy, t.hard, t.junk):
            assert arr.size == 0 or (arr.min() >= 0 and arr.max() < n)
        assert ds.queries[q] not in [ds.images[i] for i in pos]
    for p in ds.db_paths + ds.query_paths:
        assert p.is_file()


def test_build_groups_from_the_samples(tmp_path, capsys):
    """The shipped sample photos (places of 2-4 views, distractors) make a valid benchmark: one
    query per place, its other views as positives (``labels.json`` marks some hard), distractors
    never positive; the expected counts are read from the folder itself."""
    groups, distractors = SAMPLES / "groups", SAMPLES / "distractors"
    rc = cli_main(
        [
            "data",
            "build-groups",
            str(groups),
            "--distractors",
            str(distractors),
            "--out",
            str(tmp_path),
            "--name",
            "samples",
        ]
    )
    assert rc == 0
    ds = RetrievalDataset(tmp_path, "samples")
    validate(ds)
    places = sorted(p for p in groups.iterdir() if p.is_dir())
    n_group_images = sum(len(list(p.glob("*.jpg"))) for p in places)
    n_distractors = len(list(distractors.glob("*.jpg")))
    assert len(places) >= 2 and n_distractors >= 1
    assert len(ds.queries) == len(places)
    assert len(ds.images) == n_group_images - len(places) + n_distractors
    distractor_idx = [i for i, n in enumerate(ds.images) if n.startswith("distractor_")]
    assert len(distractor_idx) == n_distractors
    for t in ds.truth:
        assert not set(distractor_idx) & set(np.concatenate([t.easy, t.hard, t.junk]).tolist())
    # the places' labels.json files are honoured: their views are the hard positives
    labelled = {
        p.name: json.loads((p / "labels.json").read_text())
        for p in places
        if (p / "labels.json").is_file()
    }
    assert labelled  # some places have one
    for place, labels in labelled.items():
        (q,) = [i for i, n in enumerate(ds.queries) if n.startswith(f"{place}_")]
        hard = [ds.images[i] for i in ds.truth[q].hard]
        assert hard == [f"{place}_{Path(f).stem}" for f in labels["hard"]], place
    # a query's box covers its whole image
    w_h = ds.load_query(0).shape[1::-1]
    assert ds.query_bbox(0) == (0.0, 0.0, float(w_h[0]), float(w_h[1]))
    assert [p.name for p in tmp_path.iterdir()] == ["samples"]  # no temp folder left


def _groups(tmp_path: Path) -> Path:
    g = tmp_path / "groups"
    for gi in range(3):
        for v in range(3):
            make_photo(g / f"place{gi}" / f"{v:02d}.jpg", seed=10 * gi + v)
    return g


def test_labels_json_sets_query_hard_and_junk(tmp_path):
    g = _groups(tmp_path)
    (g / "place1" / "labels.json").write_text('{"query": "01.jpg", "hard": ["02.jpg"]}')
    (g / "place2" / "labels.json").write_text('{"junk": ["01.jpg"]}')
    build_groups.main(build_groups.GroupsConfig(progress=False), g, tmp_path / "out", "t")
    ds = RetrievalDataset(tmp_path / "out", "t")
    validate(ds)
    assert ds.queries == ["place0_00", "place1_01", "place2_00"]
    names = lambda idx: [ds.images[i] for i in idx]  # noqa: E731
    assert names(ds.truth[1].easy) == ["place1_00"] and names(ds.truth[1].hard) == ["place1_02"]
    assert names(ds.truth[2].junk) == ["place2_01"] and names(ds.truth[2].easy) == ["place2_02"]


def _assert_clean_failure(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    rc = cli_main(argv + ["--out", str(out), "--name", "bad"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert needle in err
    assert not out.exists() or list(out.iterdir()) == []


def test_truncated_jpeg(tmp_path, capsys):
    g = _groups(tmp_path)
    bad = g / "place1" / "01.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    _assert_clean_failure(tmp_path, capsys, ["data", "build-groups", str(g)], str(bad))


def test_non_image_file(tmp_path, capsys):
    g = _groups(tmp_path)
    (g / "place0" / "notes.txt").write_text("hello")
    _assert_clean_failure(tmp_path, capsys, ["data", "build-groups", str(g)], "notes.txt")


def test_image_suffix_but_not_an_image(tmp_path, capsys):
    g = _groups(tmp_path)
    (g / "place0" / "fake.jpg").write_text("this is text")
    _assert_clean_failure(tmp_path, capsys, ["data", "build-groups", str(g)], "fake.jpg")


def test_empty_group_folder(tmp_path, capsys):
    g = _groups(tmp_path)
    (g / "empty").mkdir()
    _assert_clean_failure(tmp_path, capsys, ["data", "build-groups", str(g)], "empty group")


def test_bad_distractor(tmp_path, capsys):
    g = _groups(tmp_path)
    d = tmp_path / "distractors"
    make_photo(d / "a.jpg", seed=99)
    (d / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _assert_clean_failure(
        tmp_path, capsys, ["data", "build-groups", str(g), "--distractors", str(d)], "b.png"
    )


def test_existing_dataset_needs_overwrite(tmp_path, capsys):
    g = _groups(tmp_path)
    args = ["data", "build-groups", str(g), "--out", str(tmp_path / "o"), "--name", "x"]
    assert cli_main(args) == 0
    before = sorted(p.name for p in (tmp_path / "o" / "x" / "jpg").iterdir())
    assert cli_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    shutil.rmtree(g / "place2")
    assert cli_main(args + ["--overwrite"]) == 0
    after = sorted(p.name for p in (tmp_path / "o" / "x" / "jpg").iterdir())
    assert len(after) == len(before) - 3
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x"]


def test_data_list_shows_built_datasets(tmp_path, capsys):
    g = _groups(tmp_path)
    assert (
        cli_main(["data", "build-groups", str(g), "--out", str(tmp_path / "o"), "--name", "x"]) == 0
    )
    capsys.readouterr()
    assert cli_main(["data", "list", "--root", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("x "))
    assert "built" in row and " 9 " in row
    assert "roxford5k" in out and "absent" in out


def test_export_pkl_only_on_request(tmp_path):
    from delfx.datasets.gnd_io import load_json, load_pickle_safely

    g = _groups(tmp_path)
    base = ["data", "build-groups", str(g), "--out", str(tmp_path / "o")]
    assert cli_main([*base, "--name", "a"]) == 0
    assert not (tmp_path / "o" / "a" / "gnd_a.pkl").exists()
    assert cli_main([*base, "--name", "b", "--export-pkl"]) == 0
    folder = tmp_path / "o" / "b"
    assert load_pickle_safely(folder / "gnd_b.pkl") == load_json(folder / "gnd_b.json")

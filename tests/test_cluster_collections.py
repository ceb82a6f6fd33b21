"""Collections built in shards (sequential, ``--shard I/N`` slices, Ray) equal a single build.

The baseline is a plain ``create`` of the samples with ``sift-asmk`` in one process. A sharded
build must give the same features image for image, the same postings and statistics, and the
same results (names, scores, inliers) for 10 query photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from delfx import engine
from delfx.cli import main as cli_main
from delfx.cluster.distributor import Distributor
from delfx.engine import manifest as mf
from delfx.index import local
from delfx.io.featureset import FeatureSet
from tests.conftest import SAMPLES

SPEC = "sift-asmk"
QUERIES = sorted((SAMPLES / "groups").rglob("*.jpg"))[::4][:10]


def _create(folder: Path, photos: Path = SAMPLES, dist: Distributor | None = None) -> Path:
    return engine.create(
        engine.named(SPEC), folder, photos, workers=1, progress=False, distributor=dist
    )


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _create(tmp_path_factory.mktemp("seq") / "c")


def _results(folder: Path) -> list[list[tuple[str, float, int | None]]]:
    with engine.Searcher.open(folder) as s:
        return [[(h.name, h.score, h.inliers) for h in s.query(q, top=30).hits] for q in QUERIES]


def _index(folder: Path):
    from delfx.engine.build import _load_index

    return _load_index(folder, mf.read(folder))


def assert_same_collection(a: Path, b: Path) -> None:
    ma, mb = mf.read(a), mf.read(b)
    ia, names_a = _index(a)
    ib, names_b = _index(b)
    assert names_a == names_b
    seg_a = local.segments_of(ia)
    merged = {}
    for k in ("offsets", "image_ids"):  # postings of all segments, word by word
        from delfx.index.invfile import InvertedFile

        merged[k] = [
            getattr(InvertedFile(s[0].offsets.size - 1, s).compact().segments[0], k)
            for s in (seg_a, local.segments_of(ib))
        ]
        assert np.array_equal(*merged[k]), k
    st_a, st_b = local.stats_of(ia), local.stats_of(ib)
    assert sorted(st_a) == sorted(st_b)
    for k in st_a:
        assert np.array_equal(st_a[k], st_b[k]), k
    paths = [[x / s["features"] for s in m["shards"]] for x, m in ((a, ma), (b, mb))]
    with FeatureSet(paths[0]) as fa, FeatureSet(paths[1]) as fb:
        assert fa.names() == fb.names()
        for name in fa.names():
            x, y = fa.get(name), fb.get(name)
            assert np.array_equal(x.keypoints, y.keypoints), name
            assert np.array_equal(x.descriptors, y.descriptors), name
    assert ma["index"]["config"] == mb["index"]["config"]
    assert _results(a) == _results(b)


def test_four_shards_in_one_process_equal_a_single_build(sequential: Path, tmp_path: Path) -> None:
    folder = _create(tmp_path / "c", dist=Distributor(shards=4))
    m = mf.read(folder)
    assert [s["features"] for s in m["shards"]] == [mf.shard_names(i)[0] for i in range(4)]
    assert [s["first"] for s in m["shards"]] == [0, 14, 28, 42]
    assert_same_collection(sequential, folder)
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(
        [".lock", "collection.json", "index", *(s["features"] for s in m["shards"])]
    )


def test_four_shards_on_ray_equal_a_single_build(
    ray_session, sequential: Path, tmp_path: Path
) -> None:
    folder = _create(tmp_path / "c", dist=Distributor("ray", shards=4))
    assert len(mf.read(folder)["shards"]) == 4
    assert_same_collection(sequential, folder)


def test_slices_then_one_create_finishes(sequential: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "c"
    args = ["-q", "index", "create", str(folder), "--images", str(SAMPLES), "--pipeline", SPEC,
            "--workers", "1", "--no-progress"]  # fmt: skip
    for i in (1, 0):
        assert cli_main([*args, "--shard", f"{i}/2"]) == 0
        assert f"shard {i} of 2 extracted" in capsys.readouterr().out
    assert not mf.is_collection(folder)
    assert json.loads((folder / "shards.json").read_text())["n_shards"] == 2
    assert cli_main(args) == 0  # finds the plan, skips the done shards, indexes
    assert "created" in capsys.readouterr().out
    assert not (folder / "shards.json").exists() and not list(folder.glob("*.done"))
    assert_same_collection(sequential, folder)


def test_sharded_add_equals_a_sequential_add(ray_session, tmp_path: Path) -> None:
    plain = _create(tmp_path / "plain", SAMPLES / "groups")
    engine.add(plain, [SAMPLES / "distractors"], workers=1, progress=False)
    spread = _create(tmp_path / "spread", SAMPLES / "groups", Distributor(shards=2))
    added = engine.add(
        spread, [SAMPLES / "distractors"], progress=False, distributor=Distributor("ray", shards=3)
    )
    assert len(added) == 13
    m = mf.read(spread)
    assert [s["first"] for s in m["shards"]] == [0, 22, 44, 48, 52]
    assert m["next_shard"] == 5
    assert_same_collection(plain, spread)

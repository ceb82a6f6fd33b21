"""Shard indexes merged into one equal a single build: postings, statistics, rankings.

Each shard is indexed on its own with the model of one trained index (``--model-from``); the
merge concatenates their lists word by word with shifted image ids and recomputes idf, norms
and γ. Checked against one build over every image for the three index kinds, through the
library on synthetic features and through the command line on the samples' SIFT features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from delfx import build_index, extract, merge_index
from delfx.cli import main as cli_main
from delfx.errors import InputError
from delfx.features.sift import PRESETS
from delfx.index import local
from delfx.io.descriptor_sample import load_descriptors
from delfx.io.featurestore import FeatureReader
from tests.conftest import SAMPLES
from tests.test_index_safety import _features

KINDS = {
    "he": local.IndexConfig(kind="he", n_words=32, points_per_word=40),
    "asmk": local.IndexConfig(kind="asmk", n_words=32, points_per_word=40),
    "voctree": local.IndexConfig(kind="voctree", branch=4, height=3),
}
QUERIES = tuple(f"q{i}" for i in range(10))


def _same_index(a: Path, b: Path, queries: list[np.ndarray], top: int) -> None:
    ia, names_a, _ = build_index.load(a, mmap=False)
    ib, names_b, mb = build_index.load(b, mmap=False)
    assert names_a == names_b and ia.n_images == ib.n_images
    assert len(mb["segments"]) == 1
    sa = local.segments_of(ia)
    seg_b = local.segments_of(ib)[0]
    assert len(sa) == 1  # the single build wrote one segment
    assert np.array_equal(sa[0].offsets, seg_b.offsets)
    assert np.array_equal(sa[0].image_ids, seg_b.image_ids)
    assert sorted(sa[0].payload) == sorted(seg_b.payload)
    for k in sa[0].payload:
        assert np.array_equal(sa[0].payload[k], seg_b.payload[k]), k
    st_a, st_b = local.stats_of(ia), local.stats_of(ib)  # idf, norms (γ for ASMK*)
    assert sorted(st_a) == sorted(st_b)
    for k in st_a:
        assert np.array_equal(st_a[k], st_b[k]), k
    for q in queries:
        ids_a, sc_a = ia.search(q, top)
        ids_b, sc_b = ib.search(q, top)
        assert len(ids_a) == min(top, ia.n_images)
        assert np.array_equal(ids_a, ids_b) and np.array_equal(sc_a, sc_b)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_two_shard_indexes_merge_into_the_single_build(kind: str, tmp_path: Path) -> None:
    names = [f"db/im{i:03d}" for i in range(160)]
    feats = _features(tmp_path / "f.h5", [n[3:] for n in names], queries=QUERIES, seed=5)
    with FeatureReader(feats) as r:
        train, _ = load_descriptors(r, r.names("db/"), None, 0)
        queries = [r.descriptors(n) for n in r.names("query/")]
    single = tmp_path / "single"
    build_index.build(KINDS[kind], feats, single, train_descriptors=train, train_source="db",
                      progress=False)  # fmt: skip
    shards = []
    for i, part in enumerate((names[:70], names[70:])):
        out = tmp_path / f"shard{i}"
        build_index.build(KINDS[kind], feats, out, model_from=single, names=part,
                          batch_images=30, progress=False)  # fmt: skip
        shards.append(out)
    merged = merge_index.merge(tmp_path / "merged", shards, chunk=50)  # many word ranges
    _same_index(single, merged, queries, top=100)


def test_merge_refuses_shards_of_another_model(tmp_path: Path) -> None:
    feats = _features(tmp_path / "f.h5", [f"im{i}" for i in range(40)], seed=1)
    with FeatureReader(feats) as r:
        train, _ = load_descriptors(r, r.names("db/"), None, 0)
    conf = KINDS["asmk"]
    a, b = tmp_path / "a", tmp_path / "b"
    names = [f"db/im{i}" for i in range(40)]
    build_index.build(conf, feats, a, train_descriptors=train, names=names[:20], progress=False)
    build_index.build(conf, feats, b, train_descriptors=train[::-1].copy(), names=names[20:],
                      progress=False)  # fmt: skip
    with pytest.raises(InputError, match="another model"):
        merge_index.merge(tmp_path / "m", [a, b])
    c = tmp_path / "c"
    build_index.build(conf, feats, c, model_from=a, names=names[:5], progress=False)
    with pytest.raises(InputError, match="in two shards"):
        merge_index.merge(tmp_path / "m", [a, c])
    assert not (tmp_path / "m").exists()


def test_cli_shards_of_the_samples_merge_into_the_single_build(tmp_path: Path) -> None:
    """Shards extracted by two array tasks, indexed apart, merged: the one-process index."""
    feats = tmp_path / "f.h5"
    conf = extract.ExtractConfig(sift=PRESETS["rootsift"], workers=1)
    extract.main(conf, feats, images_dir=SAMPLES, progress=False)
    base = ["-q", "extract", "sift", "--images", str(SAMPLES), "--out", str(tmp_path / "g.h5")]
    for i in (0, 1):
        assert cli_main([*base, "--shard", f"{i}/2", "--workers", "1"]) == 0
    parts = [tmp_path / "g.h5.shards" / f"features-0000{i}.h5" for i in (0, 1)]
    build = ["-q", "index", "build", "--kind", "asmk", "--codebook-size", "256"]
    single = tmp_path / "single"
    assert cli_main([*build, "--features", str(feats), "--codebook-from", str(feats),
                     "--out", str(single)]) == 0  # fmt: skip
    for i, part in enumerate(parts):
        out = [
            "--features",
            str(part),
            "--model-from",
            str(single),
            "--out",
            str(tmp_path / f"s{i}"),
        ]
        assert cli_main([*build, *out]) == 0
    merged = tmp_path / "merged"
    assert cli_main(["-q", "index", "merge", str(merged), str(tmp_path / "s0"),
                     str(tmp_path / "s1")]) == 0  # fmt: skip
    with FeatureReader(feats) as r:
        queries = [r.descriptors(n) for n in r.names("db/")[::6]]
    assert len(queries) == 10
    _same_index(single, merged, queries, top=100)

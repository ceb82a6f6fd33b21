"""Memory-mapped index segments and stored statistics give the results of a loaded index."""

from __future__ import annotations

import numpy as np
import pytest

from delfx import build_index
from delfx.index import local
from delfx.index.storage import IndexDir, save_arrays
from delfx.io import npzmap
from delfx.io.npzmap import is_mapped, map_npz
from tests.test_index_safety import _features

KINDS = {
    "he": local.IndexConfig(kind="he", n_words=16, points_per_word=40),
    "asmk": local.IndexConfig(kind="asmk", n_words=16, points_per_word=40),
    "voctree": local.IndexConfig(kind="voctree", branch=3, height=3),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def appended(request, tmp_path_factory):
    """An index built from 10 images, then appended to twice (3 + 7 images, 2 segments)."""
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"mmap-{kind}")
    names = [f"db/im{i:02d}" for i in range(20)]
    feats = _features(tmp / "f.h5", [n[3:] for n in names], queries=("q0", "q1", "q2"), seed=3)
    train = _features(tmp / "t.h5", [f"t{i}" for i in range(30)], seed=4)
    from delfx.io.descriptor_sample import load_descriptors
    from delfx.io.featurestore import FeatureReader

    with FeatureReader(train) as r:
        x, _ = load_descriptors(r, r.names(), None, 0)
    out = tmp / "idx"
    build_index.build(KINDS[kind], feats, out, train_descriptors=x, train_source="t",
                      names=names[:10], batch_images=4, progress=False)  # fmt: skip
    build_index.append(out, feats, names[10:13], progress=False)
    build_index.append(out, feats, names[13:], batch_images=4, progress=False)
    return out, feats


def _queries(feats):
    from delfx.io.featurestore import FeatureReader

    with FeatureReader(feats) as r:
        return [r.descriptors(n) for n in r.names("query/")]


def test_mapped_equals_loaded(appended, monkeypatch):
    out, feats = appended
    monkeypatch.setattr(npzmap, "MAP_FROM_BYTES", 0)  # map even these small arrays
    mapped, names_m, manifest = build_index.load(out)
    loaded, names_l, _ = build_index.load(out, mmap=False)
    assert len(manifest["segments"]) == 6 and names_m == names_l and len(names_m) == 20
    segs = local.segments_of(mapped)
    assert all(is_mapped(s.image_ids) for s in segs if s.n_postings)
    assert not any(is_mapped(s.image_ids) for s in local.segments_of(loaded))
    # stored statistics equal those derived from the postings
    for (k, a), b in zip(local.stats_of(mapped).items(), local.stats_of(loaded).values(),
                         strict=True):  # fmt: skip
        assert np.array_equal(a, b), k
    for q in _queries(feats):
        ids_m, s_m = mapped.search(q, 20)
        ids_l, s_l = loaded.search(q, 20)
        assert np.array_equal(ids_m, ids_l) and np.array_equal(s_m, s_l)
        assert s_m[0] > 0


def test_stats_are_read_not_derived(appended, monkeypatch):
    """An open takes idf and norms from the stats file: derivation is never called."""
    out, feats = appended
    from delfx.index import kernels

    def boom(*a, **k):
        raise AssertionError("statistics were recomputed on open")

    monkeypatch.setattr(kernels, "image_word_stats", boom)
    monkeypatch.setattr(kernels, "tree_norms", boom)
    import delfx.index.asmk as asmk_mod

    monkeypatch.setattr(asmk_mod, "gamma_of", boom)
    index, _, _ = build_index.load(out)
    assert index.search(_queries(feats)[0], 5)[1][0] > 0


def test_stats_of_other_segments_are_recomputed(appended, tmp_path, caplog):
    out, _ = appended
    store = IndexDir(out)
    manifest = store.manifest()
    bad = dict(manifest, segments=manifest["segments"][:-1])
    assert store.read_stats(manifest) is not None
    assert store.read_stats(bad) is None
    assert "statistics of other segments" in caplog.text


def test_map_npz_reads_headers_only(tmp_path):
    big = np.arange(200_000, dtype=np.uint32)
    path = save_arrays(tmp_path / "a.npz", {"big": big, "small": np.arange(3), "s": np.int64(5)})
    arrays = map_npz(path)
    assert isinstance(arrays["big"], np.memmap) and np.array_equal(arrays["big"], big)
    assert not isinstance(arrays["small"], np.memmap) and int(arrays["s"]) == 5
    raw = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    from delfx.errors import InputError

    with pytest.raises(InputError, match="cut.npz"):
        map_npz(tmp_path / "cut.npz")


def test_merged_segments_give_the_same_results(appended, tmp_path):
    """A streaming merge (tiny chunks: many word ranges) keeps postings, stats and scores."""
    import shutil

    out, feats = appended
    copy = tmp_path / "merged"
    shutil.copytree(out, copy)
    before, names_b, m_b = build_index.load(copy)
    build_index.merge_segments(copy, chunk=7)
    after, names_a, m_a = build_index.load(copy)
    assert len(m_b["segments"]) == 6 and len(m_a["segments"]) == 1 and names_a == names_b
    merged = local.segments_of(after)[0]
    inv = type(local.segments_of(before)[0])  # Segment
    from delfx.index.invfile import InvertedFile

    ref = InvertedFile(merged.offsets.size - 1, local.segments_of(before)).compact().segments[0]
    assert isinstance(merged, inv)
    assert np.array_equal(merged.offsets, ref.offsets)
    assert np.array_equal(merged.image_ids, ref.image_ids)
    for k in ref.payload:
        assert np.array_equal(merged.payload[k], ref.payload[k])
    for q in _queries(feats):
        a, b = before.search(q, 20), after.search(q, 20)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    left = sorted(p.name for p in copy.iterdir())
    assert left == sorted([".lock", "index.json", m_a["model"], *m_a["segments"], m_a["stats"]])


def test_cli_compact_merges_an_index_folder(appended, tmp_path, capsys):
    import shutil

    from delfx.cli import main as cli_main

    out, _ = appended
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    assert cli_main(["index", "compact", str(copy)]) == 0
    assert "merged into one" in capsys.readouterr().out
    assert len(IndexDir(copy).manifest()["segments"]) == 1

"""The shared inverted file and the index folder, against plain references."""

from __future__ import annotations

import numpy as np
import pytest

from delfx.errors import InputError
from delfx.index.invfile import InvertedFile, accumulate, build_segment
from delfx.index.storage import IndexDir, load_arrays, save_arrays


def _random_batch(rng, first_id, n_images, n_words, per_image=30):
    words, ids, vals = [], [], []
    for i in range(first_id, first_id + n_images):
        w = rng.integers(0, n_words, size=rng.integers(0, per_image))
        words.append(w)
        ids.append(np.full(w.size, i))
        vals.append(rng.random(w.size))
    return np.concatenate(words), np.concatenate(ids), np.concatenate(vals)


def test_lookup_matches_a_scan_of_all_postings():
    rng = np.random.default_rng(0)
    n_words = 50
    inv = InvertedFile(n_words)
    all_w, all_i, all_v = [], [], []
    for first in (0, 20, 35):  # three segments
        w, i, v = _random_batch(rng, first, 15 if first else 20, n_words)
        inv = inv.add(build_segment(w, i, n_words, {"v": v}))
        all_w.append(w)
        all_i.append(i)
        all_v.append(v)
    w, i, v = map(np.concatenate, (all_w, all_i, all_v))
    query = np.array([3, 7, 7, 49, 0])
    hits = inv.lookup(query)
    got = sorted(
        zip(
            hits.query_pos.tolist(),
            hits.image_ids.tolist(),
            hits.payload["v"].tolist(),
            strict=True,
        )
    )
    want = sorted(
        (qp, int(i[p]), float(v[p]))
        for qp, word in enumerate(query)
        for p in np.flatnonzero(w == word)
    )
    assert got == want
    # scores through accumulate equal a dense matrix product
    dense = np.zeros((50, n_words))
    np.add.at(dense, (i, w), v)
    qvec = np.bincount(query, minlength=n_words)
    hits_unique = inv.lookup(np.unique(query))
    qweights = qvec[np.unique(query)][hits_unique.query_pos]
    scores = accumulate(hits_unique.image_ids, hits_unique.payload["v"] * qweights, 50)
    np.testing.assert_allclose(scores, dense @ qvec)


def test_document_frequency_and_compact():
    rng = np.random.default_rng(1)
    n_words = 20
    w1, i1, v1 = _random_batch(rng, 0, 10, n_words)
    w2, i2, v2 = _random_batch(rng, 10, 10, n_words)
    inv = InvertedFile(n_words).add(build_segment(w1, i1, n_words, {"v": v1}))
    inv = inv.add(build_segment(w2, i2, n_words, {"v": v2}))
    w, i = np.concatenate([w1, w2]), np.concatenate([i1, i2])
    want = np.array([len(set(i[w == k].tolist())) for k in range(n_words)])
    np.testing.assert_array_equal(inv.document_frequency(), want)
    merged = inv.compact()
    assert len(merged.segments) == 1 and merged.n_postings == inv.n_postings
    a, b = inv.lookup(np.arange(n_words)), merged.lookup(np.arange(n_words))

    def triples(h):
        return sorted(
            zip(h.query_pos.tolist(), h.image_ids.tolist(), h.payload["v"].tolist(), strict=True)
        )

    assert triples(a) == triples(b)


def test_bad_segment_input():
    with pytest.raises(InputError, match="out of range"):
        build_segment(np.array([5]), np.array([0]), 5)
    with pytest.raises(InputError, match="rows"):
        build_segment(np.array([1]), np.array([0]), 5, {"v": np.zeros(2)})
    with pytest.raises(InputError, match="out of range"):
        InvertedFile(5).lookup(np.array([9]))


def test_index_dir_round_trip_and_killed_writer(tmp_path):
    rng = np.random.default_rng(2)
    w, i, v = _random_batch(rng, 0, 5, 10)
    seg = build_segment(w, i, 10, {"v": v})
    d = IndexDir(tmp_path / "idx")
    with d.writing():
        model = d.write_model({"centroids": np.eye(3, dtype=np.float32)})
        fname = d.write_segment(seg, [f"img{k}" for k in range(5)], 0)
        d.commit({"kind": "toy", "model": model, "segments": [fname], "n_images": 5})
    seg2, names, first = d.read_segment(d.manifest()["segments"][0])
    np.testing.assert_array_equal(seg2.image_ids, seg.image_ids)
    np.testing.assert_array_equal(seg2.payload["v"], seg.payload["v"])
    assert names[0] == "img0" and first == 0
    # a writer killed after writing a segment but before committing: the old index is intact
    with d.writing():
        d.write_segment(seg, ["x"] * 5, 5)
    assert d.manifest()["segments"] == [fname]
    assert len(d.garbage()) == 1
    # two writers at once are refused
    with (
        d.writing(),
        pytest.raises(InputError, match="another process"),
        IndexDir(d.path).writing(),
    ):
        pass


def test_arrays_refuse_pickles(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        z.write(tmp_path / "x.npy", "x.npy")
    with pytest.raises(InputError, match="bad.npz"):
        load_arrays(tmp_path / "bad.npz")
    save_arrays(tmp_path / "ok.npz", {"a": np.arange(3)})
    assert load_arrays(tmp_path / "ok.npz")["a"].tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="no index here"):
        IndexDir(tmp_path / "none").manifest()

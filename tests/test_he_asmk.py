"""Hamming embedding and ASMK* against naive loop references on small random data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from delfx.errors import InputError
from delfx.index import kernels
from delfx.index.asmk import ASMKIndex, selectivity
from delfx.index.flat import rank
from delfx.index.hamming import (
    N_BITS,
    HEParams,
    hamming,
    he_weight,
    pack_bits,
    random_projection,
    signatures,
    train_he,
)
from delfx.index.he import HEIndex
from delfx.index.invfile import build_segment, word_chunks, word_image_runs
from delfx.index.storage import IndexDir

D, W = 24, 10


def nearest(x: np.ndarray, centroids: np.ndarray, k: int = 1) -> list[list[int]]:
    """Brute-force nearest words (float64), nearest first."""
    out = []
    for row in x.astype(np.float64):
        d = [float(np.sum((row - c.astype(np.float64)) ** 2)) for c in centroids]
        out.append(sorted(range(len(d)), key=lambda j: d[j])[:k])
    return out


@pytest.fixture(scope="module")
def data():
    """A codebook, 9 database images (one without features) and a query near image 2."""
    rng = np.random.default_rng(7)
    centroids = rng.standard_normal((W, D)).astype(np.float32) * 2
    lists = []
    for i in range(9):
        n = 0 if i == 4 else int(rng.integers(5, 30))
        w = rng.integers(0, W, n)
        lists.append((centroids[w] + rng.standard_normal((n, D))).astype(np.float32))
    lists[4] = np.zeros((0, D), np.float32)
    near = lists[2][:12] + 0.05 * rng.standard_normal((12, D)).astype(np.float32)
    query = np.concatenate([near, rng.standard_normal((6, D)).astype(np.float32) * 2])
    train = (centroids[rng.integers(0, W, 400)] + rng.standard_normal((400, D))).astype(np.float32)
    return centroids, lists, query, train


# ---- Hamming embedding ------------------------------------------------------------------------


def test_hamming_matches_unpackbits():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, 1000, dtype=np.uint64)
    b = rng.integers(0, 2**64, 1000, dtype=np.uint64)
    b[:10] = a[:10]
    ref = np.unpackbits((a ^ b).view(np.uint8)).reshape(-1, 64).sum(axis=1)
    assert np.array_equal(hamming(a, b).astype(np.int64), ref)
    assert np.all(hamming(a[:10], b[:10]) == 0)
    assert hamming(np.uint64(0), np.uint64(2**64 - 1)) == 64


def test_he_weight_cutoff():
    h = np.arange(65)
    w = he_weight(h)
    assert w[0] == 1.0
    assert w[24] == pytest.approx(math.exp(-((24 / 16) ** 2)))
    assert np.all(w[25:] == 0)
    assert he_weight(10, sigma=8, max_h=9) == 0.0


def test_projection_orthonormal_rows():
    p = random_projection(128, 64, seed=3).astype(np.float64)
    assert np.allclose(p @ p.T, np.eye(64), atol=1e-5)
    assert np.array_equal(p, random_projection(128, 64, seed=3))
    small = random_projection(24, 64, seed=1).astype(np.float64)  # D < 64: stacked blocks
    assert small.shape == (64, 24)
    assert np.allclose(small[:24] @ small[:24].T, np.eye(24), atol=1e-5)


def test_signatures_match_per_bit_loop(data):
    centroids, lists, query, train = data
    words = np.array([n[0] for n in nearest(train, centroids)])
    params = train_he(train, words, W, seed=5, min_count=30)
    counts = np.bincount(words, minlength=W)
    proj = params.projection.astype(np.float64)
    z_train = train.astype(np.float64) @ proj.T
    for w in range(W):  # thresholds: per-word medians, global medians for sparse words
        ref = np.median(z_train[words == w] if counts[w] >= 30 else z_train, axis=0)
        assert np.allclose(params.thresholds[w], ref, rtol=0, atol=1e-12)
    x = np.concatenate(lists)
    xw = np.array([n[0] for n in nearest(x, centroids)])
    sigs = signatures(x, xw, params)
    for i in range(x.shape[0]):
        z = proj @ x[i].astype(np.float64)
        ref = 0
        for j in range(N_BITS):
            if z[j] > params.thresholds[xw[i], j]:
                ref |= 1 << j
        assert int(sigs[i]) == ref
    again = HEParams.from_state(params.state())
    assert np.array_equal(signatures(x, xw, again), sigs)


def test_pack_bits_layout():
    rng = np.random.default_rng(2)
    bits = rng.random((7, 130)) > 0.5
    packed = pack_bits(bits)
    assert packed.shape == (7, 3) and packed.dtype == np.uint64
    for i in range(7):
        for j in range(130):
            assert (int(packed[i, j // 64]) >> (j % 64)) & 1 == int(bits[i, j])
        assert int(packed[i, 2]) >> 2 == 0  # padding bits are 0


# ---- HE index ---------------------------------------------------------------------------------


def he_reference(index: HEIndex, lists, query) -> np.ndarray:
    """Explicit loops over query (descriptor, word) pairs x database descriptors."""
    c, params = index.centroids, index.params
    n = len(lists)
    db = []  # per image: list of (word, signature)
    for x in lists:
        ws = [nn[0] for nn in nearest(x, c)] if len(x) else []
        db.append([(w, int(signatures(x[i : i + 1], [w], params)[0])) for i, w in enumerate(ws)])
    df = {w: sum(any(pw == w for pw, _ in img) for img in db) for w in range(W)}
    idf = {w: (math.log(n / df[w]) if df[w] else 0.0) for w in range(W)}
    norms = []
    for img in db:
        cnt: dict[int, int] = {}
        for w, _ in img:
            cnt[w] = cnt.get(w, 0) + 1
        norms.append(math.sqrt(sum(idf[w] ** 2 * k * k for w, k in cnt.items())))
    qpairs = []
    for i, ws in enumerate(nearest(query, c, index.ma)):
        for w in ws:
            qpairs.append((w, int(signatures(query[i : i + 1], [w], params)[0])))
    qcnt: dict[int, int] = {}
    for w, _ in qpairs:
        qcnt[w] = qcnt.get(w, 0) + 1
    qnorm = math.sqrt(sum(idf[w] ** 2 * k * k for w, k in qcnt.items()))
    scores = np.zeros(n)
    for d, img in enumerate(db):
        total = 0.0
        for qw, qs in qpairs:
            for dw, ds in img:
                if qw == dw:
                    h = bin(qs ^ ds).count("1")
                    if h <= 24:
                        total += math.exp(-(h * h) / 256.0) * idf[qw] ** 2
        scores[d] = total / (qnorm * norms[d]) if norms[d] > 0 else 0.0
    return scores


@pytest.fixture(scope="module")
def he_index(data):
    centroids, lists, _, train = data
    return HEIndex.from_codebook(centroids, train, seed=1, ma=3).add(lists)


def test_he_scores_match_naive_reference(data, he_index):
    _, lists, query, _ = data
    got = he_index.score_all(query)
    ref = he_reference(he_index, lists, query)
    assert np.allclose(got, ref, rtol=0, atol=1e-9)
    assert got[4] == 0.0  # no features
    df = he_index.ivf.document_frequency()
    assert np.array_equal(he_index.idf, np.where(df > 0, np.log(9 / np.maximum(df, 1)), 0.0))
    assert int(np.argmax(got)) == 2
    ids, scores = he_index.search(query, top_k=3)
    assert ids[0] == 2 and np.all(np.diff(scores) <= 0)


def test_he_add_in_batches_equals_one_build(data, he_index):
    centroids, lists, query, _ = data
    empty = HEIndex(centroids, he_index.params, ma=3)
    two = empty.add(lists[:5]).add(lists[5:], image_ids=range(5, 9))
    assert len(two.ivf.segments) == 2
    assert np.array_equal(two.idf, he_index.idf) and np.array_equal(two.norms, he_index.norms)
    assert np.array_equal(two.score_all(query), he_index.score_all(query))
    merged = HEIndex(centroids, he_index.params, two.ivf.compact(), 9, ma=3)
    assert np.allclose(merged.score_all(query), he_index.score_all(query), rtol=0, atol=1e-12)


def test_he_multiple_assignment_is_query_side_only(data, he_index):
    centroids, lists, query, _ = data
    one = HEIndex(centroids, he_index.params, ma=1).add(lists)
    for a, b in zip(one.ivf.segments, he_index.ivf.segments, strict=True):
        assert np.array_equal(a.image_ids, b.image_ids)
        assert np.array_equal(a.payload["sig"], b.payload["sig"])
    assert np.array_equal(one.norms, he_index.norms)
    assert one.encode_query(query)[0].size == query.shape[0]
    assert he_index.encode_query(query)[0].size == 3 * query.shape[0]
    assert not np.allclose(one.score_all(query), he_index.score_all(query))
    assert np.allclose(one.score_all(query), he_reference(one, lists, query), atol=1e-9)
    tight = HEIndex(centroids, he_index.params, he_index.ivf, 9, ma=3, ma_ratio=1.0)
    assert np.array_equal(tight.score_all(query), one.score_all(query))


def test_scoring_in_word_chunks_is_exact(monkeypatch, data, he_index, asmk_index):
    """The numpy kernels gather hits in blocks; tiny blocks give the scores of one block."""
    _, _, query, _ = data
    monkeypatch.setenv(kernels.ENV, "0")
    whole = [he_index.score_all(query), asmk_index.score_all(query)]
    words = he_index.encode_query(query)[0]
    parts = word_chunks(he_index.ivf, words, max_hits=7)
    assert len(parts) > 5 and parts[0].start == 0 and parts[-1].stop == words.size
    lengths = sum(np.diff(s.offsets)[words] for s in he_index.ivf.segments)
    for a, b in zip(parts[:-1], parts[1:], strict=True):
        assert a.stop == b.start and (lengths[a].sum() <= 7 or a.stop - a.start == 1)
    monkeypatch.setattr(kernels, "_MAX_HITS", 7)
    chunked = [he_index.score_all(query), asmk_index.score_all(query)]
    for a, b in zip(whole, chunked, strict=True):
        assert np.allclose(a, b, rtol=0, atol=1e-12)


def test_word_image_runs_any_order():
    rng = np.random.default_rng(4)
    words, ids = rng.integers(0, 6, 200), np.sort(rng.integers(0, 15, 200))
    ordered = build_segment(words, ids, 6)
    perm = rng.permutation(200)
    shuffled = build_segment(words[perm], ids[perm], 6)
    ref = {}
    for w, i in zip(words.tolist(), ids.tolist(), strict=True):
        ref[(w, i)] = ref.get((w, i), 0) + 1
    for seg in (ordered, shuffled):
        rw, ri, rc = word_image_runs(seg, 6)
        got = dict(zip(zip(rw.tolist(), ri.tolist(), strict=True), rc.tolist(), strict=True))
        assert got == ref and rw.size == len(ref)


def test_he_state_round_trip(tmp_path, data, he_index):
    _, _, query, _ = data
    meta, arrays, segments = he_index.state()
    json.dumps(meta)
    folder = IndexDir(tmp_path / "idx")
    names = [folder.write_segment(s, [f"im{i}" for i in range(3)], 0) for s in segments]
    model = folder.read_model(folder.write_model(arrays))
    again = HEIndex.from_state(meta, model, [folder.read_segment(n)[0] for n in names])
    assert np.array_equal(again.score_all(query), he_index.score_all(query))
    with pytest.raises(InputError):
        HEIndex.from_state({**meta, "kind": "asmk"}, arrays, segments)


# ---- ASMK* ------------------------------------------------------------------------------------


def asmk_aggregate(x, centroids, assignments):
    """word -> summed float64 residual, by explicit loops in descriptor order."""
    acc: dict[int, np.ndarray] = {}
    for i, ws in enumerate(assignments):
        for w in ws:
            r = x[i].astype(np.float64) - centroids[w].astype(np.float64)
            acc[w] = acc[w] + r if w in acc else r
    return {w: v > 0 for w, v in acc.items()}


def asmk_reference(index: ASMKIndex, lists, query) -> np.ndarray:
    c = index.centroids
    q = asmk_aggregate(query, c, nearest(query, c, index.ma))
    scores = np.zeros(len(lists))
    for d, x in enumerate(lists):
        if len(x) == 0:
            continue
        y = asmk_aggregate(x, c, nearest(x, c))
        total = 0.0
        for w, qb in q.items():
            if w in y:
                u = 1.0 - 2.0 * int(np.sum(qb != y[w])) / qb.size
                total += math.copysign(abs(u) ** 3, u) if u > 0 else 0.0
        scores[d] = total / math.sqrt(len(q)) / math.sqrt(len(y))
    return scores


@pytest.fixture(scope="module")
def asmk_index(data):
    centroids, lists, _, _ = data
    return ASMKIndex.from_codebook(centroids, ma=5).add(lists)


def test_asmk_scores_match_direct_computation(data, asmk_index):
    centroids, lists, query, _ = data
    got = asmk_index.score_all(query)
    assert np.allclose(got, asmk_reference(asmk_index, lists, query), rtol=0, atol=1e-9)
    assert got[4] == 0.0
    single = ASMKIndex(centroids, asmk_index.ivf, 9, ma=1)
    assert int(np.argmax(single.score_all(query))) == 2
    assert single.score_all(lists[3])[3] == pytest.approx(1.0, abs=1e-12)  # K(X, X) = 1
    # the stored bits are the packed signs of the summed residuals
    y = asmk_aggregate(lists[7], centroids, nearest(lists[7], centroids))
    seg = asmk_index.ivf.segments[0]
    for w, b in y.items():
        lo, hi = seg.offsets[w], seg.offsets[w + 1]
        row = seg.payload["bits"][lo:hi][seg.image_ids[lo:hi] == 7]
        assert np.array_equal(row, pack_bits(b[None]))


def test_asmk_selectivity():
    u = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    assert np.allclose(selectivity(u), [0, 0, 0, 0.125, 1.0])
    assert np.allclose(selectivity(u, alpha=1, tau=-0.6), [0, -0.5, 0, 0.5, 1.0])


def test_asmk_add_in_batches_equals_one_build(data, asmk_index):
    centroids, lists, query, _ = data
    two = ASMKIndex(centroids, ma=5).add(lists[:3]).add(lists[3:])
    assert np.array_equal(two.gamma, asmk_index.gamma)
    assert np.array_equal(two.score_all(query), asmk_index.score_all(query))


def test_asmk_multiple_assignment_is_query_side_only(data, asmk_index):
    centroids, lists, query, _ = data
    one = ASMKIndex(centroids, ma=1).add(lists)
    for a, b in zip(one.ivf.segments, asmk_index.ivf.segments, strict=True):
        assert np.array_equal(a.payload["bits"], b.payload["bits"])
    assert np.array_equal(one.gamma, asmk_index.gamma)
    assert not np.allclose(one.score_all(query), asmk_index.score_all(query))
    assert np.allclose(one.score_all(query), asmk_reference(one, lists, query), atol=1e-9)


def test_asmk_projection_and_state(data):
    centroids, lists, query, _ = data
    idx = ASMKIndex.from_codebook(centroids, n_bits=16, seed=2, ma=2).add(lists)
    assert idx.n_bits == 16 and idx.ivf.segments[0].payload["bits"].shape[1] == 1
    meta, arrays, segments = idx.state()
    json.dumps(meta)
    again = ASMKIndex.from_state(meta, arrays, segments)
    assert np.array_equal(again.score_all(query), idx.score_all(query))


# ---- errors and ranking -----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["he", "asmk"])
def test_errors(data, he_index, asmk_index, which):
    idx = he_index if which == "he" else asmk_index
    with pytest.raises(InputError, match="no descriptors"):
        idx.search(np.zeros((0, D), np.float32))
    with pytest.raises(InputError, match=r"expected \(N, 24\)"):
        idx.search(np.zeros((3, D + 1), np.float32))
    with pytest.raises(InputError, match="image 1"):
        idx.add([np.zeros((2, D)), np.zeros((2, D + 2))])
    with pytest.raises(InputError, match="next 1 ids"):
        idx.add([np.zeros((2, D))], image_ids=[0])
    with pytest.raises(InputError, match="NaN"):
        idx.search(np.full((2, D), np.nan))
    grown = idx.add([np.zeros((0, D)), np.zeros((0, D))])  # images without features
    assert grown.n_images == 11 and np.all(grown.score_all(data[2])[9:] == 0)


def test_empty_index_and_rank_ties(data):
    centroids, _, query, train = data
    ids, scores = HEIndex.from_codebook(centroids, train).search(query)
    assert ids.size == 0 and scores.size == 0
    ids, scores = rank(np.array([0.5, 0.0, 0.5, 0.9, 0.0]), top_k=3)
    assert ids.tolist() == [3, 0, 2] and scores.tolist() == [0.9, 0.5, 0.5]
    assert rank(np.array([0.0, 0.0, 0.0]), top_k=2)[0].tolist() == [0, 1]

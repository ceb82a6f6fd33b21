"""The scan kernels (numba and numpy) against the pre-kernel numpy scorers and hand-made sums.

Every case is scored three ways: the compiled kernel, the vectorised numpy kernel and the
reference of ``tests/scoring_reference.py`` (the scorers as they were before the kernels). The
rankings must be identical and the scores equal within 1e-9 (the issue asks 1e-5).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from delfx.errors import InputError
from delfx.features.sift import SiftConfig, extract_sift
from delfx.index import kernels
from delfx.index.asmk import ASMKIndex
from delfx.index.bow import TreeIndex
from delfx.index.flat import rank
from delfx.index.he import HEIndex
from delfx.index.invfile import InvertedFile, Segment
from delfx.index.kmeans import train_flat
from delfx.index.voctree import train_tree
from delfx.io.images import read_image
from tests.conftest import SAMPLES
from tests.scoring_reference import asmk_scores, he_scores, tree_scores

BACKENDS = ["numba", "numpy"]


def _scores(monkeypatch, backend: str, fn, *args) -> np.ndarray:
    monkeypatch.setenv(kernels.ENV, "1" if backend == "numba" else "0")
    assert kernels.backend() == backend
    return fn(*args)


def _same(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert np.allclose(got, ref, rtol=0, atol=1e-9)
    assert np.array_equal(rank(got, None)[0], rank(ref, None)[0])


def _random_lists(rng, n_images: int, dim: int, mean: int = 40) -> list[np.ndarray]:
    centres = rng.normal(size=(12, dim)).astype(np.float32)
    out = []
    for _ in range(n_images):
        n = int(rng.integers(0, 2 * mean))  # some images have no features
        x = centres[rng.integers(0, 12, n)] + 0.4 * rng.normal(size=(n, dim))
        out.append(x.astype(np.float32))
    return out


@pytest.fixture(scope="module")
def random_case():
    rng = np.random.default_rng(0)
    dim = 32
    train = np.concatenate(_random_lists(rng, 60, dim))
    lists = _random_lists(rng, 150, dim)
    queries = [x for x in _random_lists(rng, 6, dim) if len(x)]
    centroids = train_flat(train, 64, seed=0)
    he = HEIndex.from_codebook(centroids, train, ma=3)
    asmk = ASMKIndex.from_codebook(centroids, ma=3)
    for a, b in ((0, 50), (50, 51), (51, 150)):  # three segments, one of a single image
        he, asmk = he.add(lists[a:b]), asmk.add(lists[a:b])
    tree = TreeIndex(train_tree(train, 4, 3, seed=0))
    for a, b in ((0, 70), (70, 150)):
        tree = tree.add(lists[a:b])
    return he, asmk, tree, queries


@pytest.fixture(scope="module")
def real_case():
    """RootSIFT of 14 shipped photos: 10 indexed (two segments), 4 as queries."""
    photos = sorted(SAMPLES.glob("groups/*/*.jpg"))[:14]
    conf = SiftConfig(n_features=300, root=True)
    feats = [extract_sift(read_image(p), conf).descriptors for p in photos]
    db, queries = feats[:10], feats[10:]
    train = np.concatenate(db)
    centroids = train_flat(train, 128, seed=0)
    he = HEIndex.from_codebook(centroids, train).add(db[:6]).add(db[6:])
    asmk = ASMKIndex.from_codebook(centroids).add(db[:6]).add(db[6:])
    tree = TreeIndex(train_tree(train, 6, 3, seed=0)).add(db[:6]).add(db[6:])
    return he, asmk, tree, queries


@pytest.mark.parametrize("case", ["random_case", "real_case"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_match_reference(request, monkeypatch, case, backend):
    he, asmk, tree, queries = request.getfixturevalue(case)
    assert len(he.ivf.segments) >= 2 and len(tree.inverted.segments) == 2
    for q in queries:
        enc = he.encode_query(q)
        _same(_scores(monkeypatch, backend, he.score_encoded, *enc), he_scores(he, *enc))
        enc = asmk.encode_query(q)
        _same(_scores(monkeypatch, backend, asmk.score_encoded, *enc), asmk_scores(asmk, *enc))
        leaves = tree.words(q)
        got = _scores(monkeypatch, backend, tree.scores_from_leaves, leaves)
        _same(got, tree_scores(tree, leaves))
        assert got.max() > 0


def test_numba_and_numpy_agree_bit_for_bit_on_the_tree(monkeypatch, real_case):
    """Both add a word's terms to an image in query-word order: the same float64 sums."""
    _, _, tree, queries = real_case
    for q in queries:
        leaves = tree.words(q)
        a = _scores(monkeypatch, "numba", tree.scores_from_leaves, leaves)
        b = _scores(monkeypatch, "numpy", tree.scores_from_leaves, leaves)
        assert np.array_equal(a, b)


def _hand_he(offsets, ids, sigs, words, qsigs, weights, lut, max_h, base, n):
    out = np.zeros(n)
    for w, qs, f in zip(words, qsigs, weights, strict=True):
        for p in range(offsets[w], offsets[w + 1]):
            h = bin(int(sigs[p]) ^ int(qs)).count("1")
            if h <= max_h:
                out[int(ids[p]) - base] += lut[h] * f
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_he_scan_by_hand_with_empty_lists_and_ids_near_2_32(backend):
    """Ids just below 2**32 (uint32), scored into a window ``base..``; words with empty lists."""
    rng = np.random.default_rng(1)
    base = 2**32 - 7
    ids = np.sort(rng.integers(base, 2**32, 30)).astype(np.uint32)
    words = rng.choice([0, 2, 5], 30)  # words 1, 3, 4 have empty lists
    order = np.argsort(words, kind="stable")
    offsets = np.r_[0, np.cumsum(np.bincount(words, minlength=6))].astype(np.int64)
    ids, sigs = ids[order], rng.integers(0, 2**63, 30, dtype=np.uint64)
    qwords = np.array([0, 1, 2, 3, 4, 5, 5])
    qsigs = rng.integers(0, 2**63, 7, dtype=np.uint64)
    qsigs[-1] = sigs[-1]  # an exact match
    weights = rng.random(7)
    lut = np.exp(-(np.arange(65) ** 2) / 256.0)
    out = np.zeros(7)
    bad = kernels.he_scan(offsets, ids, sigs, qwords, qsigs, weights, lut, 40, out, base=base,
                          use=backend)  # fmt: skip
    assert bad == 0
    ref = _hand_he(offsets, ids, sigs, qwords, qsigs, weights, lut, 40, base, 7)
    assert np.allclose(out, ref, rtol=0, atol=1e-12) and out.max() >= weights[-1]
    # only empty lists: nothing added
    out = np.zeros(7)
    kernels.he_scan(offsets, ids, sigs, qwords[[1, 3]], qsigs[:2], weights[:2], lut, 64, out,
                    base=base, use=backend)  # fmt: skip
    assert not out.any()
    # a window that misses some images counts their postings instead of writing outside
    out = np.zeros(3)
    bad = kernels.he_scan(offsets, ids, sigs, qwords, qsigs, weights, lut, 64, out, base=base,
                          use=backend)  # fmt: skip
    beyond = sum(int(np.sum(ids[offsets[w] : offsets[w + 1]] >= base + 3)) for w in qwords)
    assert beyond > 0 and bad == beyond
    full = _hand_he(offsets, ids, sigs, qwords, qsigs, weights, lut, 64, base, 7)
    assert np.allclose(out, full[:3], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_asmk_and_tree_scan_by_hand(backend):
    rng = np.random.default_rng(2)
    base = 2**32 - 5
    ids = np.array([0, 1, 4, 2, 3, 4], dtype=np.int64) + base
    offsets = np.array([0, 3, 3, 6], dtype=np.int64)  # word 1 is empty
    bits = rng.integers(0, 2**63, (6, 2), dtype=np.uint64)
    qwords = np.array([0, 1, 2])
    qbits = rng.integers(0, 2**63, (3, 2), dtype=np.uint64)
    lut = rng.random(129)
    out = np.zeros(5)
    assert kernels.asmk_scan(offsets, ids.astype(np.uint32), bits, qwords, qbits, lut, out,
                             base=base, use=backend) == 0  # fmt: skip
    ref = np.zeros(5)
    for i, w in enumerate(qwords):
        for p in range(offsets[w], offsets[w + 1]):
            h = sum(bin(int(bits[p, k]) ^ int(qbits[i, k])).count("1") for k in range(2))
            ref[ids[p] - base] += lut[h]
    assert np.allclose(out, ref, rtol=0, atol=1e-12)

    tf = rng.integers(1, 5, 6).astype(np.uint16)
    idf, q, inv = rng.random(3), rng.random(3), rng.random(5)
    out = np.zeros(5)
    assert kernels.tree_scan(offsets, ids.astype(np.uint32), tf, qwords, idf, q, inv, out,
                             base=base, use=backend) == 0  # fmt: skip
    ref = np.zeros(5)
    for i, w in enumerate(qwords):
        for p in range(offsets[w], offsets[w + 1]):
            d = ids[p] - base
            ref[d] += min(idf[i] * tf[p] * inv[d], q[i])
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_image_and_empty_indexes(monkeypatch, backend, random_case):
    he, asmk, tree, queries = random_case
    monkeypatch.setenv(kernels.ENV, "1" if backend == "numba" else "0")
    q = queries[0]
    for empty in (type(he)(he.centroids, he.params), type(asmk)(asmk.centroids)):
        assert np.array_equal(empty.score_all(q), np.zeros(0))
    one_he = type(he)(he.centroids, he.params).add([q])
    one_asmk = type(asmk)(asmk.centroids).add([q])
    one_tree = TreeIndex(tree.tree).add([q])
    # one image: idf = log(1/1) = 0 zeroes HE and the tree; ASMK* has no idf
    assert np.array_equal(one_he.score_encoded(*one_he.encode_query(q)), np.zeros(1))
    assert np.array_equal(he_scores(one_he, *one_he.encode_query(q)), np.zeros(1))
    enc = one_asmk.encode_query(q)
    assert one_asmk.score_encoded(*enc)[0] > 0.2
    assert np.allclose(one_asmk.score_encoded(*enc), asmk_scores(one_asmk, *enc), atol=1e-12)
    assert np.array_equal(one_tree.scores(q), tree_scores(one_tree, one_tree.words(q)))
    two = type(asmk)(asmk.centroids).add([q, queries[1]])
    _same(two.score_all(q), asmk_scores(two, *two.encode_query(q)))
    featureless = type(asmk)(asmk.centroids).add([np.zeros((0, q.shape[1]), np.float32)])
    assert np.array_equal(featureless.score_all(q), np.zeros(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_removed_images_leave_the_ranking_of_the_rest(monkeypatch, backend, random_case):
    """Removal is a tombstone: the live images keep their reference order and scores."""
    he, asmk, _, queries = random_case
    monkeypatch.setenv(kernels.ENV, "1" if backend == "numba" else "0")
    live = np.ones(he.n_images, bool)
    live[np.random.default_rng(3).choice(he.n_images, 40, replace=False)] = False
    for index, ref_fn in ((he, he_scores), (asmk, asmk_scores)):
        for q in queries:
            enc = index.encode_query(q)
            ids, scores = rank(index.score_encoded(*enc), None)
            ref_ids, ref_scores = rank(ref_fn(index, *enc), None)
            keep, ref_keep = live[ids], live[ref_ids]
            assert np.array_equal(ids[keep], ref_ids[ref_keep])
            assert np.allclose(scores[keep], ref_scores[ref_keep], rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_postings_are_an_error(monkeypatch, backend, random_case):
    """A posting naming an image beyond the index (a damaged file) fails the query clearly."""
    he, *_ = random_case
    monkeypatch.setenv(kernels.ENV, "1" if backend == "numba" else "0")
    seg = he.ivf.segments[0]
    ids = seg.image_ids.copy()
    ids[0] = 2**31
    damaged = copy.copy(he)
    damaged.ivf = InvertedFile(he.n_words, (Segment(seg.offsets, ids, seg.payload),))
    w = int(np.searchsorted(seg.offsets, 0, side="right") - 1)
    with pytest.raises(InputError, match="damaged"):
        damaged.score_encoded(np.array([w]), seg.payload["sig"][:1].copy())


def test_backend_choice(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "0")
    assert kernels.backend() == "numpy" and kernels.warm() == "numpy"
    monkeypatch.setenv(kernels.ENV, "1")
    assert kernels.backend() == ("numba" if kernels.numba is not None else "numpy")
    with pytest.raises(ValueError, match="backend"):
        kernels.backend("cuda")
    monkeypatch.setattr(kernels, "numba", None)  # as if numba were not installed
    assert kernels.backend() == "numpy" and kernels.warm() == "numpy"
    with pytest.raises(ImportError, match="pip install numba"):
        kernels.backend("numba")


@pytest.mark.skipif(kernels.numba is None, reason="numba is a core dependency")
def test_blocks_and_threads_do_not_change_the_sums(monkeypatch, random_case):
    """Tiny blocks, one or two image ranges in parallel: the same float64 sums bit for bit."""
    import numba

    he, asmk, tree, queries = random_case
    monkeypatch.setenv(kernels.ENV, "1")
    q = queries[0]
    whole = [he.score_all(q), asmk.score_all(q), tree.scores(q)]
    monkeypatch.setattr(kernels, "BLOCK", 8)  # 150 images: many blocks, two ranges
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            assert kernels._parts(he.n_images) == threads
            got = [he.score_all(q), asmk.score_all(q), tree.scores(q)]
            for a, b in zip(got, whole, strict=True):
                assert np.array_equal(a, b)
    finally:
        numba.set_num_threads(before)

"""Codebooks and nearest-word search against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from delfx.errors import InputError
from delfx.index.kmeans import Quantizer, assign, train_flat


def _clustered(rng, n_centres, n, dim=32):
    centres = rng.normal(size=(n_centres, dim)).astype(np.float32) * 4
    labels = rng.integers(0, n_centres, size=n)
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32)


def brute_force(x, c, k):
    d2 = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


def test_exact_assignment_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.random((300, 16), dtype=np.float32)
    c = rng.random((50, 16), dtype=np.float32)
    np.testing.assert_array_equal(assign(x, c, 3), brute_force(x, c, 3))
    q = Quantizer(c)
    assert q.exact
    np.testing.assert_array_equal(q.search(x, 3), brute_force(x, c, 3))


@pytest.fixture(scope="module")
def large_codebook():
    rng = np.random.default_rng(1)
    train = _clustered(rng, 300, 60000)
    centroids = train_flat(train, 4096, niter=5, max_points_per_centroid=16)
    assert centroids.shape == (4096, 32)  # two-level clustering gives exactly k words
    return centroids


@pytest.mark.parametrize("kind", Quantizer.KINDS)
def test_large_codebook_quantizer_is_nearly_exact(large_codebook, kind):
    centroids = large_codebook
    rng = np.random.default_rng(1)
    q = Quantizer(centroids, kind=kind)
    assert not q.exact and q.kind == kind
    x = _clustered(rng, 300, 2000)
    got = q.search(x, 1)[:, 0]
    want = assign(x, centroids, 1)[:, 0]
    agreement = float(np.mean(got == want))
    assert agreement > 0.9, agreement
    # a wrong word is still a near one: its distance is within a few percent of the best
    d_got = ((x - centroids[got]) ** 2).sum(1)
    d_want = ((x - centroids[want]) ** 2).sum(1)
    assert np.all(d_got >= d_want - 1e-3) and np.median(d_got / d_want) == pytest.approx(1.0)


def test_dimension_mismatch():
    q = Quantizer(np.zeros((8, 4), np.float32))
    with pytest.raises(InputError, match="dimension 5 does not match the codebook's 4"):
        q.search(np.zeros((2, 5), np.float32))
    with pytest.raises(InputError, match="need at least 8"):
        train_flat(np.zeros((3, 4), np.float32), 8)


@pytest.mark.parametrize("kind", Quantizer.KINDS)
def test_saved_quantizer_answers_the_same(large_codebook, kind):
    """A quantizer saved with an index (faiss serialisation) gives the same words after a load,
    through the HE and ASMK* model state too."""
    from delfx.index.asmk import ASMKIndex
    from delfx.index.he import HEIndex

    q = Quantizer(large_codebook, kind=kind)
    x = _clustered(np.random.default_rng(5), 300, 500)
    back = Quantizer.from_bytes(large_codebook, q.to_bytes())
    assert back.kind == kind and np.array_equal(back.search(x, 5), q.search(x, 5))
    for index in (HEIndex.from_codebook(large_codebook, x), ASMKIndex(large_codebook)):
        index.quantizer = q
        meta, arrays, segs = index.state()
        assert arrays["quantizer"].dtype == np.uint8
        again = type(index).from_state(meta, arrays, segs)
        assert again.quantizer.kind == kind
        assert np.array_equal(again.words(x), index.words(x))
    with pytest.raises(InputError, match="stored quantizer"):
        Quantizer.from_bytes(large_codebook[:100], q.to_bytes())
    with pytest.raises(InputError, match="unreadable"):
        Quantizer.from_bytes(large_codebook, q.to_bytes()[:50])

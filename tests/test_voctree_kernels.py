"""Vocabulary tree kernels: first equal siblings, and the numba and numpy backends agreeing."""

from __future__ import annotations

import numpy as np
import pytest

from delfx.index import kernels, voctree
from delfx.index.voctree import VocabTree, first_equal_sibling, quantize, train_tree
from delfx.index.voctree_kernels import assign, regroup
from tests.test_voctree import assert_same_paths, random_tree


def test_first_equal_sibling_against_loops() -> None:
    rng = np.random.default_rng(8)
    blocks = rng.integers(0, 3, (300, 5, 4)).astype(np.float32)  # many exact repeats
    ref = np.tile(np.arange(5), (300, 1))
    for g in range(300):
        for j in range(5):
            ref[g, j] = next(k for k in range(j + 1) if (blocks[g, k] == blocks[g, j]).all())
    np.testing.assert_array_equal(first_equal_sibling(blocks), ref)
    # with a builder's hint: child j copies child j % 2
    hinted = blocks.copy()
    hinted[:, 2:] = hinted[:, [0, 1, 0]]
    source = np.tile(np.arange(5) % 2, (300, 1))
    source[:, :2] = [0, 1]
    np.testing.assert_array_equal(first_equal_sibling(hinted, source), first_equal_sibling(hinted))


# ---------------------------------------------------------------------------- the two backends


def _clustered(seed: int, n: int, dim: int, modes: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 6, (modes, dim))
    return (centers[rng.integers(0, modes, n)] + rng.normal(0, 1, (n, dim))).astype(np.float32)


def _with_backend(monkeypatch, name: str, fn, *args, **kw):
    monkeypatch.setenv(kernels.ENV, "1" if name == "numba" else "0")
    assert kernels.backend() == name
    return fn(*args, **kw)


def test_backends_train_the_same_tree(monkeypatch) -> None:
    """numba and DELFX_NUMBA=0 follow the same algorithm: same tree up to float32 near-ties."""
    x = _clustered(9, 6000, 24)
    kw = {"seed": 3, "niter": 10, "max_points_per_centroid": 40}
    fast = _with_backend(monkeypatch, "numba", train_tree, x, 5, 4, **kw)
    slow = _with_backend(monkeypatch, "numpy", train_tree, x, 5, 4, **kw)
    same_rows = (fast.centroids == slow.centroids).all(axis=1)
    assert same_rows.mean() > 0.98
    np.testing.assert_allclose(fast.centroids[:5], slow.centroids[:5], rtol=1e-5)
    np.testing.assert_array_equal(fast.canon[same_rows[::5]], slow.canon[same_rows[::5]])
    # quantisation through one tree: the backends agree but for near-ties
    p_fast = _with_backend(monkeypatch, "numba", quantize, fast, x)
    p_slow = _with_backend(monkeypatch, "numpy", quantize, fast, x)
    assert (p_fast == p_slow).all(axis=1).mean() > 0.999
    assert_same_paths(fast, x[:500], p_fast[:500])


def test_numba_tree_is_thread_independent_and_consistent(monkeypatch) -> None:
    numba = pytest.importorskip("numba")
    monkeypatch.setenv(kernels.ENV, "1")
    x = _clustered(10, 5000, 16)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = train_tree(x, 4, 4, seed=1)
    finally:
        numba.set_num_threads(threads)
    many = train_tree(x, 4, 4, seed=1)
    np.testing.assert_array_equal(one.centroids, many.centroids)
    # the norms the builder hands over are those a reloaded tree computes for itself
    back = VocabTree.from_state(*many.state())
    np.testing.assert_array_equal(back.sqnorms, many.sqnorms)
    np.testing.assert_array_equal(back.canon, many.canon)
    np.testing.assert_array_equal(quantize(back, x), quantize(many, x))


def test_numba_descend_and_grouped_paths_agree(monkeypatch) -> None:
    """Few descriptors go down one by one, many level by level: the same paths."""
    monkeypatch.setenv(kernels.ENV, "1")
    tree = random_tree(6, 3, 10, seed=4)
    x = np.random.default_rng(5).standard_normal((3000, 10)).astype(np.float32)
    one_by_one = quantize(tree, x)
    monkeypatch.setattr(voctree, "_DESCEND_MAX", 0)
    grouped = quantize(tree, x)
    np.testing.assert_array_equal(one_by_one, grouped)
    assert_same_paths(tree, x, grouped)


@pytest.mark.parametrize("name", ["numba", "numpy"])
def test_regroup_and_assign_backends(monkeypatch, name: str) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    seg = np.array([0, 0, 150, 151, 400])  # an empty node, a node of one
    order = rng.permutation(400)
    blocks = rng.standard_normal((4, 3, 6)).astype(np.float32)
    sq = np.einsum("gbd,gbd->gb", blocks, blocks)
    lab = np.full(400, -1)
    lab[::7] = 2  # already assigned: left alone
    monkeypatch.setenv(kernels.ENV, "1" if name == "numba" else "0")
    assign(x, order, seg, blocks, sq, lab)
    group = np.repeat(np.arange(4), np.diff(seg))
    d = ((x[order][:, None, :] - blocks[group]) ** 2).sum(-1)
    ref = np.where(np.arange(400) % 7 == 0, 2, d.argmin(axis=1))
    assert (lab == ref).mean() > 0.99
    canon = np.tile(np.arange(3), (4, 1))
    canon[1, 2] = 0  # child 2 of node 1 is a copy of child 0
    node_of = np.zeros(400, dtype=np.int64)
    new_order, new_seg = regroup(order, seg, lab, canon, first=1, node_of=node_of)
    key = group * 3 + canon[group, lab]
    np.testing.assert_array_equal(new_order, order[np.argsort(key, kind="stable")])
    np.testing.assert_array_equal(np.diff(new_seg), np.bincount(key, minlength=12))
    np.testing.assert_array_equal(node_of[order], (1 + group) * 3 + 1 + canon[group, lab])

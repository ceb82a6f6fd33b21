"""Vocabulary tree and its TF-IDF inverted-file index, against plain-loop references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from delfx.errors import InputError
from delfx.index.bow import TreeIndex
from delfx.index.storage import IndexDir
from delfx.index.voctree import (
    VocabTree,
    first_equal_sibling,
    level_start,
    quantize,
    train_tree,
)


def random_tree(branch: int, height: int, dim: int, seed: int = 0) -> VocabTree:
    rng = np.random.default_rng(seed)
    n = level_start(branch, height + 1) - 1
    return VocabTree(rng.standard_normal((n, dim)).astype(np.float32), branch, height)


def descend(tree: VocabTree, x: np.ndarray) -> np.ndarray:
    """Brute force: one descriptor at a time, nearest child by numpy on that node's children."""
    b = tree.branch
    paths = np.empty((x.shape[0], tree.height), dtype=np.int64)
    for i, v in enumerate(x.astype(np.float64)):
        node = 0
        for level in range(tree.height):
            children = tree.centroids[node * b : node * b + b].astype(np.float64)
            node = node * b + 1 + int(np.argmin(((children - v) ** 2).sum(axis=1)))
            paths[i, level] = node
    return paths


def assert_same_paths(tree: VocabTree, x: np.ndarray, got: np.ndarray) -> None:
    """Paths equal the brute-force ones, except at float32 near-ties between two children."""
    ref = descend(tree, x)
    for i in np.flatnonzero((got != ref).any(axis=1)):
        level = int(np.argmax(got[i] != ref[i]))
        d = [((tree.centroids[p[i, level] - 1] - x[i]) ** 2).sum() for p in (got, ref)]
        assert abs(d[0] - d[1]) <= 1e-4 * max(d), (i, level, d)
    assert (got == ref).all(axis=1).mean() > 0.99


@pytest.mark.parametrize("branch,height", [(2, 5), (4, 3), (10, 2)])
def test_quantize_matches_descent_random_tree(branch: int, height: int) -> None:
    tree = random_tree(branch, height, 12, seed=branch)
    x = np.random.default_rng(1).standard_normal((700, 12)).astype(np.float32)
    got = quantize(tree, x, batch=64)  # small batch: many blocks of work
    assert got.shape == (700, height) and got.dtype == np.int64
    assert_same_paths(tree, x, got)
    # a path is a chain of children
    assert (got[:, 0] >= 1).all() and (got[:, 0] <= branch).all()
    assert ((got[:, 1:] - 1) // branch == got[:, :-1]).all()


def test_trained_tree_quantize_matches_descent() -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(0, 5, (40, 16))
    x = (centers[rng.integers(0, 40, 3000)] + rng.normal(0, 1, (3000, 16))).astype(np.float32)
    tree = train_tree(x, 4, 4, seed=0, niter=8, max_points_per_centroid=32, faiss_min_points=100)
    assert tree.centroids.shape == (level_start(4, 5) - 1, 16)
    assert np.isfinite(tree.centroids).all()
    assert_same_paths(tree, x[:800], quantize(tree, x[:800]))
    np.testing.assert_array_equal(tree.canon, first_equal_sibling(tree.blocks()[0]))
    # deterministic for a seed
    again = train_tree(x, 4, 4, seed=0, niter=8, max_points_per_centroid=32, faiss_min_points=100)
    np.testing.assert_array_equal(tree.centroids, again.centroids)
    # the leaves split the data: no leaf holds a large share
    leaves = quantize(tree, x)[:, -1]
    assert np.bincount(leaves).max() < 0.05 * len(x)


@pytest.mark.parametrize("branch,height,dim", [(4, 3, 6), (10, 2, 128)])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_tree_complete_on_tiny_data(n: int, branch: int, height: int, dim: int) -> None:
    x = np.random.default_rng(n).random((n, dim)).astype(np.float32)
    x = np.concatenate([x, x[:1]])  # a repeated descriptor
    tree = train_tree(x, branch, height)
    # the builder's copy bookkeeping gives the same map as comparing all siblings
    np.testing.assert_array_equal(tree.canon, first_equal_sibling(tree.blocks()[0]))
    assert tree.centroids.shape == (level_start(branch, height + 1) - 1, dim)
    assert np.isfinite(tree.centroids).all()
    paths = quantize(tree, x)
    # each training descriptor ends in a leaf whose centroid is itself
    np.testing.assert_allclose(tree.centroids[paths[:, -1] - 1], x, atol=1e-6)
    # repeated children tie exactly: the first copy wins, whatever the batch (with branch 10
    # and 128-d, the matrix product rounds copies differently without the canonical map)
    np.testing.assert_array_equal(paths, descend(tree, x))
    for i in range(n + 1):
        np.testing.assert_array_equal(quantize(tree, x[i : i + 1])[0], paths[i])
        many = quantize(tree, np.repeat(x[i : i + 1], 300, axis=0))
        np.testing.assert_array_equal(many, paths[[i] * 300])
    # queries far away still get a full path
    far = quantize(tree, np.full((2, dim), 100, dtype=np.float32))
    assert far.shape == (2, height) and (far[:, -1] >= level_start(branch, height)).all()


def test_tree_state_round_trip() -> None:
    tree = random_tree(3, 3, 5)
    meta, arrays = tree.state()
    json.dumps(meta)
    back = VocabTree.from_state(meta, arrays)
    np.testing.assert_array_equal(back.centroids, tree.centroids)
    with pytest.raises(InputError, match="centroids"):
        VocabTree(tree.centroids[:-1], 3, 3)


# ---------------------------------------------------------------------------- the index


def image_lists(rng: np.random.Generator, n_images: int, dim: int) -> list[np.ndarray]:
    lists = [
        rng.standard_normal((int(rng.integers(1, 40)), dim)).astype(np.float32)
        for _ in range(n_images)
    ]
    lists[3] = np.zeros((0, dim), dtype=np.float32)  # an image without features
    return lists


def dense_bow(tree: VocabTree, lists: list[np.ndarray], min_level: int) -> np.ndarray:
    """``n_images x n_nodes`` counts of descriptors through each node (levels >= min_level)."""
    counts = np.zeros((len(lists), tree.n_nodes))
    for i, x in enumerate(lists):
        for path in descend(tree, x):
            np.add.at(counts[i], path[min_level - 1 :], 1)
    return counts


def dense_scores(
    counts: np.ndarray, query: np.ndarray, idf: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Σ min(q, d) and L1 distances with L1-normalised TF-IDF rows; also the matrix."""
    db = counts * idf
    sums = db.sum(axis=1, keepdims=True)
    db = np.divide(db, sums, out=np.zeros_like(db), where=sums > 0)
    q = query * idf
    q = q / q.sum()
    s = np.array([np.minimum(q, d).sum() for d in db])
    l1 = np.abs(q[None, :] - db).sum(axis=1)
    return s, l1, db


def dense_idf(counts: np.ndarray) -> np.ndarray:
    df = (counts > 0).sum(axis=0)
    return np.where(df > 0, np.log(len(counts) / np.maximum(df, 1)), 0.0)


@pytest.mark.parametrize("min_level", [1, 2])
def test_scores_match_dense_tfidf(min_level: int) -> None:
    rng = np.random.default_rng(3)
    tree = random_tree(3, 3, 8)
    lists = image_lists(rng, 30, 8)
    query = np.concatenate([lists[5][:10], rng.standard_normal((15, 8)).astype(np.float32)])
    index = TreeIndex(tree, min_level=min_level).add(lists)
    counts = dense_bow(tree, lists, min_level)
    qcounts = dense_bow(tree, [query], min_level)[0]
    s_ref, l1_ref, db = dense_scores(counts, qcounts, dense_idf(counts))
    s = index.scores(query)
    np.testing.assert_allclose(s, s_ref, rtol=1e-12, atol=1e-12)
    live = db.sum(axis=1) > 0
    np.testing.assert_allclose(l1_ref[live], 2 - 2 * s[live], atol=1e-12)
    assert s[3] == 0.0  # the image without features never scores
    ids, scores = index.search(query, top_k=5)
    order = np.lexsort((np.arange(30), -s_ref))[:5]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(scores, s_ref[order], atol=1e-12)
    if live[5]:  # an image is its own best match, with s = 1 (identical bags)
        assert index.scores(lists[5])[5] == pytest.approx(1.0)
    # document frequencies agree with the shared inverted file and the dense matrix
    off = tree.level_start(min_level)
    np.testing.assert_array_equal(index.document_frequency(), index.inverted.document_frequency())
    np.testing.assert_array_equal(index.document_frequency(), (counts[:, off:] > 0).sum(axis=0))


def test_train_idf_matches_dense() -> None:
    rng = np.random.default_rng(4)
    tree = random_tree(3, 3, 8)
    train = [rng.standard_normal((20, 8)).astype(np.float32) for _ in range(12)]
    lists = image_lists(rng, 10, 8)
    index = TreeIndex(tree, idf_from="train", train_descriptors=train).add(lists)
    idf = dense_idf(dense_bow(tree, train, 1))
    query = rng.standard_normal((30, 8)).astype(np.float32)
    s_ref, _, _ = dense_scores(dense_bow(tree, lists, 1), dense_bow(tree, [query], 1)[0], idf)
    np.testing.assert_allclose(index.scores(query), s_ref, atol=1e-12)
    # adding images leaves the idf alone
    more = index.add(image_lists(rng, 6, 8))
    np.testing.assert_array_equal(more.derived()[0], index.derived()[0])


def test_add_in_batches_equals_one_build() -> None:
    rng = np.random.default_rng(5)
    tree = random_tree(4, 3, 8)
    lists = image_lists(rng, 25, 8)
    queries = [rng.standard_normal((12, 8)).astype(np.float32) for _ in range(4)]
    whole = TreeIndex(tree).add(lists)
    first = TreeIndex(tree).add(lists[:11])
    parts = first.add(lists[11:])
    assert len(parts.inverted.segments) == 2 and parts.n_images == 25
    for q in queries:
        np.testing.assert_array_equal(parts.scores(q), whole.scores(q))
        np.testing.assert_array_equal(parts.search(q)[0], whole.search(q)[0])
    compact = TreeIndex.from_state(*parts.state(), parts.inverted.compact().segments)
    np.testing.assert_array_equal(compact.scores(queries[0]), whole.scores(queries[0]))
    # the first index is unchanged and its derived state refers to 11 images
    assert first.n_images == 11 and first.scores(queries[0]).shape == (11,)
    # leaf ids give the same index as descriptors
    leaves = TreeIndex(tree).add_leaves([whole.words(x) for x in lists])
    np.testing.assert_array_equal(leaves.scores(queries[1]), whole.scores(queries[1]))
    batch = whole.search_batch(queries, top_k=3)
    for q, (ids, sc) in zip(queries, batch, strict=True):
        np.testing.assert_array_equal(ids, whole.search(q, top_k=3)[0])
        np.testing.assert_array_equal(sc, whole.search(q, top_k=3)[1])


def test_lookup_postings_are_tf_counts() -> None:
    rng = np.random.default_rng(6)
    tree = random_tree(3, 2, 4)
    lists = image_lists(rng, 8, 4)
    index = TreeIndex(tree).add(lists)
    counts = dense_bow(tree, lists, 1)
    for node in range(1, tree.n_nodes):
        hits = index.inverted.lookup(np.array([node - 1]))
        expect = np.flatnonzero(counts[:, node])
        np.testing.assert_array_equal(np.sort(hits.image_ids), expect)
        np.testing.assert_array_equal(hits.payload["tf"], counts[hits.image_ids, node])
    words = index.words(lists[0])
    np.testing.assert_array_equal(words, descend(tree, lists[0])[:, -1] - tree.level_start(2))


def test_state_round_trip_through_index_dir(tmp_path) -> None:
    rng = np.random.default_rng(7)
    tree = random_tree(3, 3, 8)
    train = [rng.standard_normal((20, 8)).astype(np.float32) for _ in range(5)]
    index = TreeIndex(tree, min_level=2, idf_from="train", train_descriptors=train)
    index = index.add(image_lists(rng, 9, 8)).add(image_lists(rng, 7, 8))
    meta, arrays = index.state()
    folder = IndexDir(tmp_path / "idx")
    with folder.writing():
        model = folder.write_model(arrays)
        segs = [
            folder.write_segment(s, [f"im{i}" for i in range(s.n_postings)], 0)
            for s in index.inverted.segments
        ]
        folder.commit({"kind": "voctree", "config": meta, "model": model, "segments": segs})
    manifest = folder.manifest()
    back = TreeIndex.from_state(
        manifest["config"],
        folder.read_model(manifest["model"]),
        [folder.read_segment(f)[0] for f in manifest["segments"]],
    )
    assert back.idf_from == "train" and back.min_level == 2 and back.n_images == 16
    q = rng.standard_normal((10, 8)).astype(np.float32)
    np.testing.assert_array_equal(back.scores(q), index.scores(q))


def test_errors_and_edge_cases() -> None:
    tree = random_tree(3, 2, 4)
    index = TreeIndex(tree).add([np.zeros((0, 4), np.float32), np.ones((2, 4), np.float32)])
    with pytest.raises(InputError, match="query has no features"):
        index.search(np.zeros((0, 4), np.float32))
    with pytest.raises(InputError, match=r"dimension 5 .*4"):
        index.search(np.ones((3, 5), np.float32))
    with pytest.raises(InputError, match=r"dimension 5 .*4"):
        index.add([np.ones((3, 5), np.float32)])
    with pytest.raises(InputError, match="query 1 has no features"):
        index.search_batch([np.ones((1, 4)), np.zeros((0, 4))])
    with pytest.raises(InputError, match="new"):
        index.add([np.ones((1, 4), np.float32)], image_ids=[1])
    with pytest.raises(InputError, match="idf_from"):
        TreeIndex(tree, idf_from="query")
    with pytest.raises(InputError, match="train_descriptors"):
        TreeIndex(tree, idf_from="train")
    with pytest.raises(InputError, match="top_k"):
        index.search(np.ones((1, 4)), top_k=-1)
    ids, scores = index.search(np.ones((1, 4)))
    np.testing.assert_array_equal(ids, [1, 0])
    np.testing.assert_allclose(scores, [1.0, 0.0])
    # every image holds every word: all idf are 0, nothing scores, ranking still defined
    same = TreeIndex(tree).add([np.ones((2, 4), np.float32)] * 3)
    ids, scores = same.search(np.ones((1, 4)))
    np.testing.assert_array_equal(ids, [0, 1, 2])
    np.testing.assert_array_equal(scores, [0.0, 0.0, 0.0])
    # skipped ids are empty images
    more = index.add([np.ones((1, 4), np.float32)], image_ids=[5])
    assert more.n_images == 6 and more.scores(np.ones((1, 4))).shape == (6,)
    empty = TreeIndex(tree)
    assert empty.search(np.ones((2, 4)))[0].size == 0
    with pytest.raises(InputError, match="no training descriptors"):
        train_tree(np.zeros((0, 4), np.float32), 3, 2)


def test_large_counts_and_mixed_tf_dtypes() -> None:
    tree = random_tree(3, 2, 4)
    big = TreeIndex(tree).add_leaves([np.zeros(70_000, np.int64), np.array([1, 2, 8])])
    more = big.add_leaves([np.array([3, 4, 0]), np.array([5])])
    assert [s.payload["tf"].dtype for s in more.inverted.segments] == [np.int32, np.uint16]
    assert more.inverted.segments[0].payload["tf"].max() == 70_000
    q = np.array([0, 0, 3])
    merged = TreeIndex.from_state(*more.state(), more.inverted.compact().segments)
    np.testing.assert_array_equal(merged.scores_from_leaves(q), more.scores_from_leaves(q))
    assert more.search_leaves(q, top_k=1)[0][0] == 2

"""Spatial verification: matching, USAC model fitting, re-ranking and parallel verification."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.verify.matching import combine, ratio_matches, word_matches
from delfx.verify.ransac import RansacConfig, estimate, verify_pair
from delfx.verify.rerank import merge, rerank, shortlist, verify_candidates
from tests.conftest import SAMPLES

GRAFFITI = SAMPLES / "groups" / "oxford_graffiti"  # 01.jpg, 02.jpg: Oxford graf img1, img3
DISTRACTOR = SAMPLES / "distractors" / "opencv_building.jpg"
#: The published 01 -> 02 homography at the samples' 640x512 (see the file's header).
GRAFFITI_H = Path(__file__).parent / "data" / "oxford_graffiti_H_01_02.txt"


# --------------------------------------------------------------------------- synthetic geometry


def _project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:]


def _with_outliers(rng, src, dst, frac=0.5, size=(800.0, 600.0)):
    """Replace a fraction of ``dst`` by uniform random points; return (src, dst, true_inliers)."""
    n = len(src)
    out = rng.permutation(n)[: int(frac * n)]
    dst = dst.copy()
    dst[out] = rng.uniform(0, 1, (out.size, 2)) * size
    truth = np.ones(n, dtype=bool)
    truth[out] = False
    return src, dst, truth


def _precision_recall(mask, truth):
    tp = (mask & truth).sum()
    return tp / max(mask.sum(), 1), tp / truth.sum()


def test_homography_recovered_with_half_outliers():
    rng = np.random.default_rng(1)
    h = np.array([[0.9, 0.15, 40.0], [-0.1, 1.05, 25.0], [2e-4, -1e-4, 1.0]])
    src = rng.uniform(0, 1, (400, 2)) * (800, 600)
    dst = _project(h, src) + rng.normal(0, 0.7, (400, 2))
    src, dst, truth = _with_outliers(rng, src, dst)
    model, mask = estimate(src, dst, RansacConfig("homography"))
    assert model is not None and model.shape == (3, 3)
    grid = np.stack(np.meshgrid(np.linspace(0, 800, 9), np.linspace(0, 600, 7)), -1).reshape(-1, 2)
    assert np.abs(_project(model, grid) - _project(h, grid)).max() < 2.0
    precision, recall = _precision_recall(mask, truth)
    assert precision > 0.97 and recall > 0.95
    # same input, same answer
    model2, mask2 = estimate(src, dst, RansacConfig("homography"))
    assert np.array_equal(mask, mask2) and np.allclose(model, model2)


def test_affine_recovered_with_half_outliers():
    rng = np.random.default_rng(2)
    a = np.array([[0.8, -0.3, 60.0], [0.25, 0.95, -20.0], [0.0, 0.0, 1.0]])
    src = rng.uniform(0, 1, (300, 2)) * (800, 600)
    dst = _project(a, src) + rng.normal(0, 0.7, (300, 2))
    src, dst, truth = _with_outliers(rng, src, dst)
    model, mask = estimate(src, dst, RansacConfig("affine"))
    assert model is not None
    assert np.allclose(model[2], [0, 0, 1])
    grid = np.stack(np.meshgrid(np.linspace(0, 800, 9), np.linspace(0, 600, 7)), -1).reshape(-1, 2)
    assert np.abs(_project(model, grid) - _project(a, grid)).max() < 2.0
    precision, recall = _precision_recall(mask, truth)
    assert precision > 0.97 and recall > 0.95


def _rot(ax, ay, az):
    return (
        cv2.Rodrigues(np.array([ax, 0.0, 0.0]))[0]
        @ cv2.Rodrigues(np.array([0.0, ay, 0.0]))[0]
        @ cv2.Rodrigues(np.array([0.0, 0.0, az]))[0]
    )


def test_fundamental_on_two_view_scene():
    rng = np.random.default_rng(3)
    k = np.array([[700.0, 0, 400], [0, 700.0, 300], [0, 0, 1]])
    pts3 = np.c_[rng.uniform(-3, 3, (400, 2)), rng.uniform(6, 12, 400)]  # a deep 3-D scene
    r, t = _rot(0.05, -0.2, 0.03), np.array([1.5, 0.2, 0.3])

    def cam(p, rr, tt):
        x = (p @ rr.T + tt) @ k.T
        return x[:, :2] / x[:, 2:]

    src = cam(pts3, np.eye(3), np.zeros(3)) + rng.normal(0, 0.5, (400, 2))
    dst = cam(pts3, r, t) + rng.normal(0, 0.5, (400, 2))
    src, dst, truth = _with_outliers(rng, src, dst)
    model, mask = estimate(src, dst, RansacConfig("fundamental"))
    assert model is not None and model.shape == (3, 3)
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    f_true = np.linalg.inv(k).T @ tx @ r @ np.linalg.inv(k)

    def epi_dist(f, a, b):  # distance of b to the epipolar line F a
        lines = np.c_[a, np.ones(len(a))] @ f.T
        return np.abs((lines * np.c_[b, np.ones(len(b))]).sum(1)) / np.hypot(*lines[:, :2].T)

    # the estimate agrees with the true geometry on the noise-free projections
    clean_src = cam(pts3, np.eye(3), np.zeros(3))
    clean_dst = cam(pts3, r, t)
    assert np.median(epi_dist(model, clean_src, clean_dst)) < 1.0
    assert np.median(epi_dist(f_true, src[truth], dst[truth])) < 1.0  # the scene is sane
    precision, recall = _precision_recall(mask, truth)
    assert precision > 0.9 and recall > 0.9


@pytest.mark.parametrize(("model", "n"), [("homography", 3), ("fundamental", 7), ("affine", 2)])
def test_too_few_points_give_no_model(model, n):
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (n, 2))
    result, mask = estimate(pts, pts + 1.0, RansacConfig(model))
    assert result is None and mask.shape == (n,) and not mask.any()
    result, mask = estimate(np.zeros((0, 2)), np.zeros((0, 2)), RansacConfig(model))
    assert result is None and mask.shape == (0,)


def _features(points: np.ndarray) -> LocalFeatures:
    n = len(points)
    z = np.zeros(n, np.float32)
    return LocalFeatures(
        points.astype(np.float32), z, z, np.zeros((n, 4), np.float32), z, (800, 600)
    )


def test_verify_pair_counts_distinct_positions():
    rng = np.random.default_rng(4)
    h = np.array([[1.1, 0.05, 10.0], [-0.05, 0.95, 5.0], [0.0, 1e-4, 1.0]])
    src = rng.uniform(0, 1, (40, 2)) * (800, 600)
    query = _features(np.r_[src, src])  # every position twice, as SIFT does per orientation
    db = _features(_project(h, src))
    matches = np.c_[np.arange(80), np.r_[np.arange(40), np.arange(40)]]
    res = verify_pair(query, db, RansacConfig(), matches=matches)
    assert res.n_matches == 80 and len(res.inlier_matches) == 80
    assert res.inliers == 40


def test_degenerate_points_give_no_model():
    pts = np.zeros((20, 2))
    model, mask = estimate(pts, pts, RansacConfig("homography"))
    assert model is None and not mask.any()


def test_config_defaults_and_validation():
    assert RansacConfig().model == "homography"
    assert RansacConfig().method == cv2.USAC_MAGSAC
    assert RansacConfig().threshold == 4.0 and RansacConfig().max_iters == 2000
    assert RansacConfig("homography").min_inliers == 12
    assert RansacConfig("fundamental").min_inliers == 30
    assert RansacConfig("affine", min_inliers=5).min_inliers == 5
    for bad in (
        {"model": "essential"},
        {"threshold": 0.0},
        {"max_iters": 0},
        {"confidence": 1.0},
        {"model": "fundamental", "min_inliers": 7},
    ):
        with pytest.raises(InputError):
            RansacConfig(**bad)
    with pytest.raises(InputError, match="by position"):  # 4.0 lands in `method`
        estimate(np.zeros((5, 2)), np.zeros((5, 2)), RansacConfig("homography", 4.0))
    with pytest.raises(InputError):
        estimate(np.zeros((5, 2)), np.zeros((6, 2)), RansacConfig())


# --------------------------------------------------------------------------- matching


def _ratio_reference(q, d, ratio, mutual=False, one_to_one=False):
    q64, d64 = q.astype(np.float64), d.astype(np.float64)
    dist = ((q64[:, None, :] - d64[None, :, :]) ** 2).sum(-1)
    if q.shape[0] == 0 or d.shape[0] < 2:
        return set()
    srt = np.sort(dist, axis=1)
    out = set()
    for i in range(len(q)):
        if srt[i, 0] < ratio**2 * srt[i, 1]:
            j = int(np.argmin(dist[i]))
            if not mutual or dist[i, j] <= dist[:, j].min():
                out.add((i, j))
    if one_to_one:  # per database feature, the closest matched query feature (lowest index)
        best = {}
        for i, j in sorted(out):
            if j not in best or dist[i, j] < dist[best[j], j]:
                best[j] = i
        out = {(i, j) for j, i in best.items()}
    return out


@pytest.mark.parametrize("one_to_one", [False, True])
@pytest.mark.parametrize("mutual", [False, True])
@pytest.mark.parametrize(("nq", "nd"), [(60, 50), (30, 2), (40, 1), (40, 0), (0, 10)])
def test_ratio_matches_against_brute_force_with_ties(nq, nd, mutual, one_to_one):
    # small integers: exact float32 distances and many exact ties
    rng = np.random.default_rng(nq * 100 + nd)
    q = rng.integers(0, 3, (nq, 6)).astype(np.float32)
    d = rng.integers(0, 3, (nd, 6)).astype(np.float32)
    for ratio in (0.9, 0.8, 1.0):
        got = ratio_matches(q, d, ratio=ratio, mutual=mutual, one_to_one=one_to_one)
        assert got.dtype == np.int64 and got.shape[1] == 2
        assert np.all(np.diff(got[:, 0]) > 0)  # sorted, one row per query feature
        if one_to_one:
            assert np.unique(got[:, 1]).size == got.shape[0]
        want = _ratio_reference(q, d, ratio, mutual, one_to_one)
        assert set(map(tuple, got.tolist())) == want
    if nd < 2 or nq == 0:
        assert ratio_matches(q, d).shape == (0, 2)


def test_ratio_matches_float_descriptors():
    rng = np.random.default_rng(7)
    d = rng.normal(size=(300, 32)).astype(np.float32)
    q = np.r_[d[:100] + rng.normal(0, 0.05, (100, 32)), rng.normal(size=(100, 32))]
    q = q.astype(np.float32)
    got = set(map(tuple, ratio_matches(q, d, 0.9).tolist()))
    assert got == _ratio_reference(q, d, 0.9)
    assert {(i, i) for i in range(100)} <= got  # the perturbed copies all match
    with pytest.raises(InputError):
        ratio_matches(q, d[:, :16])
    with pytest.raises(InputError):
        ratio_matches(q, d, ratio=1.5)


def _word_reference(wq, wd, cap):
    wq = wq[:, None] if wq.ndim == 1 else wq
    wd = wd[:, None] if wd.ndim == 1 else wd
    pairs = set()
    shared = ({int(w) for w in wq.ravel() if w >= 0}) & ({int(w) for w in wd.ravel() if w >= 0})
    for w in sorted(shared):
        a = [i for i in range(len(wq)) if w in wq[i].tolist()]
        b = [j for j in range(len(wd)) if w in wd[j].tolist()]
        cand = sorted((r + s, r, a[r], b[s]) for r in range(len(a)) for s in range(len(b)))
        if cap is not None:
            cand = cand[:cap]
        pairs |= {(x, y) for _, _, x, y in cand}
    return sorted(pairs)


@pytest.mark.parametrize("cap", [None, 1, 3, 10])
@pytest.mark.parametrize("k", [1, 3])
def test_word_matches_against_double_loop(k, cap):
    rng = np.random.default_rng(k * 10 + (cap or 0))
    for trial in range(5):
        vocab = 12 if trial % 2 else 40  # a small vocabulary makes bursts
        wq = rng.integers(-1, vocab, (50, k))
        wd = rng.integers(-1, vocab, (35, k))
        if k == 1:
            wq, wd = wq[:, 0], wd[:, 0]
        got = word_matches(wq, wd, max_per_word=cap)
        assert got.dtype == np.int64
        assert got.tolist() == [list(p) for p in _word_reference(wq, wd, cap)]


def test_word_matches_cap_spreads_pairs_and_edge_cases():
    wq = np.array([5, 5, 5, 7])
    wd = np.array([5, 5, 9])
    # pairs of word 5 in anti-diagonal order: (0,0), (0,1), (1,0), (1,1), (2,0), (2,1)
    assert word_matches(wq, wd, max_per_word=3).tolist() == [[0, 0], [0, 1], [1, 0]]
    assert word_matches(wq, wd, max_per_word=None).shape == (6, 2)
    assert word_matches(np.array([], int), wd).shape == (0, 2)
    assert word_matches(np.array([1, 2]), np.array([3, 4])).shape == (0, 2)
    assert word_matches(np.full((3, 2), -1), wd).shape == (0, 2)
    with pytest.raises(InputError):
        word_matches(wq, wd, max_per_word=0)
    with pytest.raises(InputError):
        word_matches(np.zeros((2, 2, 2), int), wd)


def test_combine_is_a_sorted_unique_union():
    a = np.array([[3, 1], [0, 2]])
    b = np.array([[0, 2], [1, 1]])
    assert combine(a, b, np.zeros((0, 2), int)).tolist() == [[0, 2], [1, 1], [3, 1]]
    assert combine().shape == (0, 2)
    with pytest.raises(InputError):
        combine(np.zeros((3, 3), int))


# --------------------------------------------------------------------------- re-ranking


def test_rerank_hand_worked():
    first = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    inl = np.array([5, 30, 12, 30, 40, 3])
    # verified (>= 12): 4 (40), then 1 and 3 tie at 30 -> first score 0.8 beats 0.6, then 2 (12);
    # unverified 0 and 5 follow in their original order
    assert rerank(first, inl, 12).tolist() == [4, 1, 3, 2, 0, 5]
    # a tie broken by the first score even when the better score sits lower in the input
    assert rerank(np.array([0.1, 0.5]), np.array([20, 20]), 10).tolist() == [1, 0]
    # equal count and score: first-stage position decides
    assert rerank(np.array([0.5, 0.5]), np.array([20, 20]), 10).tolist() == [0, 1]
    # nothing verified: the order is unchanged, whatever the inlier counts
    assert rerank(first, np.array([9, 1, 11, 0, 4, 2]), 12).tolist() == list(range(6))
    assert rerank(np.zeros(0), np.zeros(0, int), 12).shape == (0,)
    with pytest.raises(InputError):
        rerank(first, inl[:3], 12)


def test_shortlist_and_merge():
    ranked = np.array([7, 3, 9, 1, 4, 8, 2])
    assert shortlist(ranked, 3).tolist() == [7, 3, 9]
    assert shortlist(ranked, 3, exclude=[3, 1]).tolist() == [7, 9, 4]
    assert shortlist(ranked, 10, exclude=np.array([2])).tolist() == [7, 3, 9, 1, 4, 8]
    assert shortlist(ranked, 0).shape == (0,)
    with pytest.raises(InputError):
        shortlist(ranked, -1)
    head = shortlist(ranked, 3, exclude=[3])  # [7, 9, 1]
    new_head = head[rerank(np.array([0.9, 0.8, 0.7]), np.array([0, 20, 50]), 12)]
    assert new_head.tolist() == [1, 9, 7]
    assert merge(ranked, new_head).tolist() == [1, 9, 7, 3, 4, 8, 2]


# --------------------------------------------------------------------------- real photos


def _sift(path: Path, n_max: int = 1000) -> LocalFeatures:
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    kps, desc = cv2.SIFT_create().detectAndCompute(gray, None)
    resp = np.array([kp.response for kp in kps], dtype=np.float32)
    keep = np.argsort(-resp, kind="stable")[:n_max]
    return LocalFeatures(
        keypoints=np.array([kps[i].pt for i in keep], dtype=np.float32) + 0.5,
        scales=np.array([kps[i].size for i in keep], dtype=np.float32),
        orientations=np.array([kps[i].angle for i in keep], dtype=np.float32),
        descriptors=desc[keep].astype(np.float32),
        scores=resp[keep],
        image_size=(gray.shape[1], gray.shape[0]),
    )


@pytest.fixture(scope="module")
def graffiti():
    paths = [GRAFFITI / "01.jpg", GRAFFITI / "02.jpg", DISTRACTOR]
    return [_sift(p) for p in paths]


def test_verify_candidates_on_real_photos(graffiti):
    query, match, distractor = graffiti
    conf = RansacConfig("homography")
    cands = [distractor, match, distractor, match]
    one = verify_candidates(query, cands, conf, workers=1)
    two = verify_candidates(query, cands, conf, workers=2)
    assert np.array_equal(one, two)
    assert one[0] == one[2] and one[1] == one[3]
    assert one[1] >= 100 and one[0] < conf.min_inliers
    # a callable source gives the same counts
    assert np.array_equal(verify_candidates(query, cands.__getitem__, conf, count=4), one)
    with pytest.raises(InputError):
        verify_candidates(query, cands.__getitem__, conf)
    order = rerank(np.array([0.9, 0.5, 0.8, 0.4]), one, conf.min_inliers)
    assert order[:2].tolist() == [1, 3]


def test_verify_pair_agrees_with_ground_truth_homography(graffiti):
    query, match, _ = graffiti
    h_true = np.loadtxt(GRAFFITI_H)
    res = verify_pair(query, match, RansacConfig("homography"))
    assert res.model is not None and 0 < res.inliers <= len(res.inlier_matches)
    assert res.n_matches >= res.inliers >= 100
    # inliers sit about where the published homography sends them (it is itself a fit, off by a
    # few pixels near the borders; every USAC method and classic RANSAC agree on that here)
    pq = query.keypoints[res.inlier_matches[:, 0]]
    pd = match.keypoints[res.inlier_matches[:, 1]]
    err = np.linalg.norm(_project(h_true, pq) - pd, axis=1)
    assert np.median(err) < 2.0 and np.percentile(err, 75) < 5.0 and err.max() < 12.0
    # explicit matches go through unchanged; bad indices are refused
    again = verify_pair(query, match, RansacConfig("homography"), matches=res.inlier_matches)
    assert again.inliers >= 0.95 * res.inliers
    with pytest.raises(InputError):
        verify_pair(query, match, RansacConfig(), matches=np.array([[0, len(match)]]))
    empty = LocalFeatures.empty(128, (10, 10))
    assert verify_pair(query, empty, RansacConfig()).inliers == 0

"""Pooling, whitening, tuple losses and hard-negative mining of the global descriptor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delfx.errors import InputError
from delfx.models.pooling import (
    MAC,
    POOLINGS,
    RMAC,
    GeM,
    SPoC,
    gem,
    l2n,
    mac,
    rmac,
    rmac_regions,
    spoc,
)
from delfx.models.whitening import (
    apply_whitening,
    learn_whitening,
    linear_from_whitening,
    pca_whiten,
)
from delfx.train.losses import ContrastiveLoss, TripletLoss, contrastive_loss, triplet_loss
from delfx.train.mining import mine_hard_negatives


def _fmap(seed: int = 0, shape: tuple[int, ...] = (2, 3, 5, 8)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) + 0.01


# --- pooling ---------------------------------------------------------------------------------


def test_gem_p1_is_spoc_and_modules_match() -> None:
    x = _fmap()
    torch.testing.assert_close(gem(x, 1.0), spoc(x))
    torch.testing.assert_close(spoc(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(mac(x), x.flatten(2).max(dim=2).values)
    torch.testing.assert_close(MAC()(x), mac(x))
    torch.testing.assert_close(SPoC()(x), spoc(x))
    torch.testing.assert_close(GeM(p=1.0)(x.float()), spoc(x.float()))
    torch.testing.assert_close(RMAC(levels=2)(x), rmac(x, levels=2))
    assert set(POOLINGS) == {"mac", "spoc", "gem", "rmac"}
    assert gem(x, 3.0).shape == (2, 3)


def test_gem_large_p_approaches_mac() -> None:
    x = _fmap(1)
    ref = mac(x)
    errs = [float(((gem(x, p) - ref).abs() / ref).max()) for p in (3.0, 10.0, 50.0, 200.0)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))
    assert errs[-1] < 0.02


def test_gem_gradient_reaches_p() -> None:
    pool = GeM(p=3.0, learnable=True)
    out = pool(_fmap(2).float()).sum()
    out.backward()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad).all()
    assert float(pool.p.grad.abs()) > 0
    fixed = GeM(p=3.0, learnable=False)
    assert not list(fixed.parameters())


def test_rmac_regions_explicit() -> None:
    # 5 x 8 map: 40% overlap at scale 1 needs one extra column (overlap (5 - 3) / 5 = 0.4).
    expected = [(0, c, 5, 5) for c in (0, 3)]
    expected += [(r, c, 3, 3) for r in (0, 2) for c in (0, 2, 5)]
    expected += [(r, c, 2, 2) for r in (0, 1, 3) for c in (0, 2, 4, 6)]
    assert rmac_regions(5, 8, 3) == expected
    # Square maps: l x l regions per scale, scale 1 is the whole map.
    assert rmac_regions(4, 4, 3)[0] == (0, 0, 4, 4)
    assert len(rmac_regions(4, 4, 3)) == 1 + 4 + 9
    # Transposed map: transposed regions.
    assert sorted(rmac_regions(8, 5, 3)) == sorted((c, r, s, s) for r, c, s, _ in expected)
    with pytest.raises(InputError):
        rmac_regions(4, 4, 0)


def test_rmac_matches_loop_reference() -> None:
    x = _fmap(3)
    regions = rmac_regions(5, 8, 3)
    ref = torch.zeros(2, 3, dtype=x.dtype)
    for b in range(2):
        for top, left, h, w in regions:
            v = torch.tensor(
                [
                    max(
                        float(x[b, c, i, j])
                        for i in range(top, top + h)
                        for j in range(left, left + w)
                    )
                    for c in range(3)
                ],
                dtype=x.dtype,
            )
            ref[b] += v / (v.norm() + 1e-6)
    torch.testing.assert_close(rmac(x, 3), ref)


def test_l2n() -> None:
    v = l2n(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(v, torch.tensor([[0.6, 0.8]]), atol=1e-6, rtol=0)


def test_pooling_rejects_wrong_rank() -> None:
    with pytest.raises(InputError):
        mac(torch.zeros(3, 4, 5))


# --- whitening -------------------------------------------------------------------------------


def _pairs(seed: int = 0, n: int = 120, d: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    pos = base + 0.3 * rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    X = np.concatenate([base, pos])
    return X, np.arange(n), np.arange(n, 2 * n)


def test_learned_whitening_whitens_pair_differences() -> None:
    X, q, p = _pairs()
    m, P = learn_whitening(X, q, p)
    assert m.shape == (6,) and P.shape == (6, 6)
    np.testing.assert_allclose(m, X.mean(axis=0))
    df = (X[q] - X[p]) @ P.T
    np.testing.assert_allclose(df.T @ df / len(q), np.eye(6), atol=1e-8)
    # The whitened data's covariance is diagonal, by decreasing variance.
    Y = (X - m) @ P.T
    C = Y.T @ Y / len(X)
    np.testing.assert_allclose(C - np.diag(np.diag(C)), 0, atol=1e-8)
    assert np.all(np.diff(np.diag(C)) <= 1e-12)
    with pytest.raises(InputError):
        learn_whitening(X, q[:3], p[:3])  # too few pairs: singular covariance


def test_pca_whitening_gives_identity_covariance() -> None:
    X, _, _ = _pairs(1)
    m, P = pca_whiten(X)
    Y = (X - m) @ P.T
    np.testing.assert_allclose(Y.T @ Y / len(X), np.eye(6), atol=1e-6)
    m4, P4 = pca_whiten(torch.from_numpy(X), dim=4)
    assert P4.shape == (4, 6)
    np.testing.assert_allclose(P4, P[:4])


def test_apply_and_linear_whitening_agree() -> None:
    X, q, p = _pairs(2)
    m, P = learn_whitening(X, q, p)
    out = apply_whitening(X, m, P, dim=4)
    assert out.shape == (len(X), 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-9)
    raw = apply_whitening(X, m, P, dim=4, normalize=False)
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-9)
    layer = linear_from_whitening(m, P, dim=4)
    assert (layer.in_features, layer.out_features) == (6, 4)
    with torch.no_grad():
        lin = layer(torch.from_numpy(X).float()).double().numpy()
    np.testing.assert_allclose(lin, raw, rtol=1e-4, atol=1e-4 * np.abs(raw).max())
    with pytest.raises(InputError):
        apply_whitening(X[:, :5], m, P)
    with pytest.raises(InputError):
        linear_from_whitening(m, P, dim=7)


# --- losses ----------------------------------------------------------------------------------


def _tuples(seed: int = 0, nq: int = 3, nneg: int = 4, d: int = 5) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = l2n(torch.randn(nq * (2 + nneg), d, generator=g, dtype=torch.float64))
    label = torch.tensor(([-1, 1] + [0] * nneg) * nq)
    return x, label


def test_contrastive_loss_matches_loop() -> None:
    x, label = _tuples()
    margin, ref = 0.7, 0.0
    size = 6
    for t in range(3):
        q = x[t * size]
        for k in range(1, size):
            d = float(torch.sqrt(((q - x[t * size + k]) ** 2).sum()))
            y = int(label[t * size + k])
            ref += 0.5 * d * d if y == 1 else 0.5 * max(0.0, margin - d) ** 2
    got = contrastive_loss(x, label, margin=margin)
    assert abs(float(got) - ref) < 1e-6
    assert float(ContrastiveLoss(margin)(x, label)) == pytest.approx(float(got))
    # The positive at distance zero still gives a finite gradient.
    x0 = x.clone()
    x0[1] = x0[0]
    x0.requires_grad_(True)
    contrastive_loss(x0, label).backward()
    assert torch.isfinite(x0.grad).all()


def test_triplet_loss_matches_loop() -> None:
    x, label = _tuples(1)
    margin, ref = 0.1, 0.0
    size = 6
    for t in range(3):
        q, pos = x[t * size], x[t * size + 1]
        dp = float(((q - pos) ** 2).sum())
        for k in range(2, size):
            ref += max(0.0, dp - float(((q - x[t * size + k]) ** 2).sum()) + margin)
    got = triplet_loss(x, label, margin=margin)
    assert abs(float(got) - ref) < 1e-9
    assert float(TripletLoss(margin)(x, label)) == pytest.approx(float(got))


def test_losses_reject_bad_tuples() -> None:
    x, label = _tuples()
    with pytest.raises(InputError):
        contrastive_loss(x[:-1], label[:-1])  # does not split into equal tuples
    bad = label.clone()
    bad[0], bad[1] = 1, -1  # query not first
    with pytest.raises(InputError):
        contrastive_loss(x, bad)
    bad = label.clone()
    bad[1] = 0  # no positive
    with pytest.raises(InputError):
        triplet_loss(x, bad)


# --- mining ----------------------------------------------------------------------------------


def _mining_ref(qv, pv, qc, pc, neg_num):
    out = []
    for i in range(len(qv)):
        dists = [float(np.sum((qv[i] - pv[j]) ** 2)) for j in range(len(pv))]
        chosen, seen = [], set()
        for j in sorted(range(len(pv)), key=lambda j: (dists[j], j)):
            if pc[j] == qc[i] or pc[j] in seen:
                continue
            seen.add(pc[j])
            chosen.append(j)
            if len(chosen) == neg_num:
                break
        out.append(chosen)
    return np.array(out, dtype=np.int64)


def test_miner_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    pv = rng.normal(size=(60, 4))
    pc = rng.integers(0, 12, size=60)
    qv = rng.normal(size=(7, 4))
    qc = rng.integers(0, 12, size=7)
    got = mine_hard_negatives(torch.from_numpy(qv).float(), pv, qc, torch.from_numpy(pc), 5)
    assert got.dtype == torch.int64 and got.shape == (7, 5)
    ref = _mining_ref(qv.astype(np.float32).astype(np.float64), pv, qc, pc, 5)
    np.testing.assert_array_equal(got.numpy(), ref)
    for i, row in enumerate(got.numpy()):
        assert not np.any(pc[row] == qc[i])
        assert len(set(pc[row].tolist())) == len(row)


def test_miner_reports_short_query() -> None:
    pv = np.eye(3)
    pc = np.array([0, 1, 1])
    with pytest.raises(InputError, match="query 1"):
        mine_hard_negatives(np.eye(3)[:2], pv, np.array([2, 0]), pc, 2)

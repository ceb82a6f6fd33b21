"""Global-descriptor search, query expansion and DBA against plain loops."""

from __future__ import annotations

import numpy as np
import pytest

from delfx.errors import InputError
from delfx.index.global_search import alpha_qe, dba, rank_ip


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_rank_matches_sorting_every_query():
    rng = np.random.default_rng(0)
    db, q = _unit(rng, 300, 16), _unit(rng, 7, 16)
    ids, scores = rank_ip(db, q, 20, chunk=3)
    for i in range(7):
        sims = db @ q[i]
        want = sorted(range(300), key=lambda j: (-sims[j], j))[:20]
        assert ids[i].tolist() == want
        np.testing.assert_allclose(scores[i], sims[want], rtol=1e-5)
    with pytest.raises(InputError, match="dimensions differ"):
        rank_ip(db, _unit(rng, 2, 8))


def test_alpha_qe_and_dba_match_loops():
    rng = np.random.default_rng(1)
    db, q = _unit(rng, 50, 8), _unit(rng, 4, 8)
    ranks, _ = rank_ip(db, q)
    got = alpha_qe(db, q, ranks, k=3, alpha=2.0)
    for i in range(4):
        v = q[i].astype(np.float64).copy()
        for j in ranks[i, :3]:
            v += max(float(db[j] @ q[i]), 0.0) ** 2.0 * db[j]
        np.testing.assert_allclose(got[i], v / np.linalg.norm(v), atol=1e-5)
    aug = dba(db, k=2, alpha=1.0, chunk=7)
    for i in range(50):
        sims = db @ db[i]
        nn = sorted(range(50), key=lambda j: (-sims[j], j))[1:3]
        v = db[i].astype(np.float64) + sum(max(float(sims[j]), 0.0) * db[j] for j in nn)
        np.testing.assert_allclose(aug[i], v / np.linalg.norm(v), atol=1e-5)

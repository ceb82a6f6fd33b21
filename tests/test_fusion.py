"""Score fusion against a per-query dictionary reference."""

from __future__ import annotations

import numpy as np
import pytest

from delfx.errors import InputError
from delfx.index.fusion import fuse_rankings


def _reference(ra, sa, rb, sb, n, w):
    out = []
    for q in range(ra.shape[0]):
        total = dict.fromkeys(range(n), 0.0)
        for i, s in zip(ra[q], sa[q], strict=True):
            total[int(i)] += float(s)
        for i, s in zip(rb[q], sb[q], strict=True):
            total[int(i)] += w * float(s)
        out.append(sorted(total, key=lambda i: (-total[i], i)))
    return np.array(out)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_fusion_matches_reference_with_short_lists_and_ties(weight: float) -> None:
    rng = np.random.default_rng(0)
    n, q = 30, 6
    ra = np.stack([rng.permutation(n)[:10] for _ in range(q)])  # a short list
    sa = np.round(rng.random((q, 10)), 1)  # ties on purpose
    rb = np.stack([rng.permutation(n) for _ in range(q)])
    sb = np.round(rng.random((q, n)), 1)
    ranks, scores = fuse_rankings(ra, sa, rb, sb, n, weight)
    np.testing.assert_array_equal(ranks, _reference(ra, sa, rb, sb, n, weight))
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_bad_ids_are_refused() -> None:
    with pytest.raises(InputError, match="outside"):
        fuse_rankings(np.array([[5]]), np.array([[1.0]]), np.array([[0]]), np.array([[1.0]]), 3)

"""mAP and mP@k exactly as the revisited Oxford/Paris protocol defines them (field-facts §2).

A ranked list is a 1-D array of database indices, best first. It may be shorter than the
database: positives that it does not contain count as never retrieved. Junk images are removed
from the list before scoring: each positive's 0-based rank is lowered by the number of junk
images ranked before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_KAPPAS: tuple[int, ...] = (1, 5, 10)


def junk_free_ranks(ranked: np.ndarray, positives: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """0-based ranks of the retrieved positives after junk removal.

    Args:
        ranked: ``(k,)`` database indices, best first.
        positives: ``(p,)`` positive indices.
        junk: ``(j,)`` junk indices.

    Returns:
        ``(m,)`` increasing ``int64`` ranks, ``m <= p`` (positives missing from ``ranked`` are
        not in the result).
    """
    ranked = np.asarray(ranked, dtype=np.int64).reshape(-1)
    positives = np.asarray(positives, dtype=np.int64).reshape(-1)
    junk = np.asarray(junk, dtype=np.int64).reshape(-1)
    # membership through lookup tables: O(n) per list instead of sorting it
    size = 1 + max(int(a.max()) if a.size else -1 for a in (ranked, positives, junk))
    is_pos = np.zeros(size, dtype=bool)
    is_junk = np.zeros(size, dtype=bool)
    is_pos[positives] = True
    is_junk[junk] = True
    pos_at = np.flatnonzero(is_pos[ranked])
    junk_at = np.flatnonzero(is_junk[ranked])
    return pos_at - np.searchsorted(junk_at, pos_at, side="left")


def average_precision(ranks: np.ndarray, n_positives: int) -> float:
    """AP by the trapezoid rule over recall steps of ``1 / n_positives``.

    At the j-th retrieved positive (0-based) with junk-free rank ``r`` it adds
    ``(p0 + p1) / (2 * n_positives)`` with ``p0 = j / r`` (1 when ``r == 0``) and
    ``p1 = (j + 1) / (r + 1)``.

    Args:
        ranks: ``(m,)`` increasing junk-free 0-based ranks of retrieved positives.
        n_positives: number of positives in the ground truth (> 0).

    Returns:
        AP in ``[0, 1]``.
    """
    if n_positives <= 0:
        raise ValueError("average_precision needs at least one positive")
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if r.size == 0:
        return 0.0
    j = np.arange(r.size, dtype=np.float64)
    p0 = np.divide(j, r, out=np.ones_like(r), where=r > 0)
    p1 = (j + 1.0) / (r + 1.0)
    return float(np.sum(p0 + p1) / (2.0 * n_positives))


def precision_at_k(ranks: np.ndarray, kappas: Sequence[int] = DEFAULT_KAPPAS) -> np.ndarray:
    """The protocol's precision at each k.

    With 1-based ranks ``R``, ``kq = min(max(R), k)`` and the value is ``#{R <= kq} / kq``.
    A query that retrieved no positive scores 0.

    Args:
        ranks: ``(m,)`` junk-free 0-based ranks of retrieved positives.
        kappas: the cut-offs.

    Returns:
        ``(len(kappas),)`` float64 precisions in ``[0, 1]``.
    """
    r = np.asarray(ranks, dtype=np.int64).reshape(-1) + 1
    out = np.zeros(len(kappas), dtype=np.float64)
    if r.size == 0:
        return out
    for i, k in enumerate(kappas):
        kq = min(int(r.max()), int(k))
        out[i] = np.count_nonzero(r <= kq) / kq
    return out


@dataclass(frozen=True)
class ProtocolScore:
    """Scores of one protocol, as fractions in ``[0, 1]``.

    Attributes:
        mAP: mean AP over queries that have positives (NaN when none has).
        mP: ``(len(kappas),)`` mean precision at each k over the same queries.
        kappas: the cut-offs of ``mP``.
        aps: ``(n_queries,)`` per-query AP, NaN for queries without positives.
        n_evaluated: number of queries that have positives.
    """

    mAP: float
    mP: np.ndarray
    kappas: tuple[int, ...]
    aps: np.ndarray = field(repr=False)
    n_evaluated: int


def evaluate(
    rankings: Sequence[np.ndarray],
    sets: Sequence[tuple[np.ndarray, np.ndarray]],
    kappas: Sequence[int] = DEFAULT_KAPPAS,
) -> ProtocolScore:
    """Score ranked lists against one protocol's positives and junk.

    Args:
        rankings: one ``(k_q,)`` array of database indices per query, best first.
        sets: one ``(positives, junk)`` pair of index arrays per query, e.g. from
            :func:`delfx.datasets.revisited.protocol_sets`.
        kappas: cut-offs for mP@k.

    Returns:
        The protocol's :class:`ProtocolScore`. Queries without positives are left out of the means.
    """
    if len(rankings) != len(sets):
        raise ValueError(f"{len(rankings)} ranked lists for {len(sets)} queries")
    kappas = tuple(int(k) for k in kappas)
    aps = np.full(len(sets), np.nan)
    prs = np.full((len(sets), len(kappas)), np.nan)
    for q, (ranked, (positives, junk)) in enumerate(zip(rankings, sets, strict=True)):
        if len(positives) == 0:
            continue
        ranks = junk_free_ranks(ranked, positives, junk)
        aps[q] = average_precision(ranks, len(positives))
        prs[q] = precision_at_k(ranks, kappas)
    evaluated = ~np.isnan(aps)
    n = int(evaluated.sum())
    if n == 0:
        return ProtocolScore(float("nan"), np.full(len(kappas), np.nan), kappas, aps, 0)
    return ProtocolScore(float(aps[evaluated].mean()), prs[evaluated].mean(axis=0), kappas, aps, n)

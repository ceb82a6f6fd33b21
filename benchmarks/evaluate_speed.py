"""Evaluator speed against a straightforward loop implementation of the same protocol.

The loop walks each ranked list, counts junk before each positive and accumulates AP, as the
field's reference scripts do. Both must agree to 1e-12; the table gives seconds and the ratio.

    .venv/bin/python benchmarks/evaluate_speed.py [--n-db 100000] [--n-q 70]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from delfx.evaluation import evaluate


def loop_reference(rankings, sets):
    aps = []
    for ranked, (pos, junk) in zip(rankings, sets, strict=True):
        pos_set, junk_set = set(pos.tolist()), set(junk.tolist())
        pos_ranks, seen_junk = [], 0
        for r, idx in enumerate(ranked.tolist()):
            if idx in junk_set:
                seen_junk += 1
            elif idx in pos_set:
                pos_ranks.append(r - seen_junk)
        ap = 0.0
        for j, r in enumerate(pos_ranks):
            ap += ((1.0 if r == 0 else j / r) + (j + 1) / (r + 1)) / (2 * len(pos))
        aps.append(ap)
    return float(np.mean(aps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-db", type=int, default=100_000)
    ap.add_argument("--n-q", type=int, default=70)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rankings = [rng.permutation(args.n_db) for _ in range(args.n_q)]
    sets = []
    for _ in range(args.n_q):
        chosen = rng.choice(args.n_db, size=300, replace=False)
        sets.append((np.sort(chosen[:100]), np.sort(chosen[100:])))
    t = time.perf_counter()
    fast = evaluate(rankings, sets).mAP
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = loop_reference(rankings, sets)
    t_slow = time.perf_counter() - t
    assert abs(fast - slow) < 1e-12, (fast, slow)
    print(f"{'n_db':>8} {'n_q':>4} {'delfx s':>8} {'loop s':>8} {'speed-up':>9}")
    print(f"{args.n_db:>8} {args.n_q:>4} {t_fast:8.3f} {t_slow:8.3f} {t_slow / t_fast:8.1f}x")


if __name__ == "__main__":
    main()

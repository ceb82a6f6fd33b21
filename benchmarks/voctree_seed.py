"""Vocabulary tree: the seed's way against delfx on one holdout-sized problem (table 4).

Not part of ``benchmarks/voctree.py``'s default run: about 4 minutes, most of it the seed-style
code (per-node sklearn ``MiniBatchKMeans``, a Python descent per descriptor, a Python loop over
database images per query; shared with ``benchmarks/voctree.py``). Both run on the same 450,000
synthetic SIFT-like descriptors in one run: a database of 900 images x 500 features, the tree
(10^6 leaves) trained on it, as the seed does; build, quantisation of all descriptors, index,
and search per query of 1000 descriptors (quantise + score all images). delfx runs
``--repeats`` times before and after the seed-style code (median reported), with one thread and
with all of numba's. Needs scikit-learn and threadpoolctl (``pip install -e .[bench]``).

    .venv/bin/python benchmarks/voctree_seed.py [--quick] [--holdout-images 900] [--repeats 3]
        [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from voctree import (  # noqa: E402
    BRANCH,
    HEIGHT,
    fmt,
    naive_bows,
    naive_quantize,
    naive_search,
    naive_train,
    preamble,
    sift_like,
    table,
    timed,
)

from delfx.index.bow import TreeIndex  # noqa: E402
from delfx.index.voctree import level_start, quantize, train_tree  # noqa: E402


def holdout_queries(
    x: np.ndarray, n_img: int, n_feat: int, q_feat: int, count: int, rng: np.random.Generator
) -> list[tuple[int, np.ndarray]]:
    """Queries of ``q_feat`` descriptors: half a database image's own descriptors with noise,
    half fresh ones; with the image they come from."""
    out = []
    for img in rng.choice(n_img, count, replace=False):
        own = x[img * n_feat + rng.choice(n_feat, q_feat // 2, replace=False)]
        own = np.maximum(own + rng.normal(0, 12, own.shape).astype(np.float32), 0)
        out.append((int(img), np.concatenate([own, sift_like(q_feat - q_feat // 2, rng)])))
    return out


def section_holdout(
    n_img: int, n_feat: int, q_feat: int, n_queries: int, repeats: int, rng: np.random.Generator
) -> None:
    """The seed's way against delfx on one holdout-sized problem, both on the same descriptors."""
    import numba
    from threadpoolctl import threadpool_limits

    from delfx.index import kernels, voctree_kernels

    x = sift_like(n_img * n_feat, rng)
    images = np.split(np.arange(len(x)), n_img)
    queries = holdout_queries(x, n_img, n_feat, q_feat, n_queries, rng)
    fast_q = queries * max(1, 50 // n_queries)  # delfx: 50 timed searches
    loads = [f"start {os.getloadavg()[0]:.1f}"]
    _, t_warm = timed(lambda: (voctree_kernels.warm(), kernels.warm()))
    many = numba.get_num_threads()
    modes = sorted({1, many})
    runs = {t: {"build": [], "quant": [], "index": [], "query": []} for t in modes}

    def delfx_pass(threads: int) -> tuple:
        numba.set_num_threads(threads)
        try:
            for _ in range(repeats):
                tree, t = timed(train_tree, x, BRANCH, HEIGHT, seed=0)
                runs[threads]["build"].append(t)
                paths, t = timed(quantize, tree, x)
                runs[threads]["quant"].append(t)
            leaves = paths[:, -1] - level_start(BRANCH, HEIGHT)
            index, t = timed(lambda: TreeIndex(tree).add_leaves([leaves[i] for i in images]))
            index.derived()
            runs[threads]["index"].append(t)
            index.search(queries[0][1])  # warm
            found, t = timed(lambda: [index.search(q)[0][0] == i for i, q in fast_q])
            runs[threads]["query"].append((t[0] / len(fast_q), t[1] / len(fast_q)))
        finally:
            numba.set_num_threads(many)
        return leaves, np.mean(found)

    for threads in modes:
        leaves, fast_top1 = delfx_pass(threads)
    loads.append(f"after delfx {os.getloadavg()[0]:.1f}")
    with threadpool_limits(1):  # sklearn's OpenMP threads crawl on a shared 2-core machine
        cent, tn_build = timed(naive_train, x, BRANCH, HEIGHT, 0)
        loads.append(f"after seed build {os.getloadavg()[0]:.1f}")
        paths, tn_quant = timed(naive_quantize, cent, x)
        (bows, idf), tn_index = timed(naive_bows, [[paths[i] for i in im] for im in images])

        def seed_search(q: np.ndarray) -> int:
            return naive_search(naive_quantize(cent, q), bows, idf)[0][0]

        hits, tn_query = timed(lambda: [seed_search(q) == i for i, q in queries])
    tn_query = (tn_query[0] / n_queries, tn_query[1] / n_queries)
    loads.append(f"after seed {os.getloadavg()[0]:.1f}")
    for threads in modes:
        delfx_pass(threads)
    loads.append(f"end {os.getloadavg()[0]:.1f}")
    seed_leaves = np.unique([p[-1] for p in paths]).size

    def row(label: str, seed_t: tuple, key: str, digits: int, scale: float = 1.0) -> list[str]:
        cells, ratios = [label, fmt(seed_t, digits, scale)], []
        for threads in modes:
            times = runs[threads][key]
            med = tuple(float(np.median([t[i] for t in times])) for i in (0, 1))
            best = min(t[0] for t in times)
            cells.append(f"{fmt(med, digits + 2, scale)} [{scale * best:.{digits + 2}f}]")
            ratios.append(f"{seed_t[0] / med[0]:.0f}x ({seed_t[1] / med[1]:.0f}x)")
        return cells + ratios

    n = len(x)
    names = [f"{t} thread{'s' if t > 1 else ''}" for t in modes]
    table(
        f"4. holdout-sized: {n:,} SIFT-like descriptors ({n_img} images x {n_feat}), tree "
        f"{BRANCH}^{HEIGHT}, queries of {q_feat} descriptors: wall (CPU), delfx median [fastest]",
        ["step", "seed-style (1 thread)"]
        + [f"delfx, {m}" for m in names]
        + [f"speed-up, delfx {m}" for m in names],
        [
            row(f"build: train on all {n:,}", tn_build, "build", 1),
            row(f"quantise all {n:,}", tn_quant, "quant", 1),
            row(f"index {n_img} images", tn_index, "index", 1),
            row("search, ms / query: quantise + score all", tn_query, "query", 0, 1e3),
        ],
    )
    print(
        f"\nOne run, same descriptors, times in s. delfx: {2 * repeats} builds and quantisations "
        f"per thread count ({repeats} before the seed-style code, {repeats} after), median "
        f"(fastest in brackets); numba ({kernels.backend()} backend; compiling or loading the "
        f"cached kernels first took {t_warm[0]:.1f} s, not counted); {2 * len(fast_q)} searches "
        f"per thread count (a query's descent is single-threaded either way). Seed-style: "
        f"sklearn MiniBatchKMeans (defaults) per node on one thread (faster than its default "
        f"OpenMP threads here), a Python descent per descriptor, a Python loop over {n_img} "
        f"image dicts per query, {n_queries} searches. Query = {q_feat // 2} noisy descriptors "
        f"of one database image + {q_feat - q_feat // 2} fresh ones; that image ranked first: "
        f"seed-style {np.mean(hits):.0%}, delfx {fast_top1:.0%}. Leaves holding descriptors: "
        f"seed-style {seed_leaves:,}, delfx {np.unique(leaves).size:,}. "
        f"Load average: {', '.join(loads)}."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="90 images, 3 queries, 3 repeats")
    ap.add_argument("--holdout-images", type=int, default=900, help="500 features each")
    ap.add_argument("--repeats", type=int, default=3, help="delfx runs before and after")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    q = args.quick
    rng = np.random.default_rng(args.seed)
    preamble(f"voctree holdout benchmark{' (quick)' if q else ''}")
    n_img, n_feat = (90, 500) if q else (args.holdout_images, 500)
    section_holdout(n_img, n_feat, 1000, 3 if q else 5, 3 if q else args.repeats, rng)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

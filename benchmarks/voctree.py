"""Vocabulary tree and TF-IDF index: speed against a seed-style pure-Python reference, and scale.

Descriptors are synthetic and SIFT-like: a mixture of 2000 Gaussians in 128-d, clipped at zero
and scaled to L2 norm 512; ``--store`` adds a row for the real descriptors of a delfx feature
store (table 1 only). Three tables (table 4, the holdout-sized comparison, is
``benchmarks/voctree_seed.py``, which reuses the generator and the seed-style code here):

1. ``delfx`` tree (branch 10, height 6) trained on 1M descriptors (100k with ``--quick``), and
   quantisation of them.
2. The seed's way (per-node sklearn ``MiniBatchKMeans``, a Python descent per descriptor, a Python
   loop over database images per query) against ``delfx`` on the same subsample. Needs
   scikit-learn and threadpoolctl (``pip install -e .[bench]``).
3. Indexes of 10k and 100k images with 1000 features each, made from uniformly random leaf ids
   (not from quantised descriptors, to save time): memory per image and query latency.

    .venv/bin/python benchmarks/voctree.py [--quick] [--sections tree naive scale]
        [--store F.h5]
    .venv/bin/python benchmarks/voctree_seed.py [--quick] [--holdout-images 900] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np

from delfx.index.bow import TreeIndex
from delfx.index.voctree import VocabTree, level_start, quantize, train_tree

BRANCH, HEIGHT, DIM = 10, 6, 128


def sift_like(n: int, rng: np.random.Generator, n_modes: int = 2000) -> np.ndarray:
    """``n x 128`` float32 non-negative descriptors of norm 512 from a Gaussian mixture."""
    modes = np.random.default_rng(12345).gamma(0.5, 20.0, (n_modes, DIM)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 1 << 18):
        m = min(n - s, 1 << 18)
        x = modes[rng.integers(0, n_modes, m)] + rng.normal(0, 8, (m, DIM)).astype(np.float32)
        np.maximum(x, 0, out=x)
        x *= 512 / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
        out[s : s + m] = x
    return out


class Clock:
    """Wall and process CPU seconds (CPU time is less sensitive to other users of the machine)."""

    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def timed(fn, *args, **kw):
    clock = Clock()
    out = fn(*args, **kw)
    return out, clock.stop()


def fmt(t: tuple[float, float], digits: int = 1, scale: float = 1.0) -> str:
    """``wall (cpu)``."""
    return f"{scale * t[0]:.{digits}f} ({scale * t[1]:.{digits}f})"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def preamble(title: str) -> None:
    """The report's title, the machine and its load, and the descriptors."""
    print(f"# {title}")
    print(
        f"machine: {platform.machine()} {platform.system()}, os.cpu_count() = {os.cpu_count()}, "
        f"load average at start {os.getloadavg()[0]:.1f} (the machine is shared: CPU seconds "
        "are given next to wall seconds)"
    )
    print("descriptors: synthetic SIFT-like (2000-mode Gaussian mixture, 128-d, clipped, norm 512)")


# ----------------------------------------------------------------------------- seed-style code


def naive_train(x: np.ndarray, branch: int, height: int, seed: int) -> np.ndarray:
    """Recursive hierarchical k-means, one sklearn MiniBatchKMeans (defaults) per node.

    Returns:
        The centroids in delfx's node order.
    """
    from sklearn.cluster import MiniBatchKMeans

    cent = np.zeros((level_start(branch, height + 1) - 1, x.shape[1]), dtype=np.float32)

    def split(node: int, pts: np.ndarray, level: int, own: np.ndarray) -> None:
        if level == height:
            return
        if len(pts) >= branch:
            km = MiniBatchKMeans(branch, random_state=seed).fit(pts)
            children, labels = km.cluster_centers_, km.labels_
        elif len(pts):
            children, labels = pts[np.arange(branch) % len(pts)], np.arange(len(pts))
        else:
            children, labels = np.repeat(own[None], branch, axis=0), np.zeros(0, int)
        cent[node * branch : node * branch + branch] = children
        for j in range(branch):
            split(node * branch + 1 + j, pts[labels == j], level + 1, children[j])

    split(0, x, 0, x.mean(axis=0))
    return cent


def naive_quantize(centroids: np.ndarray, x: np.ndarray) -> list[list[int]]:
    """Per descriptor, a Python walk choosing the nearest child with numpy."""
    b, paths = BRANCH, []
    for v in x:
        node, path = 0, []
        for _ in range(HEIGHT):
            children = centroids[node * b : node * b + b]
            node = node * b + 1 + int(np.argmin(((children - v) ** 2).sum(axis=1)))
            path.append(node)
        paths.append(path)
    return paths


def naive_bows(paths_per_image: list[list[list[int]]]) -> tuple[list[dict], dict]:
    """Per image an L1-normalised TF-IDF dict over all non-root nodes; and the idf dict."""
    counts = [Counter(n for path in paths for n in path) for paths in paths_per_image]
    df = Counter(n for c in counts for n in c)
    idf = {n: float(np.log(len(counts) / k)) for n, k in df.items()}
    bows = []
    for c in counts:
        w = {n: k * idf[n] for n, k in c.items()}
        total = sum(w.values())
        bows.append({n: v / total for n, v in w.items()} if total > 0 else {})
    return bows, idf


def naive_search(query_paths: list[list[int]], bows: list[dict], idf: dict) -> list[int]:
    """Score every database image's dict against the query in a Python loop."""
    c = Counter(n for path in query_paths for n in path)
    q = {n: k * idf.get(n, 0.0) for n, k in c.items()}
    total = sum(q.values())
    q = {n: v / total for n, v in q.items() if v > 0}
    scores = [sum(min(v, d.get(n, 0.0)) for n, v in q.items()) for d in bows]
    return sorted(range(len(bows)), key=lambda i: (-scores[i], i)), scores


def leaf_paths(tree: VocabTree, leaves: np.ndarray) -> list[list[int]]:
    node = leaves + level_start(tree.branch, tree.height)
    cols = []
    for _ in range(tree.height):
        cols.append(node)
        node = (node - 1) // tree.branch
    return np.stack(cols[::-1], axis=1).tolist()


# ----------------------------------------------------------------------------- sections


def section_tree(n: int, rng: np.random.Generator, store: Path | None) -> dict:
    sets = [("synthetic SIFT-like", sift_like(n, rng))]
    if store is not None:
        from delfx.io.descriptor_sample import load_descriptors
        from delfx.io.featurestore import FeatureReader

        with FeatureReader(store) as reader:
            real = load_descriptors(reader)[0][:n]
        sets.append((f"real, {store.name}", real))
    rows, big = [], {}
    for label, x in sets:
        tree, t_build = timed(train_tree, x, BRANCH, HEIGHT, seed=0)
        paths, t_quant = timed(quantize, tree, x)
        leaves = np.bincount(paths[:, -1] - level_start(BRANCH, HEIGHT))
        rows.append(
            [
                label,
                f"{len(x):,} x {x.shape[1]}",
                fmt(t_build),
                fmt(t_quant, 2),
                f"{len(x) / t_quant[0] / 1e6:.2f}",
                f"{(leaves > 0).sum():,}",
                f"{leaves.max()}",
            ]
        )
        if not big:
            big = {"tree": tree, "x": x, "paths": paths, "build": t_build, "quant": t_quant}
    table(
        f"1. delfx vocabulary tree, branch {BRANCH}, height {HEIGHT}: wall s (CPU s)",
        [
            "descriptors",
            "N x D",
            "build",
            "quantise all",
            "M desc/s (wall)",
            "leaves used",
            "max/leaf",
        ],
        rows,
    )
    return big


def section_naive(
    n: int,
    n_quant: int,
    n_db: int,
    n_queries: int,
    rng: np.random.Generator,
) -> None:
    from threadpoolctl import threadpool_limits

    x = sift_like(n, rng)
    xq = x[:n_quant]
    with threadpool_limits(1):  # sklearn's OpenMP threads crawl on a shared 2-core machine
        naive_cent, tn_build = timed(naive_train, x, BRANCH, HEIGHT, 0)
        _, tn_quant = timed(naive_quantize, naive_cent, xq)
    fast_tree, tf_build = timed(train_tree, x, BRANCH, HEIGHT, seed=0)
    _, tf_quant = timed(quantize, fast_tree, xq)
    check = naive_quantize(fast_tree.centroids, xq[:2000])
    agree = (np.asarray(check) == quantize(fast_tree, xq[:2000])).all(axis=1).mean()
    tn = (tn_build[0] + tn_quant[0], tn_build[1] + tn_quant[1])
    tf = (tf_build[0] + tf_quant[0], tf_build[1] + tf_quant[1])
    rows = [
        ["seed-style (sklearn + Python)", fmt(tn_build), fmt(tn_quant, 2), fmt(tn), "1"],
        [
            "delfx",
            fmt(tf_build, 2),
            fmt(tf_quant, 3),
            fmt(tf, 2),
            f"{tn[0] / tf[0]:.0f}x ({tn[1] / tf[1]:.0f}x)",
        ],
    ]
    table(
        f"2a. build on {n:,} descriptors + quantise {n_quant:,} of them: wall s (CPU s)",
        ["implementation", "build", "quantise", "build + quantise", "speed-up wall (CPU)"],
        rows,
    )
    print(
        f"\nquantisation alone: {tn_quant[0] / tf_quant[0]:.0f}x faster (wall). On the delfx "
        f"tree, the Python descent and delfx give the same path for {100 * agree:.2f}% of "
        "2,000 descriptors. sklearn ran with one thread (threadpoolctl)."
    )
    # queries over a database of n_db images with 1000 uniformly random leaves each
    leaves = [rng.integers(0, BRANCH**HEIGHT, 1000) for _ in range(n_db)]
    queries = [rng.integers(0, BRANCH**HEIGHT, 1000) for _ in range(n_queries)]
    (bows, idf), tn_index = timed(naive_bows, [leaf_paths(fast_tree, lv) for lv in leaves])
    index, tf_index = timed(TreeIndex(fast_tree).add_leaves, leaves)
    index.derived()
    naive, tn_query = timed(
        lambda: [naive_search(leaf_paths(fast_tree, q), bows, idf) for q in queries]
    )
    fast, tf_query = timed(lambda: [index.search_leaves(q) for q in queries])
    diff = max(
        np.abs(np.asarray(s) - index.scores_from_leaves(q)).max()
        for (_, s), q in zip(naive, queries, strict=True)
    )
    same = all(list(ids[:10]) == r[:10] for (ids, _), (r, _) in zip(fast, naive, strict=True))
    per_q = 1e3 / n_queries
    table(
        f"2b. {n_queries} queries of 1000 features over {n_db:,} images of 1000 features "
        f"(random leaves): wall (CPU)",
        ["implementation", "index (s)", "ms / query", "speed-up wall (CPU)"],
        [
            [
                "seed-style (dict per image, Python loop)",
                fmt(tn_index),
                fmt(tn_query, 1, per_q),
                "1",
            ],
            [
                "delfx (inverted file)",
                fmt(tf_index, 2),
                fmt(tf_query, 2, per_q),
                f"{tn_query[0] / tf_query[0]:.0f}x ({tn_query[1] / tf_query[1]:.0f}x)",
            ],
        ],
    )
    print(f"\nsame top-10 for every query: {same}; max |score difference|: {diff:.1e}")


def section_scale(
    tree: VocabTree,
    sizes: list[int],
    n_feat: int,
    n_queries: int,
    min_levels: list[int],
    rng: np.random.Generator,
) -> None:
    rows = []
    q_desc = [sift_like(n_feat, rng) for _ in range(5)]
    _, t_qq = timed(lambda: [quantize(tree, q) for q in q_desc])
    t_qq = (t_qq[0] / len(q_desc), t_qq[1] / len(q_desc))
    for min_level in min_levels:
        for n_img in sizes:
            index = TreeIndex(tree, min_level=min_level)
            clock = Clock()
            for s in range(0, n_img, 10_000):  # one segment per 10k images
                block = [
                    rng.integers(0, tree.n_leaves, n_feat) for _ in range(min(10_000, n_img - s))
                ]
                index = index.add_leaves(block)
            t_add = clock.stop()
            _, t_derive = timed(index.derived)
            queries = [rng.integers(0, tree.n_leaves, n_feat) for _ in range(n_queries)]
            index.search_leaves(queries[0], top_k=100)  # warm
            clock = Clock()
            for q in queries:
                index.search_leaves(q, top_k=100)
            t_q = clock.stop()
            t_q = (t_q[0] / n_queries, t_q[1] / n_queries)
            rows.append(
                [
                    f"{n_img:,}",
                    str(min_level),
                    f"{index.inverted.n_postings / n_img:.0f}",
                    f"{index.nbytes() / n_img:,.0f}",
                    fmt(t_add),
                    fmt(t_derive, 2),
                    fmt(t_q, 1, 1e3),
                ]
            )
            del index
    table(
        f"3. scale: {n_feat} uniformly random leaves per image (branch {BRANCH}, height "
        f"{HEIGHT}), {n_queries} queries of {n_feat} random leaves, top 100: wall (CPU)",
        [
            "images",
            "min_level",
            "postings/img",
            "bytes/img",
            "add (s)",
            "idf+norms (s)",
            "ms / query",
        ],
        rows,
    )
    print(
        f"\nquantising a query's {n_feat} descriptors adds {fmt(t_qq, 1, 1e3)} ms. Bytes/img: "
        "postings (uint32 image id + uint16 tf: 6 B), the per-segment word offsets and the derived "
        "idf and norms; the tree's centroids are not counted."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    ap.add_argument(
        "--sections",
        nargs="+",
        choices=["tree", "naive", "scale"],
        default=["tree", "naive", "scale"],
    )
    ap.add_argument("--min-levels", type=int, nargs="+", default=[1, 4], help="scale run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--store", type=Path, help="delfx HDF5 feature store: table 1 also on its descriptors"
    )
    args = ap.parse_args()
    q = args.quick
    n, naive_n, naive_quant = (100_000, 10_000, 5_000) if q else (1_000_000, 50_000, 20_000)
    naive_db, naive_queries = (200, 3) if q else (2_000, 5)
    sizes, n_queries = ([1_000, 5_000], 10) if q else ([10_000, 100_000], 50)
    rng = np.random.default_rng(args.seed)
    preamble(f"voctree benchmark{' (quick)' if q else ''}")
    tree, big = None, None
    if "tree" in args.sections:
        big = section_tree(n, rng, args.store)
        tree = big["tree"]
    if "naive" in args.sections:
        section_naive(naive_n, naive_quant, naive_db, naive_queries, rng)
    if "scale" in args.sections:
        if tree is None:
            print("\n(scale run: tree trained on 100,000 descriptors, used to quantise queries)")
            tree = train_tree(sift_like(100_000, rng), BRANCH, HEIGHT, seed=0)
        section_scale(tree, sizes, 1000, n_queries, args.min_levels, rng)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

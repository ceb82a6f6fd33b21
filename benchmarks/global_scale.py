"""Global descriptors at scale: build time, memory, single-query latency and recall@100 of
:class:`delfx.index.global_ann.GlobalIndex` on SYNTHETIC 100k and 1M descriptor sets.

Uniform random unit vectors are no test (in 512-d every vector is about equally far from every
other: no index can beat brute force on them, and no real descriptor set looks like that). The
vectors here are drawn from a mixture that has the structure of real global descriptors:

* ``N / 200`` cluster centres (places, objects, near-duplicate groups) with lognormal weights,
  so cluster sizes are uneven (a few popular places, a long tail);
* centres and within-cluster offsets live in a ``--rank`` (128) dimensional subspace with a
  decaying spectrum (the ``j``-th axis has standard deviation ``∝ (j + 1)^-0.5``), randomly
  rotated into ``--dim`` dimensions; the within-cluster spread (``--spread``, 1.0) equals the
  spread of the centres, so clusters overlap and a vector's 100 nearest neighbours come from
  several clusters (the share from its own cluster is printed);
* isotropic noise in all ``--dim`` dimensions (``--noise``), then L2 normalisation.

Half the queries are database vectors perturbed by noise of norm about 0.3 (another photo of
the same image), half fresh draws from the mixture (a new photo of a known place). Ground
truth is faiss's exact inner-product search (``faiss.knn``) in the same run; recall@100 is
``|approximate top-100 ∩ exact top-100| / 100``, averaged over the queries. Latency is one
query per call of ``GlobalIndex.search`` (validation, coarse search, code scan and exact
re-scoring included), after 20 warm-up queries, over every query. Memory per vector counts
the float vectors (2048 B at 512-d) kept for re-scoring, the PQ codes and ids twice (the saved
layout and faiss's fast-scan layout that is searched) and the centroids. One IVF-PQ is built
per size (balanced preset) and searched with each preset's search-time settings.

    .venv/bin/python benchmarks/global_scale.py                 # 100k and 1M (about 7 min)
    .venv/bin/python benchmarks/global_scale.py --quick         # 100k only
    .venv/bin/python benchmarks/global_scale.py --images 1000000 --dim 512

Measured with the first command (2-core Xeon VM, os.cpu_count() 2, faiss OpenMP threads 2,
faiss 1.15.1; another user's CPU-bound job held the second core throughout, so build times
are about one core's; peak RSS 2.6 GiB). Rows 2-4 of a size are one build searched with the
fast / balanced / accurate presets:

| N | index (PQ256x4fs codes) | build s | B/vector | p50 ms | p95 ms | recall@100 (pert./fresh) |
|---|---|---|---|---|---|---|
| 100k | exact | 0 | 2048 | 32.86 | 39.76 | 1.0000 (1.0000 / 1.0000) |
| 100k | IVF1024 nprobe=128 rescore=4x | 11.9 | 2341 | 0.58 | 0.73 | 0.9936 (0.9929 / 0.9943) |
| 100k | IVF1024 nprobe=256 rescore=4x | 11.9 | 2341 | 0.75 | 0.92 | 0.9980 (0.9978 / 0.9983) |
| 100k | IVF1024 nprobe=512 rescore=8x | 11.9 | 2341 | 1.37 | 1.97 | 0.9997 (0.9997 / 0.9997) |
| 1M | exact | 0 | 2048 | 400.79 | 687.20 | 1.0000 (1.0000 / 1.0000) |
| 1M | IVF4096 nprobe=128 rescore=4x | 132.8 | 2328 | 1.66 | 2.18 | 0.9364 (0.9345 / 0.9383) |
| 1M | IVF4096 nprobe=256 rescore=4x | 132.8 | 2328 | 2.44 | 3.38 | 0.9696 (0.9681 / 0.9711) |
| 1M | IVF4096 nprobe=512 rescore=8x | 132.8 | 2328 | 4.25 | 5.37 | 0.9885 (0.9878 / 0.9892) |
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from dataclasses import dataclass

import faiss
import numpy as np

from delfx.index.global_ann import GlobalIndex, preset


@dataclass(frozen=True)
class Mixture:
    """A mixture of clusters in a rotated low-rank subspace (see the module docstring)."""

    basis: np.ndarray  # rank x dim, orthonormal rows
    scale: np.ndarray  # (rank,) standard deviation of each subspace axis
    centres: np.ndarray  # C x rank
    weights: np.ndarray  # (C,) cluster probabilities
    spread: float
    noise: float

    @classmethod
    def make(cls, n_centres: int, dim: int, rank: int, spread: float, noise: float, seed: int):
        rng = np.random.default_rng(seed)
        scale = (1.0 + np.arange(rank)) ** -0.5
        scale = (scale / np.linalg.norm(scale)).astype(np.float32)
        basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)
        centres = rng.standard_normal((n_centres, rank)).astype(np.float32) * scale
        weights = rng.lognormal(0.0, 1.0, n_centres)
        return cls(basis, scale, centres, weights / weights.sum(), spread, noise)

    def draw(self, n: int, rng: np.random.Generator, chunk: int = 65536):
        """``n x dim`` float32 unit vectors and the ``(n,)`` cluster of each."""
        dim = self.basis.shape[1]
        out = np.empty((n, dim), np.float32)
        labels = rng.choice(len(self.weights), n, p=self.weights)
        for s in range(0, n, chunk):
            lab = labels[s : s + chunk]
            z = rng.standard_normal((lab.size, self.scale.size), dtype=np.float32)
            x = (self.centres[lab] + self.spread * z * self.scale) @ self.basis
            x += (self.noise / np.sqrt(dim)) * rng.standard_normal(x.shape, dtype=np.float32)
            out[s : s + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out, labels


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def describe(index: GlobalIndex) -> str:
    if index.ivf is None:
        return "exact"
    c = index.conf
    code = f"PQ{index.ivf.pq.M}x{index.ivf.pq.nbits}fs"
    return f"IVF{index.ivf.nlist},{code} nprobe={c.nprobe} rescore={c.rescore}x"


def nbytes(index: GlobalIndex) -> int:
    """Memory held: float vectors, codes and ids (saved and searched layouts), centroids."""
    total = int(index.vectors.nbytes)
    if index.ivf is not None:
        ivf = index.ivf
        total += 2 * ivf.ntotal * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4
    return total


def timed_queries(index: GlobalIndex, q: np.ndarray, k: int, warm: int = 20):
    """Search one query per call: ``(ids (Q, k), latencies in ms (Q,))``."""
    for i in range(min(warm, len(q))):
        index.search(q[i : i + 1], k)
    ids = np.empty((len(q), k), np.int64)
    ms = np.empty(len(q))
    for i in range(len(q)):
        t = time.perf_counter()
        ids[i] = index.search(q[i : i + 1], k)[0][0]
        ms[i] = 1000 * (time.perf_counter() - t)
    return ids, ms


def recall(ids: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-query ``|ids ∩ truth| / k``."""
    k = truth.shape[1]
    return np.array([np.intersect1d(a, b).size / k for a, b in zip(ids, truth, strict=True)])


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{model}; os.cpu_count()={os.cpu_count()}, faiss.omp_get_max_threads()="
        f"{faiss.omp_get_max_threads()}; faiss {faiss.__version__}, numpy {np.__version__}; "
        f"load average {load}"
    )


def run_size(n: int, args, rows: list[str]) -> None:
    rng = np.random.default_rng(args.seed + n)
    mix = Mixture.make(max(64, n // 200), args.dim, args.rank, args.spread, args.noise, args.seed)
    t = time.perf_counter()
    x, lab = mix.draw(n, rng)
    half = args.queries // 2
    src = rng.choice(n, half, replace=False)
    jitter = rng.standard_normal((half, args.dim), dtype=np.float32) * (0.3 / np.sqrt(args.dim))
    fresh, fresh_lab = mix.draw(args.queries - half, rng)
    q = np.concatenate([unit(x[src] + jitter), fresh])
    q_lab = np.concatenate([lab[src], fresh_lab])
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    truth_sims, truth = faiss.knn(q, x, args.k, metric=faiss.METRIC_INNER_PRODUCT)
    gt_s = time.perf_counter() - t
    same = (lab[truth] == q_lab[:, None]).mean()
    pairs = rng.choice(n, (2, 2000))
    rand = np.einsum("nd,nd->n", x[pairs[0]], x[pairs[1]])
    print(
        f"\nN={n:,}: generated in {gen_s:.0f} s, exact top-{args.k} (faiss.knn, "
        f"{len(q)} queries) in {gt_s:.0f} s. Mean similarity: top-1 {truth_sims[:, 0].mean():.3f}, "
        f"top-{args.k} {truth_sims[:, -1].mean():.3f}, random pairs {rand.mean():.3f} ± "
        f"{rand.std():.3f}; true top-{args.k} from the query's own cluster: {same:.0%}",
        flush=True,
    )

    def row(index: GlobalIndex, build_s: float) -> None:
        ids, ms = timed_queries(index, q, args.k)
        r = recall(ids, truth)
        rows.append(
            f"| {n:,} | {describe(index)} | {build_s:.1f} | {nbytes(index) / n:.0f} | "
            f"{np.percentile(ms, 50):.2f} | {np.percentile(ms, 95):.2f} | {r.mean():.4f} | "
            f"{r[:half].mean():.4f} / {r[half:].mean():.4f} |"
        )
        print(rows[-1], flush=True)

    row(GlobalIndex.build(x, preset("exact")), 0.0)
    t = time.perf_counter()
    index = GlobalIndex.build(x, preset("balanced", exact_below=0))
    build_s = time.perf_counter() - t
    for name in ("fast", "balanced", "accurate"):
        conf = preset(name)
        index.tune(nprobe=conf.nprobe, rescore=conf.rescore)
        row(index, build_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--quick", action="store_true", help="100k images only")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--rank", type=int, default=128, help="dimension of the cluster subspace")
    ap.add_argument("--spread", type=float, default=1.0, help="within-cluster / centre spread")
    ap.add_argument("--noise", type=float, default=0.3, help="norm of the isotropic noise")
    ap.add_argument("--queries", type=int, default=400, help="half perturbed, half fresh")
    ap.add_argument("-k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [100_000] if args.quick else args.images
    print(f"machine: {machine()}")
    rows = [
        "| N | index | build s | bytes/vector | p50 ms | p95 ms | recall@100 | perturbed / fresh |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        run_size(n, args, rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak RSS {peak:.1f} GiB; load average at the end {os.getloadavg()[0]:.2f}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

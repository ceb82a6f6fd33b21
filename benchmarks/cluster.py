"""Sharded extraction and indexing on Ray against one process: throughput, overhead, identity.

Three parts, each printing a markdown table:

* ``throughput``: the realviews photos (``--photos``, 321 real photos) extracted by a local Ray
  cluster of 2 CPUs (started once, before the timings) with 1 and then 2 workers, 16 shards
  each, against the same extraction in one process (1 and 2 processes). SIFT (``rootsift``)
  for ``delfx extract sift``, then the collection's default engine (SIFT + EfficientNet-Lite0
  GeM at 512 px) as ``delfx index create`` extracts it. Every sharded feature file is checked,
  image for image, against the one-process file.
* ``overhead``: whole commands on the shipped samples (57 photos), run as a user runs them:
  ``delfx extract sift`` and ``delfx index create`` alone, then with ``--ray local[2]
  --shards 2`` (cluster start, actor start and model loading included).
* ``identity``: a collection built in one process and one built in 4 shards on Ray: features,
  postings and statistics compared exactly, and the results (names, scores, inliers) of 20
  query photos. ``sift-asmk`` on realviews; the default hybrid on the samples (its global
  descriptor goes through torch, whose CPU sums depend on the thread count: reported as the
  largest score difference).

    .venv/bin/python benchmarks/cluster.py                  # all three (about 15 min)
    .venv/bin/python benchmarks/cluster.py --part overhead

Measured on the 2-core VM of this project, nothing else running (README, "Running on a cluster"
under Results): SIFT 4.64 photos/s with 1 Ray worker, 9.51 with 2 (2.05x); the default engine
3.35 and 5.10 (1.53x; 1.69x in a run with 8 shards); Ray costs +9.8 s on `delfx extract sift`
and +6.4 s on `delfx index create` over the samples; 4-shard builds identical (sift-asmk), or
within 2.4e-7 in score (the torch global descriptor).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REALVIEWS = ROOT.parent / "shared" / "data" / "realviews"


def _features_equal(a: Path, b: Path) -> bool:
    from delfx.io.featurestore import FeatureReader

    with FeatureReader(a) as ra, FeatureReader(b) as rb:
        if ra.names() != rb.names():
            return False
        for name in ra.names():
            fa, fb = ra.get(name), rb.get(name)
            if not (
                np.array_equal(fa.keypoints, fb.keypoints)
                and np.array_equal(fa.descriptors, fb.descriptors)
            ):
                return False
    return True


def throughput(photos: Path, tmp: Path, engine_too: bool) -> None:
    import ray

    from delfx import extract
    from delfx.cluster.distributor import Distributor
    from delfx.engine import manifest as mf
    from delfx.engine import sharded
    from delfx.engine.photos import photo_jobs
    from delfx.engine.spec import DEFAULT_COLLECTION, named
    from delfx.features.sift import PRESETS

    n = len(extract.folder_jobs(photos))
    conf = extract.ExtractConfig(sift=PRESETS["rootsift"])
    rows = []
    ref = tmp / "one-1.h5"
    for procs in (1, 2):
        t = time.perf_counter()
        extract.main(
            conf, tmp / f"one-{procs}.h5", images_dir=photos, workers=procs, progress=False
        )
        dt = time.perf_counter() - t
        same = "(reference)" if procs == 1 else _features_equal(ref, tmp / f"one-{procs}.h5")
        rows.append(("sift", f"one process, {procs} extraction process(es)", dt, same))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    for workers in (1, 2):
        out = tmp / f"ray-{workers}.h5"
        t = time.perf_counter()
        extract.main(conf, out, images_dir=photos, progress=False,
                     distributor=Distributor("ray", workers=workers, shards=16))  # fmt: skip
        dt = time.perf_counter() - t
        rows.append(
            ("sift", f"Ray local[2], {workers} worker(s), 16 shards", dt, _features_equal(ref, out))
        )
    if engine_too:
        spec = named(DEFAULT_COLLECTION)
        jobs = photo_jobs([photos], root=photos)
        for workers in (1, 2):
            folder = tmp / f"engine-{workers}"
            folder.mkdir()
            t = time.perf_counter()
            dist = Distributor("ray", workers=workers, shards=16)
            sharded.extract(folder, spec, jobs, dist, first_shard=0, first_id=0, workers=1,
                            device="cpu", progress=False)  # fmt: skip
            dt = time.perf_counter() - t
            same = "-"
            if workers == 2:
                with_one = [tmp / "engine-1" / mf.shard_names(i)[0] for i in range(16)]
                same = all(_features_equal(a, folder / a.name) for a in with_one)
            rows.append(
                (
                    f"{DEFAULT_COLLECTION} (SIFT + lite0 GeM)",
                    f"Ray local[2], {workers} worker(s), 16 shards",
                    dt,
                    same,
                )
            )
    ray.shutdown()
    print(f"\n### Extraction throughput, {n} realviews photos\n")
    print("| extractor | run | s | photos/s | vs 1 worker | features equal to one process |")
    print("|---|---|---|---|---|---|")
    base: dict[str, float] = {}
    for kind, run, dt, same in rows:
        if "1 worker" in run or "1 extraction" in run:
            base[kind + run.split(",")[0]] = dt
        ratio = base.get(kind + run.split(",")[0], dt) / dt
        print(f"| {kind} | {run} | {dt:.1f} | {n / dt:.2f} | {ratio:.2f}x | {same} |")


def _cli(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "delfx", "-q", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t


def overhead(tmp: Path, repeats: int) -> None:
    from delfx.demo import samples_dir

    samples = str(samples_dir())
    ray_flags = ["--ray", "local[2]", "--shards", "2"]

    def extract_cmd(o: str, extra: list[str]) -> list[str]:
        return ["extract", "sift", "--images", samples, "--out", f"{o}.h5", *extra]

    def create_cmd(o: str, extra: list[str]) -> list[str]:
        return ["index", "create", o, "--images", samples, "--no-progress", *extra]

    cases = [
        ("delfx extract sift", extract_cmd),
        ("delfx index create (global+sift-asmk)", create_cmd),
    ]
    print("\n### Overhead of Ray on the shipped samples (57 photos), whole commands\n")
    print("| command | one process s | --ray local[2] --shards 2 s | difference s |")
    print("|---|---|---|---|")
    for label, argv in cases:
        seq, par = [], []
        for r in range(repeats):
            seq.append(_cli(argv(str(tmp / f"seq-{label[6:11]}-{r}"), [])))
            par.append(_cli(argv(str(tmp / f"ray-{label[6:11]}-{r}"), ray_flags)))
        s, p = min(seq), min(par)
        print(f"| {label} | {s:.1f} | {p:.1f} | {p - s:+.1f} |")


def _results(folder: Path, queries: list[Path]) -> list[list[tuple[str, float, int | None]]]:
    from delfx.engine import Searcher

    with Searcher.open(folder) as s:
        return [[(h.name, h.score, h.inliers) for h in s.query(q, top=20).hits] for q in queries]


def _postings_and_stats_equal(a: Path, b: Path) -> bool:
    from delfx.engine import manifest as mf
    from delfx.engine.build import _load_index
    from delfx.index import local
    from delfx.index.invfile import InvertedFile

    ia, na = _load_index(a, mf.read(a))
    ib, nb = _load_index(b, mf.read(b))
    if na != nb:
        return False
    segs = [local.segments_of(i) for i in (ia, ib)]
    merged = [InvertedFile(s[0].offsets.size - 1, s).compact().segments[0] for s in segs]
    same = all(
        np.array_equal(getattr(merged[0], k), getattr(merged[1], k))
        for k in ("offsets", "image_ids")
    )
    same &= all(
        np.array_equal(merged[0].payload[k], merged[1].payload[k]) for k in merged[0].payload
    )
    sa, sb = local.stats_of(ia), local.stats_of(ib)
    return same and all(np.array_equal(sa[k], sb[k]) for k in sa)


def identity(photos: Path, tmp: Path) -> None:
    import ray

    from delfx import engine
    from delfx.cluster.distributor import Distributor
    from delfx.demo import samples_dir

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    print("\n### 4 shards on Ray against one process\n")
    print("| photos | pipeline | one process s | Ray 4 shards s | postings + stats | 20 queries |")
    print("|---|---|---|---|---|---|")
    n_real = len(list(photos.rglob("*.jpg")))
    cases = [
        (f"realviews ({n_real})", photos, "sift-asmk"),
        ("samples (57)", samples_dir(), engine.DEFAULT_COLLECTION),
    ]
    for label, folder, spec in cases:
        queries = sorted(folder.rglob("*.jpg"))[::7][:20]
        times, outs = [], []
        for name, dist in (("one", None), ("ray", Distributor("ray", shards=4))):
            out = tmp / f"id-{spec}-{name}"
            t = time.perf_counter()
            engine.create(engine.named(spec), out, folder, progress=False, distributor=dist)
            times.append(time.perf_counter() - t)
            outs.append(out)
        ra, rb = _results(outs[0], queries), _results(outs[1], queries)
        if ra == rb:
            verdict = "identical"
        else:
            names = all([h[0] for h in x] == [h[0] for h in y] for x, y in zip(ra, rb, strict=True))
            inl = all([h[2] for h in x] == [h[2] for h in y] for x, y in zip(ra, rb, strict=True))
            diff = max(
                abs(p[1] - q[1])
                for x, y in zip(ra, rb, strict=True)
                for p, q in zip(x, y, strict=False)
            )
            word = {True: "identical", False: "DIFFER"}
            verdict = f"names {word[names]}, inliers {word[inl]}, max score diff {diff:.1e}"
        same = "identical" if _postings_and_stats_equal(*outs) else "DIFFER"
        print(f"| {label} | {spec} | {times[0]:.1f} | {times[1]:.1f} | {same} | {verdict} |")
    ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "throughput", "overhead", "identity"), default="all")
    p.add_argument("--photos", type=Path, default=REALVIEWS, help="folder of photos (realviews)")
    p.add_argument("--repeats", type=int, default=2, help="overhead: runs of each command (min)")
    p.add_argument("--no-engine", action="store_true", help="throughput: SIFT only")
    args = p.parse_args()
    import os

    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="delfx-cluster-") as tmp:
        tmp = Path(tmp)
        if args.part in ("all", "throughput"):
            (tmp / "t").mkdir()
            throughput(args.photos, tmp / "t", not args.no_engine)
        if args.part in ("all", "overhead"):
            (tmp / "o").mkdir()
            overhead(tmp / "o", args.repeats)
        if args.part in ("all", "identity"):
            (tmp / "i").mkdir()
            identity(args.photos, tmp / "i")
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()

"""Collections: time ``index create``, ``index add`` and ``query``; rank-1 rate of crop queries.

Part 1 (speed) indexes ``--limit`` photos of ``--photos`` (default: the realviews photos beside
the repository, else the shipped samples), sorted by path, minus the last ``--add`` of them,
then adds those, then opens the collection once and queries ``--queries`` of its photos with
verification of the top ``--verify``. Times are wall-clock, extraction included.

Part 2 (crops) builds a collection of the shipped samples and queries ``--trials`` random crops
of indexed group photos, each keeping a random 30-50 % of the photo's area (aspect ratio
between 0.5 and 2 of the photo's), and counts how often the photo comes first.

Run: ``.venv/bin/python benchmarks/collection_speed.py [--pipeline sift-asmk] [--limit 262]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from delfx import engine
from delfx.engine import manifest as mf
from delfx.engine.photos import photo_jobs
from delfx.io.images import read_image

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "delfx" / "samples"
REALVIEWS = REPO.parent / "shared" / "data" / "realviews"


def _copy(jobs: list, dst: Path) -> Path:
    for job in jobs:
        (dst / job.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(job.path, dst / job.name)
    return dst


def speed(args: argparse.Namespace, tmp: Path) -> None:
    src = Path(args.photos) if args.photos else (REALVIEWS if REALVIEWS.is_dir() else SAMPLES)
    jobs = photo_jobs([src], root=src)[: args.limit]
    base, extra = jobs[: len(jobs) - args.add], jobs[len(jobs) - args.add :]
    photos = _copy(base, tmp / "photos")
    more = _copy(extra, tmp / "more") if extra else None
    spec = engine.named(args.pipeline)
    folder = tmp / "collection"
    t = time.perf_counter()
    engine.create(spec, folder, photos, progress=False)
    t_create = time.perf_counter() - t
    t = time.perf_counter()
    if more is not None:
        engine.add(folder, [more], progress=False)
    t_add = time.perf_counter() - t
    t = time.perf_counter()
    searcher = engine.Searcher.open(folder)
    t_open = time.perf_counter() - t
    rng = np.random.default_rng(0)
    picks = rng.choice(len(jobs), size=min(args.queries, len(jobs)), replace=False)
    searcher.query(jobs[int(picks[0])].path, verify=args.verify)  # warm-up (network, caches)
    totals, parts = [], {}
    for i in picks:
        r = searcher.query(jobs[int(i)].path, top=10, verify=args.verify)
        totals.append(r.timings["total_ms"])
        for k, v in r.timings.items():
            parts.setdefault(k, []).append(v)
    searcher.close()
    m = mf.read(folder)
    print(f"photos: {src} ({len(jobs)} by path), pipeline {args.pipeline}\n")
    print("| step | photos | seconds |\n|---|---:|---:|")
    print(f"| index create | {len(base)} | {t_create:.1f} |")
    tm = m["timings"]
    for k in ("extract", "global", "codebook", "index"):
        if k in tm:
            print(f"| - {k} | | {tm[k]:.1f} |")
    if extra:
        print(f"| index add | {len(extra)} | {t_add:.2f} |")
    print(f"| open (once) | | {t_open:.2f} |")
    print(f"\n| query (verify {args.verify}), {len(totals)} photos | mean ms | median ms |")
    print("|---|---:|---:|")
    for k, v in parts.items():
        mean, median = statistics.mean(v), statistics.median(v)
        print(f"| {k.removesuffix('_ms')} | {mean:.0f} | {median:.0f} |")
    print(f"\ncodebook: {m['index']['config']['n_words']} words\n")


def crops(args: argparse.Namespace, tmp: Path) -> None:
    folder = tmp / "samples"
    engine.create(engine.named(args.pipeline), folder, SAMPLES, progress=False)
    rng = np.random.default_rng(args.seed)
    views = [j for j in photo_jobs([SAMPLES], root=SAMPLES) if j.name.startswith("groups/")]
    first = 0
    fractions = []
    with engine.Searcher.open(folder) as s:
        for _ in range(args.trials):
            job = views[int(rng.integers(len(views)))]
            image = read_image(job.path)
            h, w = image.shape[:2]
            area = rng.uniform(0.3, 0.5)
            aspect = rng.uniform(0.5, 2.0)  # crop w/h relative to the photo's
            cw = min(w, round(w * np.sqrt(area * aspect)))
            ch = min(h, round(h * area * w / cw))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = np.ascontiguousarray(image[y0 : y0 + ch, x0 : x0 + cw])
            fractions.append(cw * ch / (w * h))
            r = s.query(crop, top=1, verify=args.verify, label=job.name)
            first += r.names() == [job.name]
    print(f"crop queries ({args.pipeline}, verify {args.verify}, seed {args.seed}): "
          f"{first}/{args.trials} at rank 1 ({100 * first / args.trials:.0f} %), "
          f"crop area {min(fractions):.2f}-{max(fractions):.2f} of the photo")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", help="folder of photos (default: realviews, else the samples)")
    ap.add_argument("--pipeline", default="sift-asmk")
    ap.add_argument("--limit", type=int, default=262, help="photos taken, sorted by path")
    ap.add_argument("--add", type=int, default=10, help="photos added after create")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--verify", type=int, default=20)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", choices=("speed", "crops"), help="leave one part out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip != "speed":
            speed(args, Path(tmp))
        if args.skip != "crops":
            crops(args, Path(tmp))


if __name__ == "__main__":
    main()

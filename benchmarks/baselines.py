"""Baseline retrieval quality on benchmarks built from real photos and from synthetic views.

Builds (into --work, default ./work/bench-baselines):
- ``realviews``: ``delfx data build-groups`` over ../shared/data/realviews (groups + distractors);
- ``realviews-synth``: ``delfx data synth`` over the first view of every realviews group, with
  the realviews distractors.

Then ranks each with the training-free baselines and chance, and prints a table of mAP (E/M/H)
and mP@k, plus build and evaluation timings. Every later retrieval pipeline must beat these rows.

    .venv/bin/python benchmarks/baselines.py [--realviews ../shared/data/realviews] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from delfx import build_groups, synth
from delfx.baselines.tiny import DESCRIPTORS, rank_by_similarity
from delfx.datasets.revisited import RetrievalDataset
from delfx.evaluate import score


def fmt(x: float) -> str:
    return "  n/a" if np.isnan(x) else f"{100 * x:5.2f}"


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realviews", type=Path, default=here.parent / "shared/data/realviews")
    ap.add_argument("--work", type=Path, default=here / "work" / "bench-baselines")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = args.work / "datasets"
    timings = {}
    t = time.perf_counter()
    build_groups.main(
        build_groups.GroupsConfig(progress=False),
        args.realviews / "groups",
        root,
        "realviews",
        distractors_dir=args.realviews / "distractors",
        overwrite=True,
    )
    timings["build-groups realviews"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        for g in sorted(p for p in (args.realviews / "groups").iterdir() if p.is_dir()):
            shutil.copyfile(sorted(g.glob("*.jpg"))[0], Path(tmp) / f"{g.name}.jpg")
        t = time.perf_counter()
        synth.main(
            synth.PRESETS["default"],
            Path(tmp),
            root,
            "realviews-synth",
            seed=args.seed,
            distractors_dir=args.realviews / "distractors",
            overwrite=True,
        )
        timings["synth realviews-synth"] = time.perf_counter() - t

    print(
        f"{'dataset':<16} {'method':<18} {'db':>5} {'q':>4}  {'E':>5} {'M':>5} {'H':>5}"
        f"  {'mP@1/5/10 (M)':>17}  {'s':>5}"
    )
    for name in ("realviews", "realviews-synth"):
        ds = RetrievalDataset(root, name)
        for method in ("tiny-image", "colour-histogram", "chance"):
            t = time.perf_counter()
            if method == "chance":
                rng = np.random.default_rng(args.seed)
                ranks = np.stack([rng.permutation(len(ds.images)) for _ in ds.queries])
            else:
                fn = DESCRIPTORS[method]
                db = np.stack([fn(ds.load_image(i)) for i in range(len(ds.images))])
                qs = np.stack([fn(ds.load_query(q)) for q in range(len(ds.queries))])
                ranks = rank_by_similarity(db, qs)
            s = score(ds, list(ranks))
            mp = " ".join(fmt(v) for v in s["medium"].mP)
            print(
                f"{name:<16} {method:<18} {len(ds.images):>5} {len(ds.queries):>4}  "
                f"{fmt(s['easy'].mAP)} {fmt(s['medium'].mAP)} {fmt(s['hard'].mAP)}  {mp:>17}"
                f"  {time.perf_counter() - t:5.1f}"
            )
    print()
    for k, v in timings.items():
        print(f"{k:<28} {v:6.1f} s")


if __name__ == "__main__":
    main()

"""Quality and timings of every local-feature pipeline, with and without spatial verification.

Datasets (built into --work if missing):
- ``realviews``: ``delfx data build-groups`` over ../shared/data/realviews;
- ``realviews-synth``: ``delfx data synth`` (seed 0) over the first view of each group, with the
  realviews distractors.

Each pipeline runs through ``delfx.run.main`` exactly as ``delfx run`` does: codebooks are trained
on images unrelated to every query (the distractors), except ``sift-voctree-seed``, which trains
on the database as the seed did.

    .venv/bin/python benchmarks/local_pipelines.py [--rerank-num 100] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from delfx import build_groups, run, synth


def ensure_datasets(realviews: Path, root: Path) -> None:
    if not (root / "realviews").is_dir():
        build_groups.main(
            build_groups.GroupsConfig(progress=False),
            realviews / "groups",
            root,
            "realviews",
            distractors_dir=realviews / "distractors",
        )
    if not (root / "realviews-synth").is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            for g in sorted(p for p in (realviews / "groups").iterdir() if p.is_dir()):
                shutil.copyfile(sorted(g.glob("*.jpg"))[0], Path(tmp) / f"{g.name}.jpg")
            synth.main(
                synth.PRESETS["default"],
                Path(tmp),
                root,
                "realviews-synth",
                seed=0,
                distractors_dir=realviews / "distractors",
            )


def fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:5.2f}"


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realviews", type=Path, default=here.parent / "shared/data/realviews")
    ap.add_argument("--work", type=Path, default=here / "work" / "bench-local")
    ap.add_argument("--rerank-num", type=int, default=100)
    ap.add_argument("--datasets", default="realviews,realviews-synth")
    ap.add_argument("--pipelines", default=",".join(run.PIPELINES))
    args = ap.parse_args()
    root = args.work / "datasets"
    ensure_datasets(args.realviews, root)
    print(f"machine: {os.cpu_count()} CPU cores; rerank-num {args.rerank_num}")
    head = (
        f"{'dataset':<16} {'pipeline':<26} {'E':>5} {'M':>5} {'H':>5}  {'mP@1 M':>6}  "
        f"{'index s':>7} {'search ms/q':>11} {'verify ms/q':>11} {'KB/img':>6}  codebook"
    )
    print(head)
    print("-" * len(head))
    for name in args.datasets.split(","):
        for pipeline in args.pipelines.split(","):
            for rerank in (0, args.rerank_num):
                out = args.work / "results" / f"{name}-{pipeline}-sv{rerank}.json"
                t = time.perf_counter()
                run.main(
                    pipeline, root, name, args.work / name, out, rerank_num=rerank, progress=False
                )
                res = json.loads(out.read_text())
                p, tm = res["protocols"], res["timings"]
                print(
                    f"{name:<16} {res['method']:<26} {fmt(p['easy']['mAP'])} "
                    f"{fmt(p['medium']['mAP'])} {fmt(p['hard']['mAP'])}  "
                    f"{fmt(p['medium']['mP@k'][0]):>6}  {tm.get('index', 0.0):7.1f} "
                    f"{tm.get('search_per_query_ms', 0.0):11.1f} "
                    f"{tm.get('verify_per_query_ms', 0.0):11.1f} "
                    f"{res['index_bytes_per_image'] / 1024:6.1f}  {res['codebook'][:40]}"
                    f"  ({time.perf_counter() - t:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()

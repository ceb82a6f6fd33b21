"""``delfx demo``: build the demo benchmark from shipped photos and print a results table."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from delfx import demo
from delfx.cli import add_subcommand
from delfx.cli.types import nonnegative_int
from delfx.evaluation.report import format_lines


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    parser = add_subcommand(subparsers, "demo", "run the best landed pipeline on sample photos")
    parser.add_argument(
        "--work", metavar="DIR", help="keep datasets and results here (default: a temp folder)"
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the synthetic views"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_run)


def _fmt(x: float | None) -> str:
    return "   n/a" if x is None else f"{x:6.2f}"


def _run(args: argparse.Namespace) -> int:
    if args.work:
        summary = demo.main(args.work, seed=args.seed, progress=not args.no_progress)
        _print(json.loads(summary.read_text()), Path(args.work))
        return 0
    with tempfile.TemporaryDirectory(prefix="delfx-demo-") as tmp:
        summary = demo.main(tmp, seed=args.seed, progress=not args.no_progress)
        _print(json.loads(summary.read_text()), None)
    return 0


def _print(summary: dict, work: Path | None) -> None:
    results = summary["results"]
    print()
    for res in results:
        print(f"# {res['method']}")
        for line in format_lines(res):
            print(line)
    print()
    header = f"{'dataset':<12} {'method':<26} {'db':>4} {'q':>3}   mAP E    M      H    mP@1 M"
    print(header)
    print("-" * len(header))
    for res in results:
        p = res["protocols"]
        print(
            f"{res['dataset']:<12} {res['method']:<26} {res['n_images']:>4} {res['n_queries']:>3}"
            f"  {_fmt(p['easy']['mAP'])} {_fmt(p['medium']['mAP'])} {_fmt(p['hard']['mAP'])}"
            f"  {_fmt(p['medium']['mP@k'][0])}"
        )
    print()
    if summary.get("pretrained"):
        print("global-gem: EfficientNet-Lite0 GeM at 512 px with ImageNet weights, not trained")
        print("on these photos. global+sift-asmk: its cosine similarity added to the RootSIFT")
        print("ASMK* score.")
    else:
        print("The pretrained pipelines (best on these sets) need pip install 'delfx[pretrained]',")
        print("which 'make demo' installs.")
    print("sift-asmk: RootSIFT + ASMK* (codebook trained on distractor photos only); +svN: the")
    print("top N verified with MAGSAC++. sift-voctree-seed: the seed's SIFT vocabulary tree,")
    print("trained on the test database as the seed did.")
    if work is not None:
        print(f"Datasets and results JSON kept in {work}")
    from delfx.demo import samples_dir

    print("\nSearch these photos yourself, and browse them in a web page:")
    print(f"  delfx index create demo-index --images {samples_dir()} --pipeline sift-asmk")
    print("  delfx query demo-index PHOTO.jpg")
    print("  delfx serve demo-index      # then open http://127.0.0.1:8000/")

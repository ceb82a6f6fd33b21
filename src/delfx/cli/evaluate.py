"""``delfx evaluate``: score a rankings file and print the seed's lines."""

from __future__ import annotations

import argparse
import json

from delfx import evaluate
from delfx.cli import add_subcommand
from delfx.evaluation.rankings import LAYOUTS
from delfx.evaluation.report import format_lines


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = add_subcommand(subparsers, "evaluate", "score a rankings file (mAP, mP@k)")
    parser.add_argument("--root", required=True, help="datasets root")
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. roxford5k")
    parser.add_argument(
        "--ranks", required=True, metavar="FILE", help=".npy (n_db x n_q or n_q x k) or text"
    )
    parser.add_argument("--output", required=True, metavar="JSON", help="results JSON to write")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help=".npy matrix layout")
    parser.add_argument("--method", default="unknown", help="method name for the results JSON")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    conf = evaluate.EvalConfig(layout=args.layout, method=args.method)
    out = evaluate.main(conf, args.root, args.dataset, args.ranks, args.output)
    print_results(json.loads(out.read_text()))
    return 0


def print_results(results: dict) -> None:
    """Print the seed's two lines from a results JSON object."""
    for line in format_lines(results):
        print(line)

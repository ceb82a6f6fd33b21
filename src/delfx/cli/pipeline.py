"""``delfx pipeline CONFIG.yaml``: the seed's whole experiment, fine-tuning to results."""

from __future__ import annotations

import argparse
import json

from delfx.cli import add_subcommand


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pipeline`` subcommand."""
    parser = add_subcommand(
        subparsers,
        "pipeline",
        "run an experiment file: build data, fine-tune, attention, extract, index, evaluate",
    )
    parser.add_argument("config", metavar="CONFIG.yaml", help="experiment file (see configs/)")
    parser.add_argument("--device", help="override the file's device (cpu or cuda:N)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from delfx import pipeline, pipeline_config

    exp = pipeline_config.load(args.config)
    if args.device:
        exp = replace(exp, device=args.device)

    def show(line: str) -> None:
        print(line, flush=True)

    out = pipeline.main(exp, progress=not args.quiet, on_line=show)
    results = json.loads(out.read_text())["results"]
    print("\n| dataset | method | mAP E | mAP M | mAP H |\n|---|---|---|---|---|")
    for res in results:
        cells = [
            "n/a" if (v := res["protocols"].get(p, {}).get("mAP")) is None else f"{v:.2f}"
            for p in ("easy", "medium", "hard")
        ]
        print(f"| {res['dataset']} | {res['method']} | {' | '.join(cells)} |")
    print(f"wrote {out}")
    return 0

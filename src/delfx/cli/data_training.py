"""``delfx data build-training``: a tuple-training set from folders of views of the same place."""

from __future__ import annotations

import argparse

from delfx import build_training
from delfx.cli import add_output_flags, add_subcommand
from delfx.cli.types import fraction, nonnegative_int


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``build-training`` under ``delfx data``."""
    parser = add_subcommand(
        data_subparsers,
        "build-training",
        "build a training set (query-positive pairs, one cluster per group) from "
        "GROUPS_DIR/<group>/*.jpg",
    )
    parser.add_argument("groups_dir", metavar="GROUPS_DIR", help="one folder of views per place")
    add_output_flags(parser, gnd=False)
    parser.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.1,
        help="share of groups held out for validation (default 0.1; 0 for none)",
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the train/val group split"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    folder = build_training.main(
        args.groups_dir,
        args.out,
        args.name,
        val_fraction=args.val_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"wrote {folder}")
    return 0

"""``delfx data build-groups``: a benchmark from folders of views of the same place."""

from __future__ import annotations

import argparse

from delfx import build_groups
from delfx.cli import add_output_flags, add_subcommand


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``build-groups`` under ``delfx data``."""
    parser = add_subcommand(
        data_subparsers,
        "build-groups",
        "build a benchmark from GROUPS_DIR/<group>/*.jpg (one query per group)",
    )
    parser.add_argument("groups_dir", metavar="GROUPS_DIR", help="one folder of views per place")
    parser.add_argument("--distractors", metavar="DIR", help="photos that are never positive")
    add_output_flags(parser)
    parser.add_argument("--preset", choices=sorted(build_groups.PRESETS), default="default")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    conf = build_groups.PRESETS[args.preset]
    folder = build_groups.main(
        conf,
        args.groups_dir,
        args.out,
        args.name,
        distractors_dir=args.distractors,
        overwrite=args.overwrite,
        export_pkl=args.export_pkl,
    )
    print(f"wrote {folder}")
    return 0

"""``delfx data synth``: a synthetic benchmark from a folder of single landmark photos."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from delfx.cli import add_output_flags, add_subcommand
from delfx.cli.types import nonnegative_int

HELP = "build a synthetic easy/hard/junk benchmark from single landmark photos"


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` to the ``data`` subcommands."""
    from delfx.synth import PRESETS

    parser = add_subcommand(data_subparsers, "synth", HELP)
    parser.add_argument(
        "photos_dir", metavar="PHOTOS_DIR", type=Path, help="folder of photos, one landmark each"
    )
    add_output_flags(parser)
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--distractors",
        metavar="DIR",
        type=Path,
        help="folder of non-landmark photos: never-positive views, backgrounds and occluders",
    )
    parser.add_argument(
        "--views", type=int, metavar="N", help="database views per photo (default: the preset's)"
    )
    parser.add_argument(
        "--size", type=int, metavar="PX", help="longest image side (default: the preset's)"
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="default", help="settings (default: default)"
    )
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the stage with the parsed flags and print a one-line summary."""
    from delfx import synth
    from delfx.datasets.revisited import RetrievalDataset

    conf = synth.preset(args.preset)
    overrides = {k: getattr(args, k) for k in ("views", "size") if getattr(args, k) is not None}
    if overrides:
        # SynthConfig checks --views and --size ("invalid views = 0") before any photo is read
        conf = dataclasses.replace(conf, **overrides)
    folder = synth.main(
        conf,
        args.photos_dir,
        Path(args.out),
        args.name,
        seed=args.seed,
        distractors_dir=args.distractors,
        overwrite=args.overwrite,
        export_pkl=args.export_pkl,
    )
    ds = RetrievalDataset(args.out, args.name)
    counts = {k: sum(len(getattr(t, k)) for t in ds.truth) for k in ("easy", "hard", "junk")}
    print(
        f"{folder}: {len(ds.queries)} queries, {len(ds.images)} database images "
        f"({counts['easy']} easy, {counts['hard']} hard, {counts['junk']} junk)"
    )
    return 0

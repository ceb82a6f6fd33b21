"""The distributor flags (``--ray``, ``--shard I/N``, ``--shards``) of the commands that
extract or index many photos (see :mod:`delfx.cluster.distributor`)."""

from __future__ import annotations

import argparse

from delfx.cli.types import positive_int
from delfx.cluster.distributor import Distributor, from_flags
from delfx.cluster.plan import parse_slice


def _slice(text: str) -> tuple[int, int]:
    try:
        return parse_slice(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_flags(parser: argparse.ArgumentParser, *, slices: bool = True) -> None:
    """Add ``--ray``, ``--shards`` and (with ``slices``) ``--shard I/N`` to a command."""
    g = parser.add_argument_group("distributing the work (see README: Running on a cluster)")
    g.add_argument(
        "--ray",
        metavar="auto|ADDRESS|local[N]",
        help="run the shards on Ray: join a cluster ('auto', an address) or start a local one "
        "with N CPUs; one worker per CPU (per GPU with a GPU --device), or --workers",
    )
    if slices:
        g.add_argument(
            "--shard",
            type=_slice,
            metavar="I/N",
            help="do shard I of N only (array jobs such as SLURM's); then run the command once "
            "more without --shard to finish",
        )
    g.add_argument(
        "--shards",
        type=positive_int,
        metavar="N",
        help="split the photos in N shards (default: 1 without --ray; on Ray four per worker, "
        "at least one per 1000 photos)",
    )


def from_args(args: argparse.Namespace) -> Distributor:
    """The distributor the flags ask for (``--workers`` counts Ray workers under ``--ray``)."""
    return from_flags(
        ray=args.ray,
        shard=getattr(args, "shard", None),
        shards=args.shards,
        workers=getattr(args, "workers", None) if args.ray is not None else None,
    )

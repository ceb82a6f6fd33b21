"""``delfx data ...``: download datasets, list them, and build benchmarks from your own photos."""

from __future__ import annotations

import argparse

from delfx.cli import add_subcommand


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` and its subcommands."""
    from delfx.cli import data_download, data_groups, data_synth, data_training

    parser = add_subcommand(subparsers, "data", "datasets: download, list, build benchmarks")
    data_sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_download.register(data_sub)
    data_groups.register(data_sub)
    data_synth.register(data_sub)
    data_training.register(data_sub)

"""``delfx data download NAME...`` and ``delfx data list``: fetch datasets, show what is there."""

from __future__ import annotations

import argparse
import os

from delfx.cli import add_subcommand
from delfx.datasets.catalog import PARTS, dataset_names


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``download`` and ``list`` under ``delfx data``."""
    names = ", ".join(dataset_names())
    parser = add_subcommand(
        data_subparsers, "download", f"download public datasets (known: {names})"
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"dataset names: {names}")
    parser.add_argument("--root", required=True, metavar="ROOT", help="datasets root folder")
    parser.add_argument(
        "--mirror",
        metavar="URL",
        default=None,
        help="base URL replacing scheme and host of every download URL "
        "(default: $DELFX_DATA_MIRROR)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        metavar="PART",
        help=f"fetch only this part ({', '.join(PARTS)}); repeatable",
    )
    parser.add_argument(
        "--no-keep-archives",
        dest="keep_archives",
        action="store_false",
        help="delete each archive once extracted",
    )
    parser.set_defaults(func=_download)

    parser = add_subcommand(data_subparsers, "list", "list catalogue datasets and their state")
    parser.add_argument("--root", required=True, metavar="ROOT", help="datasets root folder")
    parser.set_defaults(func=_list)


def _download(args: argparse.Namespace) -> int:
    from delfx import download

    download.main(
        args.names,
        args.root,
        mirror=args.mirror,
        keep_archives=args.keep_archives,
        progress=not getattr(args, "quiet", False),
        only=args.only,
    )
    return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _list(args: argparse.Namespace) -> int:
    from delfx import inventory

    rows = inventory.list_datasets(args.root)
    header = ("NAME", "STATUS", "IMAGES", "GND", "SIZE")
    table = [header]
    for row in rows:
        gnd = "-" if row["gnd"] is None else ("yes" if row["gnd"] else "no")
        table.append(
            (row["name"], row["status"], str(row["images"]), gnd, _human(row["size_bytes"]))
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"root: {os.fspath(args.root)}")
    return 0

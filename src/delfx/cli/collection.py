"""Collections: ``delfx index create|add|remove|compact|info DIR`` and ``delfx query DIR photo``.

Heavy modules (the engine, torch) are imported inside the handlers, so ``delfx --help`` stays
fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from delfx.cli import add_subcommand, distribute
from delfx.cli.types import nonnegative_int, positive_int
from delfx.errors import InputError
from delfx.run_presets import PIPELINES

#: Pipelines a collection can be built with (SIFT local features, alone or with a global net).
COLLECTION_PIPELINES = tuple(p for p, c in PIPELINES.items() if not c.features.startswith("delf:"))


def register_index(sub: argparse._SubParsersAction) -> None:
    """Add ``create``, ``remove``, ``compact`` and ``info`` under ``delfx index``."""
    from delfx.engine.spec import DEFAULT_COLLECTION

    c = add_subcommand(sub, "create", "index a folder of photos as a searchable collection")
    c.add_argument("dir", metavar="DIR", help="the collection folder to write")
    c.add_argument("--images", required=True, metavar="PHOTOS", help="folder of photos")
    c.add_argument(
        "--pipeline",
        choices=COLLECTION_PIPELINES,
        default=DEFAULT_COLLECTION,
        help=f"what to extract and index (default: {DEFAULT_COLLECTION})",
    )
    c.add_argument(
        "--codebook-from",
        metavar="F.h5",
        help="train the codebook on these features (default: the photos themselves)",
    )
    c.add_argument(
        "--codebook-size",
        type=positive_int,
        help="visual words (default: sized to the photos, at most the pipeline's)",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing collection")
    _writer_flags(c)
    c.set_defaults(func=_create)

    r = add_subcommand(sub, "remove", "hide images of a collection at once (compact drops them)")
    r.add_argument("dir", metavar="DIR")
    r.add_argument("names", nargs="+", metavar="NAME", help="names as 'delfx query' prints them")
    r.set_defaults(func=_remove)

    k = add_subcommand(
        sub, "compact", "rewrite a collection without its removed images (an index folder: "
        "merge its segments into one)"
    )  # fmt: skip
    k.add_argument("dir", metavar="DIR")
    k.add_argument("--no-progress", action="store_true")
    k.set_defaults(func=_compact)

    i = add_subcommand(sub, "info", "what a collection holds")
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=_info)


def _writer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=positive_int,
        help="extraction processes (default: cores); with --ray, Ray workers",
    )
    p.add_argument("--device", default="cpu", help="torch device of the global network")
    p.add_argument("--no-progress", action="store_true")
    distribute.add_flags(p)


def add_collection_flags(p: argparse.ArgumentParser) -> None:
    """The collection form of ``delfx index add``: ``DIR --images MORE... [--replace]``."""
    p.add_argument("dir", nargs="?", metavar="DIR", help="a collection folder")
    p.add_argument("--images", nargs="+", metavar="PATH", help="photos or folders to add")
    p.add_argument("--replace", action="store_true", help="replace images of the same name")
    _writer_flags(p)


def add_to_collection(args: argparse.Namespace) -> int:
    """``delfx index add DIR --images ...``."""
    from delfx import engine

    if not args.images:
        raise InputError(f"{args.dir}: give the photos to add with --images PATH [PATH ...]")
    dist = distribute.from_args(args)
    added = engine.add(
        args.dir,
        args.images,
        replace_existing=args.replace,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
        distributor=dist,
    )
    if dist.only is not None:
        print(f"shard {dist.only} of {dist.shards} extracted in {args.dir}; {_finish}")
        return 0
    print(f"added {len(added)} photo(s) to {args.dir}")
    return 0


def register_query(subparsers: argparse._SubParsersAction) -> None:
    """Add ``delfx query``."""
    q = add_subcommand(subparsers, "query", "find the photos of a collection that show a photo")
    q.add_argument("dir", metavar="DIR", help="a collection (delfx index create)")
    q.add_argument("photos", nargs="+", metavar="PHOTO", help="query photos")
    q.add_argument("--top", type=positive_int, default=10, help="results per photo")
    q.add_argument(
        "--verify",
        type=nonnegative_int,
        default=None,
        help="candidates to verify spatially (default: the pipeline's, else 20; 0: none)",
    )
    q.add_argument("--box", type=_box, metavar="x0,y0,x1,y1", help="query only this region")
    q.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    q.add_argument("--device", default="cpu", help="torch device of the global network")
    q.set_defaults(func=_query)


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 numbers, got '{text}'") from None
    if len(values) != 4 or not (values[0] < values[2] and values[1] < values[3]):
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 with x0 < x1, y0 < y1: '{text}'")
    return values[0], values[1], values[2], values[3]


def _create(args: argparse.Namespace) -> int:
    from delfx import engine

    spec = engine.named(
        args.pipeline, index=None if args.codebook_size is None else {"n_words": args.codebook_size}
    )
    dist = distribute.from_args(args)
    out = engine.create(
        spec,
        args.dir,
        args.images,
        codebook_from=args.codebook_from,
        codebook_size_given=args.codebook_size is not None,
        overwrite=args.overwrite,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
        distributor=dist,
    )
    if dist.only is not None:
        print(f"shard {dist.only} of {dist.shards} extracted in {out}; {_finish}")
        return 0
    print(f"created {out}: {_summary(out)}")
    return 0


_finish = "when every shard is done, run the same command without --shard to index them"


def _summary(folder: str | Path) -> str:
    from delfx.engine.info import info

    d = info(folder)
    return f"{d['images']} images, pipeline {d['pipeline']}"


def _remove(args: argparse.Namespace) -> int:
    from delfx import engine

    n = engine.remove(args.dir, args.names)
    print(f"removed {n} image(s) from {args.dir} (run 'delfx index compact' to free the space)")
    return 0


def _compact(args: argparse.Namespace) -> int:
    from delfx import engine

    if (Path(args.dir) / "index.json").is_file():  # a bare index folder (delfx index build)
        from delfx.build_index import merge_segments

        merge_segments(args.dir)
        print(f"compacted {args.dir}: its segments are merged into one")
        return 0
    n = engine.compact(args.dir, progress=not args.no_progress)
    print(f"compacted {args.dir}: dropped {n} removed image(s) from disk")
    return 0


def _info(args: argparse.Namespace) -> int:
    from delfx.engine.info import format_info, info

    d = info(args.dir)
    print(json.dumps(d, indent=2) if args.json else format_info(d))
    return 0


def _query(args: argparse.Namespace) -> int:
    from delfx.engine import Searcher

    with Searcher.open(args.dir, device=args.device) as searcher:
        if not args.json:
            print(f"opened {args.dir} in {searcher.info['open_s']:.2f} s ({len(searcher)} images)")
        for photo in args.photos:
            result = searcher.query(photo, top=args.top, verify=args.verify, box=args.box)
            if args.json:
                print(json.dumps(_as_json(photo, result)))
            else:
                _print_table(photo, result)
            sys.stdout.flush()
    return 0


def _as_json(photo: str, result: Any) -> dict[str, Any]:
    return {
        "query": photo,
        "results": [
            {"rank": r, "name": h.name, "score": h.score, "inliers": h.inliers}
            for r, h in enumerate(result.hits, 1)
        ],
        "timings_ms": {k.removesuffix("_ms"): round(v, 2) for k, v in result.timings.items()},
    }


def _print_table(photo: str, result: Any) -> None:
    print(f"\n{photo}")
    width = max([len(h.name) for h in result.hits] + [4])
    print(f"{'rank':>4}  {'name':<{width}}  {'score':>8}  {'inliers':>7}")
    for r, h in enumerate(result.hits, 1):
        inl = "" if h.inliers is None else str(h.inliers)
        print(f"{r:>4}  {h.name:<{width}}  {h.score:>8.4f}  {inl:>7}")
    t = result.timings
    parts = ", ".join(f"{k.removesuffix('_ms')} {v:.0f} ms" for k, v in t.items())
    print(f"({parts})")

"""``delfx index build|add``, ``delfx search`` and ``delfx rerank``: the stages one by one."""

from __future__ import annotations

import argparse

from delfx import build_index, rerank, search
from delfx.cli import add_subcommand, collection
from delfx.cli.types import positive_int
from delfx.errors import InputError
from delfx.index.local import KINDS, PRESETS, IndexConfig
from delfx.io.descriptor_sample import load_descriptors
from delfx.io.featurestore import FeatureReader
from delfx.verify.ransac import RansacConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``index``, ``search`` and ``rerank``."""
    parser = add_subcommand(subparsers, "index", "build an index or add images to one")
    sub = parser.add_subparsers(dest="index_command", metavar="INDEX_COMMAND")
    b = add_subcommand(sub, "build", "train a codebook and index a feature store's db images")
    b.add_argument("--features", required=True, metavar="F.h5", help="features to index")
    b.add_argument(
        "--codebook-from",
        metavar="F.h5",
        help="features of independent images to train on (may be --features itself)",
    )
    b.add_argument(
        "--model-from",
        metavar="DIR",
        help="reuse the trained model of this index instead of training (one shard of many; "
        "merge the shards with 'delfx index merge')",
    )
    b.add_argument("--out", required=True, metavar="DIR", help="index folder")
    b.add_argument("--kind", choices=KINDS, default="asmk")
    b.add_argument("--tree-branch", type=int, default=10)
    b.add_argument("--tree-height", type=int, default=6)
    b.add_argument("--codebook-size", type=int, default=16384)
    b.add_argument("--multiple-assignment", type=int, default=None, help="query-side words")
    b.add_argument("--allow-empty", action="store_true", help="index images without features")
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=_build, _parser=b)
    m = add_subcommand(
        sub, "merge", "merge index folders of consecutive shards, built with one model, into one"
    )
    m.add_argument("out", metavar="OUT", help="the index folder to write")
    m.add_argument("shards", nargs="+", metavar="SHARD", help="shard index folders, in order")
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=_merge)
    a = add_subcommand(
        sub, "add", "add photos to a collection (DIR --images), or a feature store to an index"
    )
    collection.add_collection_flags(a)
    a.add_argument("--index", metavar="DIR", help="an index folder (delfx index build)")
    a.add_argument("--features", metavar="F.h5", help="the db images to add to --index")
    a.add_argument("--allow-empty", action="store_true")
    a.set_defaults(func=_add)
    collection.register_index(sub)

    s = add_subcommand(subparsers, "search", "rank an index's images for each query")
    s.add_argument("--index", required=True, metavar="DIR")
    s.add_argument("--features", required=True, metavar="F.h5", help="holds query/... entries")
    s.add_argument("--output", required=True, metavar="R.npz", help="ranks, scores, queries")
    s.add_argument(
        "--top-k", type=positive_int, default=None, help="results per query (default: all)"
    )
    s.set_defaults(func=_search)

    r = add_subcommand(subparsers, "rerank", "spatially verify the top of each ranked list")
    r.add_argument("--index", required=True, metavar="DIR")
    r.add_argument("--features", required=True, metavar="F.h5")
    r.add_argument("--ranks", required=True, metavar="R.npz", help="output of delfx search")
    r.add_argument("--output", required=True, metavar="R2.npz")
    r.add_argument(
        "--rerank-num", type=positive_int, default=100, help="candidates verified per query"
    )
    r.add_argument("--matches", choices=rerank.MATCHES, default="ratio")
    r.add_argument(
        "--ransac-model", choices=("homography", "fundamental", "affine"), default="homography"
    )
    r.add_argument("--threshold", type=float, default=4.0, help="inlier threshold in pixels")
    r.add_argument("--drop-junk", action="store_true", help="needs --root and --dataset")
    r.add_argument("--root")
    r.add_argument("--dataset")
    r.set_defaults(func=_rerank)


def _merge(args: argparse.Namespace) -> int:
    from delfx import merge_index

    out = merge_index.merge(args.out, args.shards, overwrite=args.overwrite)
    print(f"wrote {out}: {len(args.shards)} shards merged")
    return 0


def _build(args: argparse.Namespace) -> int:
    if (args.codebook_from is None) == (args.model_from is None):
        args._parser.error("give one of --codebook-from (train) or --model-from (reuse a model)")
    base = PRESETS[args.kind]
    # the config checks --tree-branch, --tree-height, --codebook-size and
    # --multiple-assignment before any file is opened
    conf = IndexConfig(
        kind=args.kind,
        branch=args.tree_branch,
        height=args.tree_height,
        n_words=args.codebook_size,
        ma=base.ma if args.multiple_assignment is None else args.multiple_assignment,
    )
    if args.model_from is not None:
        out = build_index.build(
            conf, args.features, args.out, model_from=args.model_from,
            allow_empty=args.allow_empty, overwrite=args.overwrite,
        )  # fmt: skip
        print(f"wrote {out}")
        return 0
    with FeatureReader(args.codebook_from) as reader:
        train, _ = load_descriptors(reader, reader.names("db/"), conf.train_per_image, conf.seed)
    out = build_index.build(
        conf,
        args.features,
        args.out,
        train_descriptors=train,
        train_source=f"features {args.codebook_from}",
        allow_empty=args.allow_empty,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def _add(args: argparse.Namespace) -> int:
    if args.dir is not None:
        if args.index is not None or args.features is not None:
            raise InputError("index add: give DIR --images PATH..., or --index and --features")
        return collection.add_to_collection(args)
    if args.index is None or args.features is None:
        raise InputError(
            "index add: give a collection and photos (DIR --images PATH...), "
            "or an index and features (--index DIR --features F.h5)"
        )
    out = build_index.append(args.index, args.features, allow_empty=args.allow_empty)
    print(f"updated {out}")
    return 0


def _search(args: argparse.Namespace) -> int:
    out = search.main(args.index, args.features, args.output, top_k=args.top_k)
    print(f"wrote {out}")
    return 0


def _rerank(args: argparse.Namespace) -> int:
    # the configs check --threshold (and the rest) before any file is opened
    conf = rerank.RerankConfig(
        rerank_num=args.rerank_num,
        matches=args.matches,
        drop_junk=args.drop_junk,
        ransac=RansacConfig(args.ransac_model, threshold=args.threshold),
    )
    out = rerank.main(
        conf,
        args.ranks,
        args.index,
        args.features,
        args.output,
        root=args.root,
        dataset=args.dataset,
    )
    print(f"wrote {out}")
    return 0

"""``delfx extract ...``: local features of a dataset into an HDF5 feature file."""

from __future__ import annotations

import argparse

from delfx.cli import add_subcommand, distribute
from delfx.cli.types import float_list, positive_int

_FINISH = "when every shard is done, run the same command without --shard to write --out"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``extract`` and its subcommands (``sift``, ``delf`` and ``global``)."""
    parser = add_subcommand(subparsers, "extract", "extract features into a feature file")
    extract_sub = parser.add_subparsers(dest="extract_command", metavar="EXTRACTOR")
    _register_sift(extract_sub)
    _register_delf(extract_sub)
    _register_global(extract_sub)


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    """``--root``/``--dataset`` or ``--images``, and ``--out``, of the local extractors."""
    parser.add_argument("--root", help="datasets root (with --dataset)")
    parser.add_argument("--dataset", help="dataset name under --root, e.g. roxford5k")
    parser.add_argument("--images", metavar="DIR", help="a folder of photos instead of a dataset")
    parser.add_argument("--out", required=True, metavar="FILE", help="feature file (.h5) to write")


def _check_source(args: argparse.Namespace) -> None:
    """Exactly one source: ``--images``, or ``--root`` with ``--dataset``."""
    if args.images is not None and (args.root or args.dataset):
        args._parser.error("give either --images or --root and --dataset, not both")
    if args.images is None and not (args.root and args.dataset):
        args._parser.error("give --root and --dataset, or --images")


def _register_sift(subparsers: argparse._SubParsersAction) -> None:
    from delfx.features.sift import PRESETS

    parser = add_subcommand(
        subparsers, "sift", "SIFT / RootSIFT local features of a dataset or a folder of photos"
    )
    _add_source_flags(parser)
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="rootsift", help="extractor settings"
    )
    parser.add_argument(
        "--workers", type=positive_int, help="worker processes (default: all cores)"
    )
    parser.add_argument("--half", action="store_true", help="store descriptors as float16")
    parser.add_argument(
        "--overwrite", action="store_true", help="start a new file instead of resuming --out"
    )
    distribute.add_flags(parser)
    parser.set_defaults(func=_run_sift, _parser=parser)


def _run_sift(args: argparse.Namespace) -> int:
    from delfx import extract
    from delfx.features.sift import PRESETS

    _check_source(args)
    conf = extract.ExtractConfig(sift=PRESETS[args.preset], half=args.half)
    dist = distribute.from_args(args)
    out = extract.main(
        conf,
        args.out,
        root=args.root,
        dataset=args.dataset,
        images_dir=args.images,
        workers=args.workers,
        progress=not args.quiet,
        overwrite=args.overwrite,
        distributor=dist,
    )
    if dist.only is not None:
        print(f"shard {dist.only} of {dist.shards} done in {out}; {_FINISH}")
        return 0
    print(f"wrote {out}")
    return 0


def _register_delf(subparsers: argparse._SubParsersAction) -> None:
    from delfx.features.delf_config import PRESETS

    parser = add_subcommand(
        subparsers, "delf", "DELF attention-selected local CNN features of a dataset or photos"
    )
    _add_source_flags(parser)
    parser.add_argument(
        "--model",
        required=True,
        metavar="CKPT|ARCH",
        help="attention checkpoint; a global checkpoint or an architecture needs --attention l2",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="seed", help="extractor settings"
    )
    parser.add_argument("--feature-num", type=int, help="features kept per image (top attention)")
    parser.add_argument("--alpha-thresh", type=float, help="minimum attention of a kept feature")
    parser.add_argument(
        "--scales", type=float_list, metavar="S,S,...", help="image pyramid, e.g. 2,1.414,1,0.707"
    )
    parser.add_argument("--image-size", type=int, help="longer image side at scale 1 (px)")
    parser.add_argument(
        "--pretrained", default="none", help="backbone weights: imagenet, none or a .pth PATH"
    )
    parser.add_argument(
        "--attention",
        choices=("learned", "l2"),
        help="l2: L2-norm attention, no training (needed for an architecture name)",
    )
    parser.add_argument(
        "--block", choices=("last", "block3"), help="feature map (default: the model's, or last)"
    )
    parser.add_argument(
        "--pca-dim", type=positive_int, metavar="D", help="PCA-whiten descriptors to D"
    )
    parser.add_argument(
        "--pca-from", metavar="ROOT:NAME|DIR", help="training images to learn the PCA on"
    )
    parser.add_argument(
        "--pca", metavar="FILE.npz", help="PCA to apply, or where to save the learned one"
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda:N")
    parser.add_argument(
        "--overwrite", action="store_true", help="start a new file instead of resuming --out"
    )
    distribute.add_flags(parser)
    parser.set_defaults(func=_run_delf, _parser=parser)


def _run_delf(args: argparse.Namespace) -> int:
    import dataclasses

    from delfx.features.delf_config import PRESETS

    _check_source(args)
    overrides = {
        "feature_num": args.feature_num,
        "alpha_thresh": args.alpha_thresh,
        "image_size": args.image_size,
        "scales": args.scales,
    }
    # the config checks the values (its InputError is the one-line error) before any work
    conf = dataclasses.replace(
        PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None}
    )
    from delfx import extract_delf

    dist = distribute.from_args(args)
    out = extract_delf.main(
        conf,
        args.out,
        root=args.root,
        dataset=args.dataset,
        images_dir=args.images,
        model=args.model,
        pretrained=args.pretrained,
        attention=args.attention,
        block=args.block,
        device=args.device,
        pca=args.pca,
        pca_dim=args.pca_dim,
        pca_from=args.pca_from,
        progress=not args.quiet,
        overwrite=args.overwrite,
        distributor=dist,
    )
    if dist.only is not None:
        print(f"shard {dist.only} of {dist.shards} done in {out}; {_FINISH}")
        return 0
    print(f"wrote {out}")
    return 0


def _register_global(subparsers: argparse._SubParsersAction) -> None:
    parser = add_subcommand(
        subparsers, "global", "global CNN descriptors (GeM etc.) of a dataset's images and queries"
    )
    parser.add_argument("--root", required=True, help="datasets root")
    parser.add_argument("--dataset", required=True, help="dataset name under --root")
    parser.add_argument("--model", required=True, help="checkpoint file or architecture name")
    parser.add_argument("--out", required=True, metavar="FILE", help="descriptor file (.h5)")
    parser.add_argument(
        "--pretrained", default="none", help="backbone weights: imagenet, none or a .pth PATH"
    )
    parser.add_argument("--pool", default="gem", help="pooling for an architecture name")
    parser.add_argument("--image-size", type=int, default=1024, help="longer image side (px)")
    parser.add_argument(
        "--multiscale",
        type=float_list,
        default="1",
        metavar="S,S,...",
        help="scales, e.g. 1,0.707,0.5",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda:N")
    parser.set_defaults(func=_run_global, _parser=parser)


def _run_global(args: argparse.Namespace) -> int:
    from delfx import extract_global

    # the config checks --image-size, --multiscale and --batch-size before any work
    conf = extract_global.GlobalExtractConfig(
        image_size=args.image_size, scales=args.multiscale, batch_size=args.batch_size
    )
    out = extract_global.main(
        conf,
        args.out,
        root=args.root,
        dataset=args.dataset,
        model=args.model,
        pretrained=args.pretrained,
        pooling=args.pool,
        device=args.device,
        progress=not args.quiet,
    )
    print(f"wrote {out}")
    return 0

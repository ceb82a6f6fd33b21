"""``delfx run PIPELINE``: one experiment from features to results, with cached stages."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from delfx import run
from delfx.cli import add_subcommand, distribute
from delfx.cli.types import float_list, nonnegative_float, positive_int
from delfx.errors import InputError
from delfx.evaluation.report import format_lines
from delfx.global_options import GLOBAL_PIPELINES, GlobalOptions
from delfx.index.local import IndexConfig
from delfx.rerank import RerankConfig
from delfx.run_delf import DelfOptions, delf_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand."""
    parser = add_subcommand(
        subparsers, "run", "run a named pipeline: extract, index, search, verify, evaluate"
    )
    parser.add_argument(
        "pipeline",
        choices=[*run.PIPELINES, *GLOBAL_PIPELINES],
        metavar="PIPELINE",
        help=f"one of: {', '.join([*run.PIPELINES, *GLOBAL_PIPELINES])}",
    )
    parser.add_argument("--root", required=True, help="datasets root")
    parser.add_argument("--dataset", required=True, help="dataset name")
    parser.add_argument("--work", required=True, metavar="DIR", help="cache of stage outputs")
    parser.add_argument("--output", required=True, metavar="JSON", help="results JSON to write")
    parser.add_argument(
        "--rerank-num",
        type=int,
        default=None,
        help="spatially verify this many candidates per query (default: none)",
    )
    parser.add_argument(
        "--codebook-from",
        metavar="ROOT:NAME|FILE.h5|database",
        help="images to train the codebook on (default: independent images)",
    )
    parser.add_argument(
        "--drop-junk",
        action="store_true",
        help="drop the ground truth's junk images before choosing what to verify",
    )
    parser.add_argument(
        "--ransac-model",
        choices=("homography", "fundamental", "affine"),
        help="model fitted in spatial verification (default: homography)",
    )
    parser.add_argument(
        "--matches",
        choices=("ratio", "words", "both"),
        help="tentative matches for verification (default: ratio test)",
    )
    parser.add_argument("--tree-branch", type=int, help="vocabulary tree branching factor")
    parser.add_argument("--tree-height", type=int, help="vocabulary tree height")
    parser.add_argument("--codebook-size", type=int, help="flat codebook words (HE, ASMK)")
    parser.add_argument(
        "--workers", type=positive_int, help="extraction processes, verification threads"
    )
    g = parser.add_argument_group("global pipelines")
    g.add_argument("--model", default="resnet50", help="checkpoint file or architecture name")
    g.add_argument("--pretrained", default="imagenet", help="imagenet, none or a weights file")
    g.add_argument("--pool", default="gem", choices=("mac", "spoc", "gem", "rmac"))
    g.add_argument("--image-size", type=int, default=1024, help="longer image side in pixels")
    g.add_argument(
        "--multiscale", type=float_list, default="1", help="image scales, e.g. 1,0.707,0.5"
    )
    g.add_argument("--qe", type=int, default=0, help="alpha query expansion neighbours")
    g.add_argument("--dba", type=int, default=0, help="database augmentation neighbours")
    g.add_argument("--device", default="cpu", help="cpu or cuda:N")
    g.add_argument(
        "--whiten-pairs",
        metavar="ROOT:NAME",
        help="learn Lw from this training set's query-positive pairs",
    )
    d = parser.add_argument_group("DELF and hybrid pipelines (delf-*, global+*)")
    d.add_argument(
        "--attention",
        choices=("learned", "l2"),
        help="l2: L2-norm attention on --model (no training); default: the checkpoint's head",
    )
    d.add_argument(
        "--block", choices=("last", "block3"), help="feature block (default: the checkpoint's)"
    )
    d.add_argument("--feature-num", type=int, help="DELF features per image")
    d.add_argument("--alpha-thresh", type=float, help="lowest attention score kept")
    d.add_argument("--scales", type=float_list, metavar="S,S,...", help="DELF image pyramid scales")
    d.add_argument("--delf-image-size", type=int, help="DELF longer image side before scaling")
    d.add_argument(
        "--pca-dim", type=positive_int, help="PCA-whitened DELF dimension (independent images)"
    )
    d.add_argument(
        "--global-model",
        help="hybrid pipelines: the global descriptor's checkpoint or arch (default: --model)",
    )
    d.add_argument(
        "--fusion-weight",
        type=nonnegative_float,
        help="fused pipelines (global+asmk, global+sift-asmk): weight of the global similarity "
        "added to the ASMK* score (default: the pipeline's)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    distribute.add_flags(parser, slices=False)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # every setting goes through its config's own checks before any file is touched
    opts = GlobalOptions(
        model=args.model,
        pretrained=args.pretrained,
        pooling=args.pool,
        image_size=args.image_size,
        scales=args.multiscale,
        qe=args.qe,
        dba=args.dba,
        device=args.device,
    )
    overrides = _index_overrides(args)
    delf = _delf_options(args)
    if args.rerank_num is not None:
        RerankConfig(rerank_num=args.rerank_num)
    if args.pipeline in GLOBAL_PIPELINES:
        from delfx import run_global

        out = run_global.main(
            args.pipeline,
            args.root,
            args.dataset,
            args.work,
            args.output,
            opts,
            codebook_from=args.codebook_from,
            whiten_pairs=args.whiten_pairs,
            progress=not args.no_progress,
        )
        return _report(out)
    out = run.main(
        args.pipeline,
        args.root,
        args.dataset,
        args.work,
        args.output,
        delf=delf,
        global_opts=replace(opts, model=args.global_model or args.model),
        whiten_pairs=args.whiten_pairs,
        fusion_weight=args.fusion_weight,
        rerank_num=args.rerank_num,
        codebook_from=args.codebook_from,
        drop_junk=args.drop_junk,
        model=args.ransac_model,
        matches=args.matches,
        index_overrides=overrides or None,
        workers=args.workers,
        progress=not args.no_progress,
        distributor=distribute.from_args(args),
    )
    return _report(out)


def _index_overrides(args: argparse.Namespace) -> dict[str, int]:
    """``--tree-branch``, ``--tree-height`` and ``--codebook-size``, checked by the config."""
    overrides = {
        k: v
        for k, v in (
            ("branch", args.tree_branch),
            ("height", args.tree_height),
            ("n_words", args.codebook_size),
        )
        if v is not None
    }
    replace(IndexConfig(), **overrides)
    return overrides


def _delf_options(args: argparse.Namespace) -> DelfOptions:
    """The DELF flags; each setting is checked by :class:`DelfConfig`, and a refusal names the
    flag (``--delf-image-size`` sets the config's ``image-size``)."""
    settings = {
        k: v
        for k, v in (
            ("feature_num", args.feature_num),
            ("alpha_thresh", args.alpha_thresh),
            ("scales", args.scales),
            ("image_size", args.delf_image_size),
        )
        if v is not None
    }
    flags = {"feature_num": "--feature-num", "alpha_thresh": "--alpha-thresh"}
    flags.update(scales="--scales", image_size="--delf-image-size")
    for key, value in settings.items():
        try:
            delf_config("seed", DelfOptions(settings={key: value}))
        except InputError as exc:
            raise InputError(f"{flags[key]}: {exc}") from None
    return DelfOptions(
        model=args.model,
        pretrained=args.pretrained,
        pooling=args.pool,
        attention=args.attention,
        block=args.block,
        pca_dim=args.pca_dim,
        settings=settings,
        device=args.device,
    )


def _report(out: Path) -> int:
    results = json.loads(out.read_text())
    for line in format_lines(results):
        print(line)
    timings = ", ".join(f"{k} {v:.2f}" for k, v in results["timings"].items())
    print(f">> timings (s, ms where named): {timings}")
    return 0

"""``delfx train global`` and ``delfx train attention``: the seed's ``example.finetuning`` and
``example.attention`` steps.

Both take the same training flags; ``attention`` adds ``--param-directory`` (the fine-tuned
global model) and ``--attention-block``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from delfx.cli import add_subcommand

if TYPE_CHECKING:
    from delfx.train.config import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and its subcommands ``global`` and ``attention``."""
    parser = add_subcommand(subparsers, "train", "train networks")
    train_sub = parser.add_subparsers(dest="train_command", metavar="MODEL")
    p = add_subcommand(
        train_sub, "global", "fine-tune a global CNN descriptor on query-positive tuples"
    )
    _add_train_flags(p)
    p.set_defaults(func=_run)
    p = add_subcommand(
        train_sub,
        "attention",
        "train an attention score function on a frozen fine-tuned global network",
    )
    _add_train_flags(p)
    p.add_argument(
        "--param-directory",
        required=True,
        metavar="MODEL_DIR",
        help="the fine-tuned global model: a .pth, a folder with model_best.pth, or the folder "
        "that holds <export name>/model_best.pth (the global run's EXPORT_DIR, same flags)",
    )
    p.add_argument(
        "--attention-block",
        choices=("last", "block3"),
        default="last",
        help="feature map attention sits on: the trunk's last block (the seed) or ResNet layer3",
    )
    p.set_defaults(func=_run)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """The training flags of ``train global`` and ``train attention``."""
    from delfx.train.config import TrainConfig

    d = TrainConfig()
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="folder for <export name>/ outputs")
    p.add_argument("--root", required=True, help="datasets root (training and test datasets)")
    p.add_argument("--training-dataset", default=d.training_dataset, help="training set name")
    p.add_argument(
        "--test-datasets",
        default=",".join(d.test_datasets),
        help="comma-separated benchmarks to evaluate ('' for none)",
    )
    p.add_argument("--arch", default=d.arch, help="backbone architecture")
    p.add_argument("--pool", default=d.pool, help="pooling: mac, spoc, gem, rmac")
    p.add_argument("--whitening", type=int, metavar="DIM", help="learned whitening dimension")
    p.add_argument("--loss", choices=("contrastive", "triplet"), default=d.loss)
    p.add_argument("--loss-margin", type=float, default=d.loss_margin)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lr-decay", type=float, default=d.lr_decay, help="per-epoch lr factor")
    p.add_argument("--neg-num", type=int, default=d.neg_num, help="negatives per tuple")
    p.add_argument("--query-size", type=int, default=d.query_size, help="queries per epoch")
    p.add_argument("--pool-size", type=int, default=d.pool_size, help="negative pool per epoch")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="tuples per batch")
    p.add_argument("--update-every", type=int, default=d.update_every, help="batches per step")
    p.add_argument("--image-size", type=int, default=d.image_size, help="training image size")
    p.add_argument("--test-image-size", type=int, default=d.test_image_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--test-freq", type=int, default=d.test_freq, help="evaluate every N epochs")
    p.add_argument(
        "--pretrained",
        default=d.pretrained,
        help="imagenet, none, or a .pth path (attention: names the export folder only)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="image-reading threads")
    p.add_argument(
        "--bn-calibration",
        type=int,
        default=d.bn_calibration,
        metavar="N",
        help="with --pretrained none: batch-norm statistics from N training images (0: off)",
    )
    p.add_argument("--resume", metavar="CKPT", help="checkpoint to continue from")
    p.add_argument("--gpu-id", help="use cuda:<id> (unless --device is given)")
    p.add_argument("--device", help="torch device: cpu or cuda:N (default cpu)")


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return str(args.device)
    if args.gpu_id is not None and str(args.gpu_id).strip() != "":
        return f"cuda:{str(args.gpu_id).split(',')[0].strip()}"
    return "cpu"


def _conf(args: argparse.Namespace) -> TrainConfig:
    from delfx.train.config import TrainConfig

    return TrainConfig(
        training_dataset=args.training_dataset,
        test_datasets=tuple(s.strip() for s in args.test_datasets.split(",") if s.strip()),
        arch=args.arch,
        pool=args.pool,
        loss=args.loss,
        loss_margin=args.loss_margin,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        lr_decay=args.lr_decay,
        neg_num=args.neg_num,
        query_size=args.query_size,
        pool_size=args.pool_size,
        batch_size=args.batch_size,
        update_every=args.update_every,
        image_size=args.image_size,
        test_image_size=args.test_image_size,
        epochs=args.epochs,
        test_freq=args.test_freq,
        whitening_dim=args.whitening,
        pretrained=args.pretrained,
        seed=args.seed,
        workers=args.workers,
        bn_calibration=args.bn_calibration,
    )


def _show(epoch: int, lines: list[str]) -> None:
    print(f"# {epoch}")
    for line in lines:
        print(line)
    print(flush=True)


def _run(args: argparse.Namespace) -> int:
    # the config checks every numeric flag (its InputError is the one-line error) before torch
    # is imported or any file is opened
    conf = _conf(args)
    from delfx import train_attention, train_global

    kw = {
        "root": args.root,
        "resume": args.resume,
        "device": _device(args),
        "progress": not args.quiet,
        "on_eval": _show,
    }
    if args.train_command == "attention":
        block = args.attention_block
        out = train_attention.main(
            conf, args.export_dir, param_directory=args.param_directory, block=block, **kw
        )
    else:
        out = train_global.main(conf, args.export_dir, **kw)
    print(f"wrote {out}")
    return 0

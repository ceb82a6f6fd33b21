"""Does tuple fine-tuning learn on this CPU? A tiny from-scratch run with a held-out test split.

The realviews groups are split by place (alternate groups after sorting): training places give
a training set whose clusters hold, per photo (``--clusters photo``, many clusters) or per place,
the real photo(s) plus ``delfx data synth`` views of them (homographies, crops, photometric
changes, occluders); test places give two benchmarks that share no place, photo or distractor
with training:

- ``learn-synth-test``: ``delfx data synth`` of one photo per test place over half the distractors;
- ``learn-real-test``: the test places' real views (``delfx data build-groups``), the other half of
  the distractors.

Then ``delfx train global`` (resnet18, ``--pretrained none``) runs and the table gives the training
loss and the test mAP per epoch, epoch 0 being the network before training.

    python benchmarks/train_learning.py --work /tmp/learn --epochs 8
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from delfx import build_groups, build_training, synth, train_global
from delfx.train.loop import TrainConfig

REALVIEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "realviews"


def _shrink(src: Path, dst: Path, size: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        im.save(dst, quality=92)


def _photos(group: Path) -> list[Path]:
    return sorted(p for p in group.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def build(
    realviews: Path, work: Path, size: int, views: int, seed: int, clusters: str = "photo"
) -> Path:
    """Write the training set and the two test benchmarks under ``work/data``; returns the root."""
    root = work / "data"
    if (root / "learn-train").is_dir():
        return root
    groups = sorted(p for p in (realviews / "groups").iterdir() if p.is_dir())
    train_places, test_places = groups[0::2], groups[1::2]
    distractors = sorted((realviews / "distractors").iterdir())
    tmp = work / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # synthetic views of every training photo, named <place>__<photo>
    for g in train_places:
        for p in _photos(g):
            _shrink(p, tmp / "train_photos" / f"{g.name}__{p.stem}.jpg", 2 * size)
    syn = synth.main(
        replace(synth.preset("default"), views=views, size=size),
        tmp / "train_photos",
        tmp / "syn",
        "train",
        seed=seed,
    )
    gnd = json.loads((syn / "gnd_train.json").read_text())
    for q, truth in zip(gnd["qimlist"], gnd["gnd"], strict=True):
        # one cluster per photo (its synthetic views) or per place (all its photos' views)
        place = q.split("__")[0] if clusters == "place" else q.removesuffix("_q")
        for i in truth["easy"] + truth["hard"]:
            name = gnd["imlist"][i]
            (tmp / "train_groups" / place).mkdir(parents=True, exist_ok=True)
            shutil.copy(syn / "jpg" / f"{name}.jpg", tmp / "train_groups" / place / f"{name}.jpg")
    for g in train_places:
        for p in _photos(g):
            group = g.name if clusters == "place" else f"{g.name}__{p.stem}"
            _shrink(p, tmp / "train_groups" / group / f"real_{p.stem}.jpg", size)
    build_training.main(tmp / "train_groups", root, "learn-train", val_fraction=0, seed=seed)
    # test places: one photo each for synth, every view for the real benchmark
    for g in test_places:
        ph = _photos(g)
        _shrink(ph[0], tmp / "test_photos" / f"{g.name}.jpg", 2 * size)
        for p in ph:
            _shrink(p, tmp / "test_groups" / g.name / p.name, size)
    for i, d in enumerate(distractors):
        _shrink(d, tmp / ("dis_a" if i % 2 else "dis_b") / d.name, 2 * size)
    synth.main(
        replace(synth.preset("default"), views=views, size=size),
        tmp / "test_photos",
        root,
        "learn-synth-test",
        seed=seed + 1,
        distractors_dir=tmp / "dis_a",
    )
    for d in (tmp / "dis_b").iterdir():
        _shrink(d, tmp / "dis_b_small" / d.name, size)
    build_groups.main(
        build_groups.GroupsConfig(progress=False),
        tmp / "test_groups",
        root,
        "learn-real-test",
        distractors_dir=tmp / "dis_b_small",
    )
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realviews", type=Path, default=REALVIEWS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/delfx-learn"))
    ap.add_argument("--size", type=int, default=192, help="stored image size")
    ap.add_argument("--image-size", type=int, default=160, help="training/test image size")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--loss-margin", type=float, default=0.7)
    ap.add_argument("--query-size", type=int, default=150)
    ap.add_argument("--pool-size", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--clusters",
        choices=("photo", "place"),
        default="photo",
        help="training clusters: each photo's synthetic views, or each place's photos and views",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    root = build(args.realviews, args.work, args.size, args.views, args.seed, args.clusters)
    t_data = time.perf_counter() - t0
    conf = TrainConfig(
        training_dataset="learn-train",
        test_datasets=("learn-synth-test", "learn-real-test"),
        arch=args.arch,
        pretrained="none",
        loss_margin=args.loss_margin,
        lr=args.lr,
        neg_num=3,
        query_size=args.query_size,
        pool_size=args.pool_size,
        batch_size=args.batch_size,
        image_size=args.image_size,
        test_image_size=args.image_size,
        epochs=args.epochs,
        seed=args.seed,
    )
    start: dict[str, float] = {}

    def keep(epoch: int, lines: list[str]) -> None:
        if epoch == 0:
            for line in lines:
                if "mAP E" in line:
                    name = line.split(":")[0].strip("> ")
                    start[name] = float(line.split("M: ")[1].split(",")[0])

    t1 = time.perf_counter()
    out = train_global.main(conf, args.work / "export", root=root, progress=False, on_eval=keep)
    t_train = time.perf_counter() - t1
    rows = [r for r in csv.DictReader((out / "log.csv").open()) if r["epoch"] != "0"]
    print(f"data {t_data:.0f} s, training {t_train:.0f} s ({args.epochs} epochs), {out.name}")
    print("| epoch | loss | synth-test mAP M | real-test mAP M |")
    print("|---|---|---|---|")
    print(f"| 0 | - | {start.get('learn-synth-test')} | {start.get('learn-real-test')} |")
    for r in rows:
        print(
            f"| {r['epoch']} | {float(r['loss']):.4f} | {r['learn-synth-test_mAP_M']} "
            f"| {r['learn-real-test_mAP_M']} |"
        )


if __name__ == "__main__":
    main()

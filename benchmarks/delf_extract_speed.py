"""Speed of DELF extraction at 1024 px: one scale (the seed's) against HOW's seven scales.

A ResNet with L2-norm attention (no trained head needed; ``--pretrained none`` draws the weights
with seed 0, which does not change the speed) extracts features of the first ``--n`` photos of
``realviews/groups/*/*.jpg`` (sorted by path). Photos are decoded before timing; the time covers
resizing, the forward passes, top-N selection and descriptor gathering
(:func:`delfx.features.delf.extract_delf`). One warm-up image runs first on each setting.

Run: ``.venv/bin/python benchmarks/delf_extract_speed.py [--n 8] [--device cuda:0] [--threads N]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from delfx.features.delf import PRESETS, DelfConfig, extract_delf
from delfx.io.images import read_image
from delfx.models.attention import resolve_attention

DEFAULT_DATA = Path(os.environ.get("DELFX_REALVIEWS", "/work/shared/data/realviews"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="realviews folder")
    parser.add_argument("--n", type=int, default=8, help="photos to extract")
    parser.add_argument("--arch", default="resnet18", help="backbone (architecture name)")
    parser.add_argument("--block", default="last", choices=("last", "block3"))
    parser.add_argument("--image-size", type=int, default=1024, help="longer side at scale 1")
    parser.add_argument("--feature-num", type=int, default=1000, help="features per image")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda:N")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    paths = sorted(args.data.glob("groups/*/*.jpg"))[: args.n]
    if not paths:
        raise SystemExit(f"no photos under {args.data}/groups/*/*.jpg")
    images = [read_image(p) for p in paths]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = resolve_attention(
            args.arch, attention="l2", block=args.block, pretrained="none", device=args.device
        )
    settings = {
        "single scale": PRESETS["seed"].scales,
        "7 scales": PRESETS["multiscale"].scales,
    }
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"DELF extraction, {args.arch} ({args.block}), L2 attention, {len(images)} photos")
    print(f"device {args.device} ({name or platform.machine()}), torch threads "
          f"{torch.get_num_threads()}, image size {args.image_size}")  # fmt: skip
    print(f"{'setting':<14}{'scales':>7}{'seconds':>10}{'images/s':>10}{'feats/img':>11}")
    for label, scales in settings.items():
        conf = DelfConfig(
            image_size=args.image_size, scales=scales, feature_num=args.feature_num, alpha_thresh=0
        )
        extract_delf(net, images[0], conf, device=device)  # warm-up
        start = time.perf_counter()
        n_feats = sum(len(extract_delf(net, im, conf, device=device)) for im in images)
        elapsed = time.perf_counter() - start
        print(
            f"{label:<14}{len(scales):>7}{elapsed:>10.2f}{len(images) / elapsed:>10.2f}"
            f"{n_feats / len(images):>11.0f}"
        )


if __name__ == "__main__":
    main()

"""Speed of global description (GeM) with ImageNet EfficientNet-Lite backbones on the CPU.

The shipped sample photos (``src/delfx/samples/groups/*/*.jpg``, sorted, first ``--n``) are
decoded before timing; the time covers resizing, normalisation and the forward pass
(:func:`delfx.models.describe.describe_images`, one image per batch). One warm-up image runs
first on each setting and is not timed.

Run: ``.venv/bin/python benchmarks/global_extract_speed.py [--n 8] [--threads 2]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from delfx.extract_global import resolve_model
from delfx.io.images import read_image
from delfx.models.describe import describe_images

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "delfx" / "samples" / "groups"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="photos to describe")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--archs", default="efficientnet_lite0,efficientnet_lite2")
    ap.add_argument("--sizes", default="512,1024", help="longer image sides (px)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted(SAMPLES.glob("*/*.jpg"))[: args.n]
    images = [read_image(p) for p in paths]
    print(f"{len(images)} photos, {args.threads} torch threads, CPU\n")
    print("| backbone | px | images/s | ms/image |\n|---|---:|---:|---:|")
    for arch in args.archs.split(","):
        net = resolve_model(arch, pretrained="imagenet")
        for size in (int(s) for s in args.sizes.split(",")):
            describe_images(net, images[:1], image_size=size)  # warm-up
            t0 = time.perf_counter()
            describe_images(net, images, image_size=size)
            dt = time.perf_counter() - t0
            print(f"| {arch} | {size} | {len(images) / dt:.2f} | {1000 * dt / len(images):.0f} |")


if __name__ == "__main__":
    main()

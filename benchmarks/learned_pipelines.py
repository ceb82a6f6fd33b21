"""Learned local features against SIFT on real photos: the whole seed experiment on a CPU.

Writes an experiment file for ``delfx pipeline`` and runs it. The realviews places are split in
two (alternate groups after sorting by name):

- training places: ``learn-train`` (tuple training set) and ``learn-indep`` (the independent images
  that codebooks and the DELF PCA are trained on);
- test places: ``rv-test`` (real views plus every distractor) and ``rv-synth-test`` (synthetic
  views of one photo per place, over the distractors).

A ResNet18 from random weights (``--pretrained none``) is fine-tuned, attention is trained on it,
and every pipeline is evaluated with and without spatial verification.

    python benchmarks/learned_pipelines.py --work /tmp/delfx-learned
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

REALVIEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "realviews"


def experiment(args: argparse.Namespace) -> dict:
    groups, distractors = str(args.realviews / "groups"), str(args.realviews / "distractors")
    root = str(args.work / "data")
    rerank = args.rerank_num
    return {
        "root": root,
        "work": str(args.work),
        "device": args.device,
        "data": [
            {
                "kind": "training",
                "name": "learn-train",
                "groups": groups,
                "places": "even",
                "size": args.train_size,
            },
            {
                "kind": "groups",
                "name": "learn-indep",
                "groups": groups,
                "places": "even",
                "size": args.size,
            },
            {
                "kind": "groups",
                "name": "rv-test",
                "groups": groups,
                "places": "odd",
                "size": args.size,
                "distractors": distractors,
            },
            {
                "kind": "synth",
                "name": "rv-synth-test",
                "groups": groups,
                "places": "odd",
                "size": args.size,
                "distractors": distractors,
                "views": 4,
            },
        ],  # fmt: skip
        "finetune": {
            "training-dataset": "learn-train",
            "test-datasets": "rv-test,rv-synth-test",
            "arch": "resnet18",
            "pool": "gem",
            "loss": "contrastive",
            "loss-margin": 0.7,
            "optimizer": "adam",
            "lr": args.lr,
            "neg-num": 3,
            "query-size": args.query_size,
            "pool-size": args.pool_size,
            "batch-size": 5,
            "image-size": args.train_size,
            "test-image-size": args.size,
            "epochs": args.epochs,
            "pretrained": "none",
        },
        "attention": {"epochs": args.attention_epochs},
        "extract": {
            "image-size": args.size,
            "scales": [1.0, 0.707, 0.5],
            "feature-num": args.feature_num,
            "pca-dim": 128,
        },
        "evaluate": {
            "datasets": ["rv-test", "rv-synth-test"],
            "codebook-from": f"{root}:learn-indep",
            "codebook-size": args.codebook_size,
            "tree-height": 4,
            "pipelines": [
                "sift-asmk",
                {"name": "sift-asmk", "rerank-num": rerank},
                "delf-voctree-seed",
                {"name": "delf-voctree-seed", "rerank-num": rerank},
                "delf-asmk",
                {"name": "delf-asmk", "rerank-num": rerank},
                "global-gem",
                {"name": "global+local", "rerank-num": rerank},
                "global+asmk",
            ],  # fmt: skip
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realviews", type=Path, default=REALVIEWS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/delfx-learned"))
    ap.add_argument("--size", type=int, default=512, help="test image size (px)")
    ap.add_argument("--train-size", type=int, default=160, help="training image size (px)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--attention-epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--query-size", type=int, default=150)
    ap.add_argument("--pool-size", type=int, default=300)
    ap.add_argument("--feature-num", type=int, default=500)
    ap.add_argument("--codebook-size", type=int, default=1024)
    ap.add_argument("--rerank-num", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    config = args.work / "experiment.yaml"
    config.write_text(yaml.safe_dump(experiment(args), sort_keys=False))
    cmd = [sys.executable, "-m", "delfx", "pipeline", str(config), "-q"]
    subprocess.run(cmd, check=True)
    results = json.loads((args.work / "results.json").read_text())["results"]
    print("\n| dataset | method | mAP M | mP@10 M | search+verify s |\n|---|---|---|---|---|")
    for r in results:
        med = r["protocols"]["medium"]
        t = sum(v for k, v in r["timings"].items() if k in ("search", "verify"))
        cells = f"{med['mAP']:.2f} | {med['mP@k'][2]:.2f} | {t:.1f}"
        print(f"| {r['dataset']} | {r['method']} | {cells} |")


if __name__ == "__main__":
    main()

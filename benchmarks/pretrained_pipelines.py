"""Pretrained EfficientNet-Lite global descriptors, hybrids with RootSIFT, fine-tuning and DELF.

Every step calls the ``delfx`` CLI; ``delfx run`` caches its stages in ``WORK/cache`` and a step
whose results JSON (or checkpoint) exists is skipped, so a second run only prints the tables.
The realviews places are sorted by name: even-index places are training places, odd ones test
places. Every ``--val-every``-th training place forms ``learn-val`` (with the distractors); the
others form ``learn-train`` (tuples) and ``learn-indep`` (codebooks, PCA). ``rv-train`` (training
places + distractors) chooses the hybrids' parameters; ``rv-test`` (test places + distractors),
``rv-synth-test`` and ``rv-full`` (all places + distractors) only report.

    python benchmarks/pretrained_pipelines.py --work /tmp/delfx-pretrained --stages all
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

REALVIEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "realviews"
PHOTO = (".jpg", ".jpeg", ".png")
STAGES = ("data", "global", "hybrid", "sift", "finetune", "delf")
TIMES: list[tuple[str, float, int]] = []
RESULTS: dict[tuple[str, str], tuple[float, float, float] | None] = {}


def delfx(*args: str, label: str) -> bool:
    """Run ``delfx ARGS``; record its wall time; on failure print the command and carry on."""
    cmd = [sys.executable, "-m", "delfx", *args]
    print("$ delfx " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    TIMES.append((label, dt, proc.returncode))
    print(f"  [{label}: {dt:.1f} s, rc {proc.returncode}]", flush=True)
    if proc.returncode != 0:
        print("  FAILED: " + (proc.stderr.strip().splitlines() or ["?"])[-1], flush=True)
    return proc.returncode == 0


def shrink(src: Path, dst: Path, size: int) -> None:
    """``src`` photos (recursively) shrunk to ``size`` px into ``dst``; present files are kept."""
    for photo in sorted(src.rglob("*")):
        out = (dst / photo.relative_to(src)).with_suffix(".jpg")
        if photo.suffix.lower() not in PHOTO or out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(photo) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            im.save(out, quality=92)


def select(groups: Path, places: list[str], dst: Path) -> Path:
    """A folder of symlinks to the chosen place folders."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in places:
        if not (dst / p).exists():
            (dst / p).symlink_to(groups / p, target_is_directory=True)
    return dst


def build_data(args: argparse.Namespace) -> None:
    small = args.work / f"photos{args.size}"
    shrink(args.realviews, small, args.size)
    groups, dis = small / "groups", str(small / "distractors")
    places = sorted(p.name for p in groups.iterdir() if p.is_dir())
    train, test = places[0::2], places[1::2]
    val = train[:: args.val_every]
    fit = [p for p in train if p not in val]
    sel = args.work / "select"
    root = str(args.root)
    sets = {"learn-val": val, "learn-indep": fit, "rv-train": train, "rv-test": test}
    sets["rv-full"] = places
    few = sel / "val-distractors"  # every Nth distractor: learn-val is evaluated every epoch
    few.mkdir(parents=True, exist_ok=True)
    for photo in sorted((small / "distractors").iterdir())[:: args.val_distractor_step]:
        if not (few / photo.name).exists():
            (few / photo.name).symlink_to(photo)
    for name, chosen in sets.items():
        if (args.root / name).is_dir():
            continue
        folder = str(select(groups, chosen, sel / name))
        extra = [] if name == "learn-indep" else ["--distractors", dis]
        extra = ["--distractors", str(few)] if name == "learn-val" else extra
        delfx("data", "build-groups", folder, *extra, "--out", root, "--name", name, label=name)
    if not (args.root / "learn-train").is_dir():
        folder = str(select(groups, fit, sel / "learn-train"))
        cmd = ["data", "build-training", folder, "--out", root, "--name", "learn-train"]
        delfx(*cmd, "--val-fraction", "0", label="learn-train")
    if args.synth and not (args.root / "rv-synth-test").is_dir():
        firsts = sel / "synth-firsts"
        firsts.mkdir(parents=True, exist_ok=True)
        for p in test:
            link = firsts / f"{p}.jpg"
            if not link.exists():
                link.symlink_to(sorted(x for x in (groups / p).iterdir())[0])
        cmd = ["data", "synth", str(firsts), "--out", root, "--name", "rv-synth-test"]
        cmd += ["--distractors", dis, "--views", "4", "--size", str(args.size)]
        delfx(*cmd, "--preset", "small", "--seed", "0", label="rv-synth-test")


def run(args: argparse.Namespace, pipeline: str, dataset: str, tag: str, *extra: str):
    """One ``delfx run`` (skipped when its results JSON exists); returns mAP (E, M, H)."""
    out = args.work / "results" / f"{tag}--{dataset}.json"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["run", pipeline, "--root", str(args.root), "--dataset", dataset]
        cmd += ["--work", str(args.work / "cache"), "--output", str(out), "--no-progress", "-q"]
        delfx(*cmd, *extra, label=f"{tag} on {dataset}")
    res = None
    if out.is_file():
        protos = json.loads(out.read_text())["protocols"]
        res = tuple(
            float("nan") if protos.get(p, {}).get("mAP") is None else protos[p]["mAP"]
            for p in ("easy", "medium", "hard")
        )
    RESULTS[(tag, dataset)] = res
    return res


def medium(res) -> float:
    return -1.0 if res is None or res[1] != res[1] else res[1]


def glob_args(args: argparse.Namespace, arch: str = "efficientnet_lite0") -> list[str]:
    return ["--pretrained", "imagenet", "--image-size", str(args.size), "--model", arch]


def local_args(args: argparse.Namespace) -> list[str]:
    cb = ["--codebook-from", f"{args.root}:learn-indep", "--codebook-size", str(args.codebook_size)]
    return cb + ["--workers", "2"]


def hybrid_args(args: argparse.Namespace) -> list[str]:
    g = ["--global-model", "efficientnet_lite0", "--pretrained", "imagenet"]
    return g + ["--image-size", str(args.size)] + local_args(args)


def stage_global(args: argparse.Namespace, datasets: list[str], archs: list[str]) -> None:
    for arch in archs:
        for d in datasets:
            run(args, "global-gem", d, f"global-gem {arch}", *glob_args(args, arch))


def stage_hybrid(args: argparse.Namespace, test: list[str]) -> dict[str, tuple[str, list[str]]]:
    """The hybrid grids on rv-train; the best setting of each family re-run on ``test``."""
    families: dict[str, list[tuple[str, str, list[str]]]] = {"sift-asmk": [], "sift-sv": []}
    for w in args.fusion_weights.split(","):
        families["sift-asmk"].append(("global+sift-asmk", f"W={w}", ["--fusion-weight", w]))
    for n in args.rerank_nums.split(","):
        families["sift-sv"].append(("global+sift-sv", f"N={n}", ["--rerank-num", n]))
    chosen: dict[str, tuple[str, list[str]]] = {}
    for fam, grid in families.items():
        scores = [(medium(run(args, p, "rv-train", f"{p} {s}", *e, *hybrid_args(args))), p, s, e)
                  for p, s, e in grid]  # fmt: skip
        best = max(scores, key=lambda t: t[0])
        chosen[fam] = (best[1], best[3])
        CHOICES[fam] = best[2]
    w = chosen["sift-asmk"][1]
    combo = []
    for n in args.rerank_nums.split(","):
        tag = f"global+sift-asmk W={w[1]} N={n}"
        e = [*w, "--rerank-num", n]
        res = run(args, "global+sift-asmk", "rv-train", tag, *e, *hybrid_args(args))
        combo.append((medium(res), tag, e))
    best = max(combo, key=lambda t: t[0])
    CHOICES["sift-asmk+sv"] = best[1].split(" ", 1)[1]  # ties: the first (cheapest) setting
    chosen["sift-asmk+sv"] = ("global+sift-asmk", best[2])
    if args.sensitivity:  # the whole grid on the test sets: reported, never used to choose
        for grid in families.values():
            for p, st, e in grid:
                for d in test:
                    run(args, p, d, f"{p} {st}", *e, *hybrid_args(args))
    for _fam, (p, e) in chosen.items():
        tag = f"{p} " + " ".join(e[i] + "=" + e[i + 1] for i in range(0, len(e), 2))
        tag = tag.replace("--fusion-weight=", "W=").replace("--rerank-num=", "N=")
        for d in test:
            run(args, p, d, tag, *e, *hybrid_args(args))
    return chosen


CHOICES: dict[str, str] = {}


def stage_sift(args: argparse.Namespace, datasets: list[str]) -> None:
    for d in datasets:
        run(args, "sift-asmk", d, "sift-asmk", *local_args(args))
        run(args, "sift-asmk", d, "sift-asmk N=50", "--rerank-num", "50", *local_args(args))


def train_flags(args: argparse.Namespace) -> list[str]:
    f = ["--root", str(args.root), "--training-dataset", "learn-train"]
    f += ["--arch", "efficientnet_lite0", "--pretrained", "imagenet", "--pool", "gem"]
    f += ["--loss", "contrastive", "--loss-margin", str(args.margin), "--optimizer", "adam"]
    f += ["--lr", str(args.lr), "--neg-num", "3", "--query-size", str(args.query_size)]
    f += ["--pool-size", str(args.pool_size), "--batch-size", "5", "--workers", "2"]
    return f + ["--image-size", str(args.train_size), "--test-image-size", str(args.size)]


def stage_finetune(args: argparse.Namespace) -> tuple[Path | None, list[dict[str, str]]]:
    """Fine-tune lite0; returns the checkpoint of the best learn-val epoch and the log rows."""
    export = args.work / args.train_dir
    found = sorted(export.glob("*/model_epoch*.pth"), key=lambda p: p.stat().st_mtime)
    last = found[-1] if found else None
    done = last is not None and last.stem == f"model_epoch{args.epochs}"
    if not done:
        cmd = ["train", "global", str(export), *train_flags(args), "--epochs", str(args.epochs)]
        cmd += ["--test-datasets", args.train_tests, "-q"]
        delfx(*cmd, *(["--resume", str(last)] if last else []), label="fine-tune lite0")
    run(args, "global-gem", "learn-val", "global-gem efficientnet_lite0", *glob_args(args))
    logs = sorted(export.glob("*/log.csv"))
    if not logs:
        return None, []
    with logs[0].open(newline="") as f:
        rows = list(csv.DictReader(f))
    scored = [r for r in rows if r.get("learn-val_mAP_M") and int(r["epoch"]) > 0]
    if not scored:
        return None, rows
    best = max(scored, key=lambda r: float(r["learn-val_mAP_M"]))
    CHOICES["fine-tune epoch"] = best["epoch"]
    return logs[0].parent / f"model_epoch{best['epoch']}.pth", rows


def stage_delf(args: argparse.Namespace, ckpt: Path | None, test: list[str]) -> None:
    delf = ["--scales", "1,0.707,0.5", "--feature-num", "500", "--pca-dim", str(args.pca_dim)]
    delf += ["--delf-image-size", str(args.size), *local_args(args)]
    l2 = ["--model", "efficientnet_lite0", "--pretrained", "imagenet", "--attention", "l2"]
    l2 += ["--block", "block3", "--image-size", str(args.size)]
    for d in test:
        run(args, "delf-asmk", d, "delf-asmk lite0 l2", *l2, *delf)
        run(args, "global+asmk", d, "global+asmk lite0 l2", *l2, *delf)
        run(args, "global+local", d, "global+local lite0 l2 N=50", *l2, *delf, "--rerank-num", "50")
    if args.attention_epochs < 1:
        return
    base = ckpt if ckpt is not None else "imagenet"
    att = args.work / "attention"
    heads = sorted(att.glob("*/model_epoch*.pth"))
    if not heads:
        src = str(ckpt) if ckpt is not None else "imagenet"
        cmd = ["train", "attention", str(att), "--param-directory", src, *train_flags(args)]
        cmd += ["--epochs", str(args.attention_epochs), "--attention-block", "block3"]
        cmd += ["--test-datasets", "", "-q"]
        delfx(*cmd, label=f"attention on {base}")
        heads = sorted(att.glob("*/model_epoch*.pth"))
    if not heads:
        return
    learned = ["--model", str(heads[-1]), "--image-size", str(args.size)]
    if ckpt is not None:
        learned += ["--global-model", str(ckpt)]
    for d in test:
        run(args, "delf-asmk", d, "delf-asmk lite0 learned", *learned, *delf)
        run(args, "global+asmk", d, "global+asmk lite0 learned", *learned, *delf)
        run(args, "global+local", d, "global+local lite0 learned N=50", *learned, *delf,
            "--rerank-num", "50")  # fmt: skip


def table(datasets: list[str]) -> None:
    print("\n| pipeline | " + " | ".join(f"{d} E / M / H" for d in datasets) + " |")
    print("|---|" + "---:|" * len(datasets))
    for tag in dict.fromkeys(t for t, _ in RESULTS):
        cells = []
        for d in datasets:
            r = RESULTS.get((tag, d))
            cells.append("" if r is None else " / ".join(f"{x:.2f}" for x in r))
        print(f"| {tag} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realviews", type=Path, default=REALVIEWS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/delfx-pretrained"))
    ap.add_argument("--stages", default="data,global,hybrid,sift", help="comma list or 'all'")
    ap.add_argument("--size", type=int, default=512, help="test image size (px)")
    ap.add_argument("--train-size", type=int, default=256, help="training image size (px)")
    ap.add_argument("--val-every", type=int, default=5, help="every Nth training place: val")
    ap.add_argument("--no-synth", dest="synth", action="store_false")
    ap.add_argument("--sensitivity", action="store_true", help="hybrid grids on the test sets")
    ap.add_argument("--archs", default="efficientnet_lite0", help="e.g. ...,efficientnet_lite2")
    ap.add_argument("--fusion-weights", default="0.5,1,2,4")
    ap.add_argument("--rerank-nums", default="20,50,100")
    ap.add_argument("--codebook-size", type=int, default=1024)
    ap.add_argument("--val-distractor-step", type=int, default=4, help="learn-val distractors")
    ap.add_argument("--train-tests", default="learn-val", help="evaluated every epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-dir", default="train", help="export folder under WORK, per setting")
    ap.add_argument("--delf-tests", default="rv-test", help="datasets of the DELF pipelines")
    ap.add_argument("--pca-dim", type=int, default=64, help="DELF PCA (lite0 block3: 112-d)")
    ap.add_argument("--attention-epochs", type=int, default=0, help="0: no trained attention")
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--margin", type=float, default=0.8)
    ap.add_argument("--query-size", type=int, default=40)
    ap.add_argument("--pool-size", type=int, default=120)
    args = ap.parse_args()
    stages = STAGES if args.stages == "all" else tuple(args.stages.split(","))
    args.work = args.work.resolve()
    args.root = args.work / "data"
    t0 = time.perf_counter()
    test = ["rv-test", "rv-synth-test", "rv-full"] if args.synth else ["rv-test", "rv-full"]
    if "data" in stages:
        build_data(args)
    archs = args.archs.split(",")
    if "global" in stages:
        stage_global(args, ["rv-train", *test], archs[:1])
    if "hybrid" in stages:
        stage_hybrid(args, test)
    if "sift" in stages:
        stage_sift(args, ["rv-train", *test])
    if "global" in stages:
        stage_global(args, ["rv-train", *test], archs[1:])
    ckpt, rows = None, []
    if "finetune" in stages or "delf" in stages:
        ckpt, rows = stage_finetune(args)
        if ckpt is not None:
            for d in test[:1]:
                epoch = CHOICES["fine-tune epoch"]
                tag = f"global-gem lite0 fine-tuned ({args.train_dir}, epoch {epoch})"
                run(args, "global-gem", d, tag, "--model", str(ckpt),
                    "--image-size", str(args.size))  # fmt: skip
    if "delf" in stages:
        stage_delf(args, ckpt, args.delf_tests.split(","))
    table(["rv-train", *test])
    print("\nchosen on rv-train (medium mAP): " + json.dumps(CHOICES))
    if rows:
        print("\n| epoch | loss | learn-val M | rv-test M |\n|---:|---:|---:|---:|")
        for r in rows:
            val, test_m = r.get("learn-val_mAP_M", ""), r.get("rv-test_mAP_M", "")
            cells = [r["epoch"], r["loss"], val, test_m]
            print("| " + " | ".join(cells) + " |")
    print("\n| step | wall s | rc |\n|---|---:|---:|")
    for label, dt, rc in TIMES:
        print(f"| {label} | {dt:.1f} | {rc} |")
    print(f"\ntotal wall time this run: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

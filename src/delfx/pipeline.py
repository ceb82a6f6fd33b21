"""Stage: the seed's whole experiment from one file (``delfx pipeline CONFIG.yaml``).

In order: build the datasets the file lists, fine-tune the global network, train attention on the
frozen fine-tuned network, then for each evaluation dataset and pipeline extract features, build
the index, search, verify and evaluate (``delfx run``). A stage whose outputs are present and
valid is skipped: a dataset that loads, a training run whose ``model_last.pth`` reached the epoch
count (a shorter one is resumed), and every cached output of ``delfx run``. A corrupt checkpoint is
reported and trained again.

Outputs under ``work``::

    models/<export name>/            fine-tuning checkpoints and log.csv
    attention_models/<export name>/  attention checkpoints and log.csv
    cache/                           features, indexes and rankings (delfx run)
    results/<dataset>-<pipeline>-sv<N>.json
    results.json                     {"config": file, "results": [...every results JSON...]}
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from delfx import build_groups, build_training, run, synth
from delfx.datasets.revisited import RetrievalDataset
from delfx.datasets.training import load_training
from delfx.errors import InputError
from delfx.io import atomic
from delfx.pipeline_config import DataStep, Experiment

logger = logging.getLogger(__name__)

#: Called with each line worth showing (seed-format evaluation lines, stage notes).
LineCallback = Callable[[str], None]


def _samples() -> Path:
    from delfx.demo import samples_dir

    return samples_dir()


def _source(value: str | None, sub: str, base: Path) -> Path | None:
    if value is None:
        return None
    if value == "samples":
        return _samples() / sub
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _copy_places(step: DataStep, src: Path, dst: Path) -> Path:
    """The chosen groups of ``src`` copied to ``dst`` (shrunk to ``step.size`` when set)."""
    places = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if step.places != "all":
        places = places[0::2] if step.places == "even" else places[1::2]
    for place in places:
        for photo in sorted(place.iterdir()):
            if photo.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            _copy_photo(photo, dst / place.name / photo.name, step.size)
    return dst


def _copy_photo(src: Path, dst: Path, size: int | None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if size is None:
        shutil.copyfile(src, dst)
        return
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        im.save(dst.with_suffix(".jpg"), quality=92)


def _present(exp: Experiment, step: DataStep) -> bool:
    try:
        if step.kind == "training":
            load_training(exp.root, step.name)
        else:
            RetrievalDataset(exp.root, step.name)
    except InputError:
        return False
    return True


def build_data(exp: Experiment, progress: bool = True) -> list[str]:
    """Build the datasets of ``exp.data`` that are not already under the root; returns names."""
    built = []
    base = exp.source.resolve().parent
    for step in exp.data:
        if _present(exp, step):
            logger.info("dataset %s: present, skipped", step.name)
            continue
        groups = _source(step.groups, "groups", base)
        if groups is None or not groups.is_dir():
            raise InputError(f"{exp.source}: data '{step.name}': groups folder {groups} not found")
        distractors = _source(step.distractors, "distractors", base)
        with tempfile.TemporaryDirectory(prefix="delfx-pipeline-") as tmp:
            chosen = _copy_places(step, groups, Path(tmp) / "groups")
            dis = None
            if distractors is not None:
                dis = Path(tmp) / "distractors"
                for photo in sorted(distractors.iterdir()):
                    if photo.suffix.lower() in (".jpg", ".jpeg", ".png"):
                        _copy_photo(photo, dis / photo.name, step.size)
            if step.kind == "groups":
                conf = build_groups.GroupsConfig(progress=progress)
                recorded = (str(groups), None if distractors is None else str(distractors))
                build_groups.main(conf, chosen, exp.root, step.name, distractors_dir=dis,
                                  recorded_dirs=recorded)  # fmt: skip
            elif step.kind == "training":
                build_training.main(chosen, exp.root, step.name, val_fraction=0, seed=step.seed)
            else:
                firsts = Path(tmp) / "firsts"
                firsts.mkdir()
                for place in sorted(chosen.iterdir()):
                    shutil.copyfile(sorted(place.iterdir())[0], firsts / f"{place.name}.jpg")
                sconf = replace(synth.PRESETS["small"], views=step.views)
                if step.size is not None:
                    sconf = replace(sconf, size=step.size)
                synth.main(sconf, firsts, exp.root, step.name, seed=step.seed, distractors_dir=dis)
        built.append(step.name)
    return built


def _train(
    kind: str,
    settings: dict[str, Any],
    export_root: Path,
    exp: Experiment,
    on_line: LineCallback | None,
    progress: bool,
    **kw: Any,
) -> Path:
    """Run (or resume, or skip) one training stage; returns its best checkpoint."""
    from delfx.train import state
    from delfx.train.loop import TrainConfig, export_name

    conf = TrainConfig(**settings)
    export_dir = export_root / export_name(conf)
    last = export_dir / "model_last.pth"
    resume = None
    if last.is_file():
        try:
            done = int(state.read_checkpoint(last)["extra"]["epoch"])
        except InputError as exc:
            logger.warning("%s: %s; training again", kind, exc)
            done = -1
        if done >= conf.epochs:
            logger.info("%s: %s has %d epochs, skipped", kind, export_dir, done)
            return _best(export_dir)
        resume = last if done >= 0 else None

    def show(epoch: int, lines: list[str]) -> None:
        if on_line is not None:
            on_line(f"# {kind} epoch {epoch}")
            for line in lines:
                on_line(line)

    if kind == "finetune":
        from delfx import train_global

        train_global.main(
            conf, export_root, root=exp.root, resume=resume, device=exp.device,
            progress=progress, on_eval=show,
        )  # fmt: skip
    else:
        from delfx import train_attention

        train_attention.main(
            conf, export_root, root=exp.root, resume=resume, device=exp.device,
            progress=progress, on_eval=show, **kw,
        )  # fmt: skip
    return _best(export_dir)


def _best(export_dir: Path) -> Path:
    best = export_dir / "model_best.pth"
    return best if best.is_file() else export_dir / "model_last.pth"


def main(exp: Experiment, *, progress: bool = True, on_line: LineCallback | None = None) -> Path:
    """Run the experiment; returns ``work/results.json``.

    Raises:
        InputError: a bad dataset, checkpoint or setting (the message names it).
    """
    from delfx import run_global
    from delfx.global_options import GLOBAL_PIPELINES, GlobalOptions
    from delfx.run_delf import DelfOptions

    exp.work.mkdir(parents=True, exist_ok=True)
    build_data(exp, progress)
    ext = dict(exp.extract)
    global_model = ext.pop("model", None)
    if exp.finetune is not None:
        global_model = str(
            _train("finetune", exp.finetune, exp.work / "models", exp, on_line, progress)
        )
    attention_kind = ext.pop("attention", None)
    delf_model = global_model
    if exp.attention is not None:
        settings = {**(exp.finetune or {}), **exp.attention}
        block = settings.pop("block", "last")
        param_dir = settings.pop("param_directory", None) or global_model
        if param_dir is None:
            raise InputError(
                f"{exp.source}: 'attention' needs a fine-tuning stage or param-directory"
            )
        delf_model = str(
            _train(
                "attention",
                settings,
                exp.work / "attention_models",
                exp,
                on_line,
                progress,
                param_directory=param_dir,
                block=block,
            )  # fmt: skip
        )
        attention_kind = None
    if global_model is None:
        raise InputError(f"{exp.source}: give a 'finetune' section or 'extract.model'")
    pretrained = str(ext.pop("pretrained", "none"))
    pooling = str(ext.pop("pool", "gem"))
    delf = DelfOptions(
        model=delf_model or global_model,
        pretrained=pretrained,
        pooling=pooling,
        attention=attention_kind,
        block=ext.pop("block", None),
        pca_dim=ext.pop("pca_dim", None),
        settings=ext,
        device=exp.device,
    )
    test_size = int((exp.finetune or {}).get("test_image_size", 1024))
    gopts = GlobalOptions(
        model=global_model, pretrained=pretrained, pooling=pooling, image_size=test_size,
        device=exp.device,
    )  # fmt: skip
    results = []
    for dataset in exp.datasets:
        for pipe in exp.pipelines:
            output = exp.work / "results" / f"{dataset}-{pipe.name}-sv{pipe.rerank_num}.json"
            if pipe.name in GLOBAL_PIPELINES:
                out = run_global.main(
                    pipe.name, exp.root, dataset, exp.work / "cache", output, gopts,
                    codebook_from=exp.codebook_from, progress=progress,
                )  # fmt: skip
            else:
                out = run.main(
                    pipe.name, exp.root, dataset, exp.work / "cache", output,
                    rerank_num=pipe.rerank_num, codebook_from=exp.codebook_from,
                    index_overrides=exp.index_overrides or None, delf=delf, global_opts=gopts,
                    progress=progress,
                )  # fmt: skip
            res = json.loads(out.read_text())
            results.append({"file": str(out), **res})
            if on_line is not None:
                from delfx.evaluation.report import format_lines

                on_line(f"# {dataset} {res.get('method', pipe.name)}")
                for line in format_lines(res):
                    on_line(line)
    summary = {"config": str(exp.source), "results": results}
    return atomic.write_json(exp.work / "results.json", summary)

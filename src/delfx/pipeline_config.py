"""The experiment file of ``delfx pipeline CONFIG.yaml``: parsing and checking, no side effects.

A YAML mapping with these sections (every key also accepts the seed's dashed flag spelling)::

    root: data                  # datasets root (relative paths are relative to the file)
    work: runs/ex1              # where models, features, indexes and results go
    device: cpu
    data:                       # optional: datasets to build first (skipped when present)
      - {kind: training, name: train, groups: samples, places: even, size: 160}
      - {kind: groups, name: test, groups: samples, places: odd, distractors: samples}
    finetune: {training-dataset: train, test-datasets: [test], arch: resnet18, pool: gem, ...}
    attention: {epochs: 2, block: last}          # the finetune settings, overridden
    extract: {feature-num: 2000, alpha-thresh: 0, image-size: 1024}  # over each pipeline's preset
    evaluate:
      datasets: [test]
      codebook-from: data:other  # independent images for codebooks and PCA
      codebook-size: 1024
      pipelines: [delf-voctree-seed, {name: delf-asmk, rerank-num: 100}, global+local]

``groups: samples`` is the package's shipped sample photos; ``places: even|odd`` keeps every
other group (sorted by name) so training and test places never overlap.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delfx.errors import InputError
from delfx.index.local import IndexConfig
from delfx.io.yaml_safe import load_yaml

SECTIONS = ("root", "work", "device", "data", "finetune", "attention", "extract", "evaluate")
DATA_KINDS = ("groups", "training", "synth")
PLACES = ("all", "even", "odd")


@dataclass(frozen=True)
class DataStep:
    """A dataset to build before the run.

    Attributes:
        kind: ``groups`` (benchmark from groups), ``training`` (tuple-training set) or ``synth``.
        name: dataset name under the root.
        groups: folder of ``<place>/*.jpg`` groups, or ``samples`` for the shipped photos.
        places: ``all``, ``even`` or ``odd`` groups (sorted by name).
        distractors: folder of distractor photos, ``samples``, or None.
        size: shrink photos to this longer side first (None: keep).
        views: synthetic views per photo (``synth`` only).
        seed: random seed (``synth``).
    """

    kind: str
    name: str
    groups: str = "samples"
    places: str = "all"
    distractors: str | None = None
    size: int | None = None
    views: int = 4
    seed: int = 0


@dataclass(frozen=True)
class PipelineRun:
    """One ``delfx run`` pipeline of the evaluation stage."""

    name: str
    rerank_num: int = 0


@dataclass(frozen=True)
class Experiment:
    """A whole experiment: datasets, fine-tuning, attention, extraction, indexing, evaluation.

    ``finetune`` and ``attention`` hold :class:`~delfx.train.config.TrainConfig` keyword values;
    ``extract`` holds :class:`~delfx.features.delf.DelfConfig` values plus ``pca_dim``,
    ``attention`` (``l2`` to skip attention training) and ``model`` (a checkpoint or an
    architecture when there is no fine-tuning stage).
    """

    source: Path
    root: Path
    work: Path
    device: str = "cpu"
    data: tuple[DataStep, ...] = ()
    finetune: dict[str, Any] | None = None
    attention: dict[str, Any] | None = None
    extract: dict[str, Any] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    pipelines: tuple[PipelineRun, ...] = ()
    codebook_from: str | None = None
    index_overrides: dict[str, Any] = field(default_factory=dict)


def _keys(d: Any, where: str, path: Path) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise InputError(f"{path}: '{where}' must be a mapping, got {type(d).__name__}")
    return {str(k).replace("-", "_"): v for k, v in d.items()}


def _check_fields(d: dict[str, Any], allowed: set[str], where: str, path: Path) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise InputError(f"{path}: unknown key '{where}.{unknown[0]}'")


def _train_fields() -> set[str]:
    from delfx.train.config import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def _train_section(raw: Any, where: str, path: Path, extra: set[str]) -> dict[str, Any]:
    d = _keys(raw, where, path)
    _check_fields(d, _train_fields() | extra, where, path)
    if isinstance(d.get("test_datasets"), str):
        d["test_datasets"] = [s.strip() for s in d["test_datasets"].split(",") if s.strip()]
    if "test_datasets" in d:
        d["test_datasets"] = tuple(d["test_datasets"])
    return d


def _int(value: Any, key: str, path: Path) -> int:
    """A whole number from the file (YAML gives ints, or strings and lists by mistake)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{path}: '{key}' must be a whole number, got {value!r}")
    return value


def _rel(base: Path, value: Any, key: str, path: Path) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise InputError(f"{path}: '{key}' must be a path")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _data_steps(raw: Any, path: Path) -> tuple[DataStep, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InputError(f"{path}: 'data' must be a list of datasets to build")
    allowed = {f.name for f in dataclasses.fields(DataStep)}
    steps = []
    for i, item in enumerate(raw):
        d = _keys(item, f"data[{i}]", path)
        _check_fields(d, allowed, f"data[{i}]", path)
        for key in ("kind", "name"):
            if key not in d:
                raise InputError(f"{path}: data[{i}] needs '{key}'")
        if d["kind"] not in DATA_KINDS:
            raise InputError(f"{path}: data[{i}].kind must be one of {', '.join(DATA_KINDS)}")
        if d.get("places", "all") not in PLACES:
            raise InputError(f"{path}: data[{i}].places must be one of {', '.join(PLACES)}")
        steps.append(DataStep(**d))
    return tuple(steps)


def _pipelines(raw: Any, path: Path) -> tuple[PipelineRun, ...]:
    from delfx.global_options import GLOBAL_PIPELINES
    from delfx.run import PIPELINES

    if not isinstance(raw, list) or not raw:
        raise InputError(f"{path}: 'evaluate.pipelines' must be a non-empty list")
    out: list[PipelineRun] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            out.append(PipelineRun(item))
            continue
        d = _keys(item, f"evaluate.pipelines[{i}]", path)
        _check_fields(d, {"name", "rerank_num"}, f"evaluate.pipelines[{i}]", path)
        if "name" not in d:
            raise InputError(f"{path}: evaluate.pipelines[{i}] needs 'name'")
        rerank = _int(d.get("rerank_num", 0), f"evaluate.pipelines[{i}].rerank-num", path)
        if rerank < 0:
            raise InputError(f"{path}: 'evaluate.pipelines[{i}].rerank-num' must be >= 0")
        out.append(PipelineRun(str(d["name"]), rerank))
    known = (*PIPELINES, *GLOBAL_PIPELINES)
    for i, run in enumerate(out):
        if run.name not in known:
            raise InputError(
                f"{path}: evaluate.pipelines[{i}] '{run.name}': expected one of {', '.join(known)}"
            )
    return tuple(out)


def load(path: str | os.PathLike[str]) -> Experiment:
    """Read and check an experiment file.

    Raises:
        InputError: unreadable YAML (or one that expands past
            :data:`~delfx.io.yaml_safe.MAX_NODES` nodes), an unknown section or key, or a missing
            required value; the message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such experiment file")
    raw = load_yaml(path)  # refuses alias bombs before any field is read
    top = _keys(raw, "top level", path)
    _check_fields(top, set(SECTIONS), "top level", path)
    for key in ("root", "work", "evaluate"):
        if key not in top:
            raise InputError(f"{path}: missing '{key}'")
    base = path.resolve().parent
    finetune = (
        None
        if top.get("finetune") is None
        else _train_section(top["finetune"], "finetune", path, set())
    )
    attention = (
        None
        if top.get("attention") is None
        else _train_section(top["attention"], "attention", path, {"block", "param_directory"})
    )
    extract = _keys(top.get("extract"), "extract", path)
    _check_fields(
        extract,
        {"feature_num", "alpha_thresh", "image_size", "scales", "pca_dim"}
        | {"attention", "model", "pretrained", "pool", "block"},
        "extract",
        path,
    )
    ev = _keys(top["evaluate"], "evaluate", path)
    allowed = {"datasets", "pipelines", "codebook_from", "codebook_size"}
    _check_fields(ev, allowed | {"tree_branch", "tree_height"}, "evaluate", path)
    datasets = ev.get("datasets")
    if isinstance(datasets, str):
        datasets = [s.strip() for s in datasets.split(",") if s.strip()]
    if not datasets:
        raise InputError(f"{path}: 'evaluate.datasets' must name at least one dataset")
    overrides = {
        k: _int(ev[key], f"evaluate.{key.replace('_', '-')}", path)
        for k, key in (("n_words", "codebook_size"), ("branch", "tree_branch"))
        + (("height", "tree_height"),)
        if ev.get(key) is not None
    }
    try:  # the index config's own rules (e.g. codebook-size >= 2)
        dataclasses.replace(IndexConfig(), **overrides)
    except InputError as exc:
        raise InputError(f"{path}: evaluate: {exc}") from None
    root = _rel(base, top["root"], "root", path)
    codebook_from = ev.get("codebook_from")
    if isinstance(codebook_from, str) and ":" in codebook_from:
        other_root, other = codebook_from.rsplit(":", 1)
        codebook_from = f"{_rel(base, other_root, 'evaluate.codebook-from', path)}:{other}"
    return Experiment(
        source=path,
        root=root,
        work=_rel(base, top["work"], "work", path),
        device=str(top.get("device") or "cpu"),
        data=_data_steps(top.get("data"), path),
        finetune=finetune,
        attention=attention,
        extract=extract,
        datasets=tuple(str(d) for d in datasets),
        pipelines=_pipelines(ev.get("pipelines"), path),
        codebook_from=codebook_from,
        index_overrides=overrides,
    )

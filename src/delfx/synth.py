"""Stage: build a synthetic retrieval benchmark from a folder of single landmark photos.

Each photo becomes a query (``<stem>_q``, with a random query box over a good part of it) and
``conf.views`` database views (``<stem>_v01``, ...) made with random homographies, backgrounds
from other photos, occluders and appearance changes (:mod:`delfx.datasets.synth_views`). Every
view is labelled easy, hard or junk from how much of the query box it still shows and how
severe its changes are. Photos from an optional distractor folder give database views that are
never positive (``distractor_<stem>_v01``), and backgrounds and occluder fills for the rest.

Output, in the revisited layout (field-facts §2)::

    <out_root>/<name>/jpg/<image>.jpg
    <out_root>/<name>/gnd_<name>.json and .pkl
    <out_root>/<name>/synth.json       config, seed, and every view's parameters and label

The result depends only on the photos (read in sorted order), the config and the seed: the
same inputs give byte-identical files. Nothing appears under ``<out_root>/<name>`` unless the
whole dataset was built.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from delfx.datasets.gnd_io import write_gnd
from delfx.datasets.synth_views import (
    LABELS,
    Assessment,
    LabelThresholds,
    SeverityScales,
    ViewParams,
    ViewRanges,
    assess_view,
    render_view,
    sample_view,
)
from delfx.errors import InputError
from delfx.io import atomic
from delfx.io.images import encode_jpeg, list_photos, read_image

logger = logging.getLogger(__name__)

#: Photos with a shorter side than this (after resizing) are refused.
MIN_SIDE = 16


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the synthetic benchmark.

    Attributes:
        size: longest side of queries and views, in pixels (photos are shrunk, never enlarged).
        views: database views per landmark photo.
        distractor_views: database views per distractor photo.
        box_min: smallest query-box side, as a fraction of the photo side.
        box_max: largest query-box side, as a fraction of the photo side (at most 1).
        query_quality: JPEG quality of the query images.
        max_attempts: tries at drawing a photo's views before the last, change-free fallback;
            each retry lowers the difficulty cap, so every query gets a positive.
        ranges: how far each change may go (:class:`~delfx.datasets.synth_views.ViewRanges`).
        severity: how big a change counts as barely recognisable.
        thresholds: the easy/hard/junk cut-offs (defaults: easy when visible >= 0.6 and
            severity <= 0.45; junk when visible < 0.25 or severity > 1.0; hard otherwise).
    """

    size: int = 512
    views: int = 6
    distractor_views: int = 1
    box_min: float = 0.5
    box_max: float = 0.9
    query_quality: int = 95
    max_attempts: int = 6
    ranges: ViewRanges = field(default_factory=ViewRanges)
    severity: SeverityScales = field(default_factory=SeverityScales)
    thresholds: LabelThresholds = field(default_factory=LabelThresholds)

    def __post_init__(self) -> None:
        t = self.thresholds
        checks = {
            "size": (self.size >= 2 * MIN_SIDE, self.size),
            "views": (self.views >= 1, self.views),
            "distractor_views": (self.distractor_views >= 0, self.distractor_views),
            "box_min": (0.0 < self.box_min <= self.box_max, self.box_min),
            "box_max": (self.box_min <= self.box_max <= 1.0, self.box_max),
            "query_quality": (1 <= self.query_quality <= 100, self.query_quality),
            "max_attempts": (self.max_attempts >= 1, self.max_attempts),
            "thresholds": (
                0.0 <= t.junk_visible <= t.easy_visible <= 1.0
                and 0.0 <= t.easy_severity <= t.junk_severity,
                t,
            ),
        }
        for key, (ok, value) in checks.items():
            if not ok:
                raise InputError(f"synth config: invalid {key} = {value!r}")


#: Named presets: "default" for real benchmarks, "small" for quick looks and tests.
PRESETS: dict[str, SynthConfig] = {
    "default": SynthConfig(),
    "small": SynthConfig(size=160, views=4, distractor_views=1),
}


def preset(name: str) -> SynthConfig:
    """The preset called ``name``.

    Raises:
        InputError: no such preset.
    """
    if name not in PRESETS:
        raise InputError(f"synth preset '{name}': expected one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


@dataclass(frozen=True, eq=False)
class _Photo:
    path: Path
    stem: str
    image: np.ndarray


@dataclass(frozen=True, eq=False)
class _DbView:
    name: str
    photo: _Photo
    query: int | None  # None for a distractor view
    view: ViewParams
    assessment: Assessment | None
    pool: tuple[_Photo, ...]  # where its background and occluder fills come from


def main(
    conf: SynthConfig,
    photos_dir: Path,
    out_root: Path,
    name: str,
    *,
    seed: int,
    distractors_dir: Path | None = None,
    overwrite: bool = False,
    export_pkl: bool = False,
) -> Path:
    """Build the synthetic dataset ``<out_root>/<name>``.

    Args:
        conf: the settings (see :data:`PRESETS`).
        photos_dir: folder of landmark photos, one landmark per photo.
        out_root: datasets root to write into.
        name: dataset name (folder and ground-truth file name).
        seed: random seed; the same seed and inputs give byte-identical output.
        distractors_dir: optional folder of non-landmark photos.
        overwrite: replace an existing dataset of that name.
        export_pkl: also write ``gnd_<name>.pkl`` for the field's own scripts.

    Returns:
        The dataset folder.

    Raises:
        InputError: a bad name, an empty folder, or a file that is not a readable photo (the
            message names it); nothing is left under ``out_root`` then.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise InputError(f"dataset name '{name}': use letters, digits, '.', '_' and '-' only")
    landmark_paths, distractor_paths = _list_inputs(Path(photos_dir), distractors_dir)
    logger.info(
        "synth %s: %d photos, %d distractors, seed %d",
        *(name, len(landmark_paths), len(distractor_paths), seed),
    )
    logger.debug("synth config: %s", conf)
    taken: set[str] = set()
    landmarks = _load(landmark_paths, conf.size, "", taken)
    distractors = _load(distractor_paths, conf.size, "distractor_", taken)

    landmark_ss, distractor_ss, order_ss = np.random.SeedSequence(seed).spawn(3)
    boxes, db, attempts = _plan_landmarks(conf, landmarks, distractors, landmark_ss)
    db += _plan_distractors(conf, distractors, distractor_ss)
    order = np.random.default_rng(order_ss).permutation(len(db))  # views of a photo spread out
    position = np.empty(len(db), dtype=np.int64)
    position[order] = np.arange(len(db))
    gnd: dict[str, Any] = {
        "imlist": [db[i].name for i in order],
        "qimlist": [f"{p.stem}_q" for p in landmarks],
        "gnd": [{"bbx": list(box), **{k: [] for k in LABELS}} for box in boxes],
    }
    for i, v in enumerate(db):
        if v.query is not None and v.assessment is not None:
            gnd["gnd"][v.query][v.assessment.label].append(int(position[i]))
    for entry in gnd["gnd"]:
        for key in LABELS:
            entry[key].sort()

    final = Path(out_root) / name
    with atomic.staging_dir(final, overwrite=overwrite) as tmp:
        (tmp / "jpg").mkdir()
        _render_all(conf, landmarks, db, tmp / "jpg")
        write_gnd(tmp, name, gnd, export_pkl=export_pkl)
        record = _record(conf, seed, landmarks, distractors, boxes, attempts, db, position)
        atomic.write_json(tmp / "synth.json", record)
    counts = Counter(v.assessment.label for v in db if v.assessment is not None)
    logger.info(
        "synth %s: %d queries, %d database images (%s, %d distractor views) -> %s",
        *(name, len(landmarks), len(db), ", ".join(f"{counts[k]} {k}" for k in LABELS)),
        *(sum(v.query is None for v in db), final),
    )
    return final


def _list_inputs(photos_dir: Path, distractors_dir: Path | None) -> tuple[list[Path], list[Path]]:
    """The landmark and distractor photo paths, sorted; an empty folder is an error."""
    landmark_paths = list_photos(photos_dir)
    if not landmark_paths:
        raise InputError(f"{photos_dir}: no photos found")
    if distractors_dir is None:
        return landmark_paths, []
    distractors_dir = Path(distractors_dir)
    if distractors_dir.resolve() == photos_dir.resolve():
        raise InputError(f"{distractors_dir}: the distractor folder is the photo folder")
    distractor_paths = list_photos(distractors_dir)
    if not distractor_paths:
        raise InputError(f"{distractors_dir}: no distractor photos found")
    return landmark_paths, distractor_paths


def _safe_stem(stem: str, prefix: str, taken: set[str]) -> str:
    """A file-system-safe name, unique among ``taken`` even on case-insensitive systems."""
    base = prefix + (re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "photo")
    candidate, n = base, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{base}_{n}"
    taken.add(candidate.lower())
    return candidate


def _load(paths: list[Path], size: int, prefix: str, taken: set[str]) -> list[_Photo]:
    """Read and shrink every photo up front, so a bad file fails before anything is written."""
    photos = []
    for path in tqdm(paths, desc="reading photos", unit="photo", leave=False, disable=None):
        image = read_image(path, max_side=size)  # shrunk on load: no full-size copy
        if min(image.shape[:2]) < MIN_SIDE:
            raise InputError(f"{path}: photo too small ({image.shape[1]}x{image.shape[0]})")
        photos.append(_Photo(path, _safe_stem(path.stem, prefix, taken), image))
    return photos


def _size(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[1]), int(image.shape[0])


def _sample_box(rng: np.random.Generator, size: tuple[int, int], conf: SynthConfig) -> tuple:
    """A query box over a good part of the photo, with whole-pixel corners."""
    box = []
    for side in size:
        length = max(2, round(side * rng.uniform(conf.box_min, conf.box_max)))
        start = int(np.floor(rng.uniform(0.0, side - length + 1)))
        box.append((start, min(side, start + length)))
    (x1, x2), (y1, y2) = box
    return (float(x1), float(y1), float(x2), float(y2))


def _plan_landmarks(
    conf: SynthConfig,
    landmarks: list[_Photo],
    distractors: list[_Photo],
    ss: np.random.SeedSequence,
) -> tuple[list[tuple], list[_DbView], list[int]]:
    """Draw every landmark's query box and views, retrying until each has a positive."""
    boxes, db, attempts = [], [], []
    width = max(2, len(str(conf.views)))
    for k, (photo, child) in enumerate(zip(landmarks, ss.spawn(len(landmarks)), strict=True)):
        rng = np.random.default_rng(child)
        size = _size(photo.image)
        box = _sample_box(rng, size, conf)
        pool = tuple(distractors) or tuple(p for j, p in enumerate(landmarks) if j != k)
        for attempt in range(conf.max_attempts):
            cap = 1.0 - attempt / (conf.max_attempts - 1) if conf.max_attempts > 1 else 0.0
            draw = {"n_backgrounds": len(pool), "n_patches": len(pool), "difficulty_cap": cap}
            views = [sample_view(rng, size, box, conf.ranges, **draw) for _ in range(conf.views)]
            marks = [assess_view(v, box, conf.severity, conf.thresholds) for v in views]
            if any(m.label != "junk" for m in marks):
                break
            logger.debug("%s: no positive view at attempt %d, resampling", photo.path, attempt + 1)
        else:  # the last attempt has difficulty 0: the photo itself, always easy
            raise AssertionError(f"{photo.path}: no positive view after {conf.max_attempts} tries")
        boxes.append(box)
        attempts.append(attempt + 1)
        db += [
            _DbView(f"{photo.stem}_v{i + 1:0{width}d}", photo, k, v, m, pool)
            for i, (v, m) in enumerate(zip(views, marks, strict=True))
        ]
    return boxes, db, attempts


def _plan_distractors(
    conf: SynthConfig, distractors: list[_Photo], ss: np.random.SeedSequence
) -> list[_DbView]:
    """Draw the views of every distractor; their backgrounds come from other distractors."""
    db = []
    width = max(2, len(str(conf.distractor_views)))
    for j, (photo, child) in enumerate(zip(distractors, ss.spawn(len(distractors)), strict=True)):
        rng = np.random.default_rng(child)
        size = _size(photo.image)
        pool = tuple(p for i, p in enumerate(distractors) if i != j)
        for i in range(conf.distractor_views):
            view = sample_view(
                rng, size, (0, 0, *size), conf.ranges, n_backgrounds=len(pool), n_patches=len(pool)
            )
            db.append(_DbView(f"{photo.stem}_v{i + 1:0{width}d}", photo, None, view, None, pool))
    return db


def _render_all(conf: SynthConfig, landmarks: list[_Photo], db: list[_DbView], jpg: Path) -> None:
    """Write every query and database image into ``jpg``."""
    total = len(landmarks) + len(db)
    with tqdm(total=total, desc="synth images", unit="img", leave=False, disable=None) as bar:
        for photo in landmarks:
            (jpg / f"{photo.stem}_q.jpg").write_bytes(encode_jpeg(photo.image, conf.query_quality))
            bar.update()
        for v in db:
            pool = [p.image for p in v.pool]
            image = render_view(v.photo.image, v.view, pool, pool)
            (jpg / f"{v.name}.jpg").write_bytes(encode_jpeg(image, v.view.photometric.jpeg_quality))
            bar.update()


def _rounded(obj: Any) -> Any:
    """Plain JSON-ready copy with floats cut to 9 significant digits."""
    if isinstance(obj, float):
        return float(f"{obj:.9g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rounded(v) for v in obj]
    if isinstance(obj, np.generic):
        return _rounded(obj.item())
    return obj


def _record(
    conf: SynthConfig,
    seed: int,
    landmarks: list[_Photo],
    distractors: list[_Photo],
    boxes: list[tuple],
    attempts: list[int],
    db: list[_DbView],
    position: np.ndarray,
) -> dict[str, Any]:
    """The ``synth.json`` content: enough to check or rebuild every image."""
    views = []
    for i, v in enumerate(db):
        mark = v.assessment
        views.append(
            {
                "name": v.name,
                "index": int(position[i]),
                "source": v.photo.path.name,
                "query": v.query,
                "label": "distractor" if mark is None else mark.label,
                "visible": None if mark is None else mark.visible,
                "severity": None if mark is None else mark.severity,
                "background_file": v.pool[v.view.background].path.name
                if v.view.background >= 0
                else None,
                "patch_files": [v.pool[o.patch].path.name for o in v.view.occluders],
                "params": dataclasses.asdict(v.view),
            }
        )
    return _rounded(
        {
            "format": "delfx-synth/1",
            "seed": int(seed),
            "config": dataclasses.asdict(conf),
            "queries": [
                {"name": f"{p.stem}_q", "source": p.path.name, "bbx": list(b), "attempts": a}
                for p, b, a in zip(landmarks, boxes, attempts, strict=True)
            ],
            "distractors": [p.path.name for p in distractors],
            "views": views,
        }
    )

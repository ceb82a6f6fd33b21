"""Stage: a revisited-layout benchmark from folders of views of the same place.

Input: ``GROUPS_DIR/<group>/*.jpg`` (two or more views per folder) and, optionally, a folder of
distractor photos. One view per group becomes the query, with a box covering the whole image;
the group's other views are its positives (``easy``); distractors are database images that are
never positive. A group folder may hold a ``labels.json`` to say more::

    {"query": "03.jpg", "hard": ["07.jpg"], "junk": ["02.jpg"]}

Views it does not name are easy. Ground-truth homography files named ``H_<a>_<b>*.txt`` (a
3 x 3 matrix mapping view ``<a>`` to view ``<b>``, as in the Oxford affine and EVD sets) are
checked and recorded in ``info.json``; any other non-image file is an error. Image names are
``<group>_<stem>`` and ``distractor_<stem>``. The dataset is built in a temporary folder and
renamed at the end.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from delfx.datasets.gnd_io import load_json, read_gnd, write_gnd
from delfx.datasets.revisited import parse_gnd
from delfx.errors import InputError
from delfx.io import atomic
from delfx.io.images import image_size, jpeg_bytes_for, list_photos

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_HOMOGRAPHY = re.compile(r"^H_([^_]+)_([^_.]+).*\.txt$")


@dataclass(frozen=True)
class GroupsConfig:
    """How groups become a benchmark.

    Attributes:
        min_views: views a group needs (the query plus at least one positive).
        jpeg_quality: quality for photos that must be re-encoded (non-JPEG or EXIF-rotated);
            upright JPEGs are copied byte for byte.
        progress: show a progress bar.
    """

    min_views: int = 2
    jpeg_quality: int = 95
    progress: bool = True


PRESETS: dict[str, GroupsConfig] = {"default": GroupsConfig()}


def safe_name(text: str) -> str:
    """A file-system-safe image name: runs of other characters become ``_``."""
    return _UNSAFE.sub("_", text).strip("_") or "image"


@dataclass(frozen=True)
class _GroupPlan:
    group: str
    query: Path
    labels: dict[Path, str]  # view -> easy | hard | junk
    homographies: tuple[tuple[str, str, str, list[list[float]]], ...]  # file, from, to, H


def _read_homography(path: Path) -> list[list[float]]:
    try:
        h = np.loadtxt(path, dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}: not a 3 x 3 homography ({exc})") from None
    if h.shape != (3, 3) or not np.all(np.isfinite(h)):
        raise InputError(f"{path}: not a 3 x 3 homography (shape {h.shape})")
    return h.tolist()


def _plan_group(folder: Path, min_views: int) -> _GroupPlan:
    sidecars = sorted(p.name for p in folder.iterdir() if _HOMOGRAPHY.match(p.name))
    views = list_photos(folder, ignore=("labels.json", *sidecars))
    if not views:
        raise InputError(f"{folder}: empty group folder (no photos)")
    if len(views) < min_views:
        raise InputError(f"{folder}: {len(views)} view(s); a group needs at least {min_views}")
    by_name = {v.name: v for v in views}
    spec: dict[str, Any] = {}
    if (folder / "labels.json").is_file():
        spec = load_json(folder / "labels.json")
        if not isinstance(spec, dict):
            raise InputError(f"{folder / 'labels.json'}: expected a JSON object")
    query_name = spec.get("query", views[0].name)
    if query_name not in by_name:
        raise InputError(f"{folder / 'labels.json'}: field 'query': no photo '{query_name}'")
    labels = {v: "easy" for v in views if v.name != query_name}
    for key in ("hard", "junk"):
        for view in spec.get(key, []):
            if view not in by_name or view == query_name:
                raise InputError(f"{folder / 'labels.json'}: field '{key}': bad view '{view}'")
            labels[by_name[view]] = key
    if not any(lab in ("easy", "hard") for lab in labels.values()):
        raise InputError(f"{folder}: the query has no positive view (all are junk)")
    stems = {v.stem: v for v in views}
    homographies = []
    for fname in sidecars:
        src, dst = _HOMOGRAPHY.match(fname).groups()  # type: ignore[union-attr]
        if src not in stems or dst not in stems:
            raise InputError(f"{folder / fname}: names views '{src}' and '{dst}' not in the group")
        homographies.append((fname, src, dst, _read_homography(folder / fname)))
    return _GroupPlan(folder.name, by_name[query_name], labels, tuple(homographies))


def _plan(groups_dir: Path, conf: GroupsConfig) -> list[_GroupPlan]:
    if not groups_dir.is_dir():
        raise InputError(f"{groups_dir}: groups folder not found")
    folders = sorted(p for p in groups_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"{groups_dir}: no group folders inside")
    return [_plan_group(f, conf.min_views) for f in folders]


def main(
    conf: GroupsConfig,
    groups_dir: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    name: str,
    *,
    distractors_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    export_pkl: bool = False,
    recorded_dirs: tuple[str, str | None] | None = None,
) -> Path:
    """Build the benchmark ``out_root/name`` from groups of views.

    ``export_pkl`` also writes ``gnd_<name>.pkl`` for the field's own scripts (delfx reads the
    JSON ground truth). ``recorded_dirs`` is what ``info.json`` names as the groups and
    distractors folders (default: the folders given), for a caller that reads from a copy.

    Returns:
        The dataset folder.

    Raises:
        InputError: an empty group, a non-image or truncated photo (the message names it); the
            output root is then left as it was.
    """
    groups_dir, out_root = Path(groups_dir), Path(out_root)
    plans = _plan(groups_dir, conf)
    distractors = list_photos(distractors_dir) if distractors_dir is not None else []
    jobs: list[tuple[str, Path]] = []  # (image name, source)
    imlist: list[str] = []
    records: list[dict[str, Any]] = []
    for plan in plans:
        qname = safe_name(f"{plan.group}_{plan.query.stem}")
        jobs.append((qname, plan.query))
        entry: dict[str, Any] = {
            "group": plan.group,
            "query": qname,
            "easy": [],
            "hard": [],
            "junk": [],
        }
        for view, label in plan.labels.items():
            entry[label].append(len(imlist))
            imlist.append(safe_name(f"{plan.group}_{view.stem}"))
            jobs.append((imlist[-1], view))
        records.append(entry)
    for photo in distractors:
        imlist.append(safe_name(f"distractor_{photo.stem}"))
        jobs.append((imlist[-1], photo))
    names = [n for n, _ in jobs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"{groups_dir}: two photos map to the same image name '{dup}'")

    recorded = recorded_dirs or (
        str(groups_dir),
        None if distractors_dir is None else str(distractors_dir),
    )
    with atomic.staging_dir(out_root / name, overwrite=overwrite) as tmp:
        sizes: dict[str, tuple[int, int]] = {}
        for image_name, src in tqdm(
            jobs, desc="images", unit="img", leave=False, disable=None if conf.progress else True
        ):
            atomic.write_bytes(
                tmp / "jpg" / f"{image_name}.jpg", jpeg_bytes_for(src, conf.jpeg_quality)
            )
            sizes[image_name] = image_size(tmp / "jpg" / f"{image_name}.jpg")
        gnd = []
        for rec in records:
            w, h = sizes[rec["query"]]
            gnd.append(
                {
                    "bbx": [0.0, 0.0, float(w), float(h)],
                    "easy": sorted(rec["easy"]),
                    "hard": sorted(rec["hard"]),
                    "junk": sorted(rec["junk"]),
                }
            )
        write_gnd(
            tmp,
            name,
            {"imlist": imlist, "qimlist": [r["query"] for r in records], "gnd": gnd},
            export_pkl=export_pkl,
        )
        atomic.write_json(
            tmp / "info.json",
            {
                "kind": "groups",
                "config": asdict(conf),
                "groups_dir": recorded[0],
                "distractors_dir": recorded[1],
                "groups": {r["group"]: r["query"] for r in records},
                "homographies": [
                    {
                        "file": f"{p.group}/{f}",
                        "from": safe_name(f"{p.group}_{a}"),
                        "to": safe_name(f"{p.group}_{b}"),
                        "H": h,
                    }
                    for p in plans
                    for f, a, b, h in p.homographies
                ],
                "n_distractors": len(distractors),
            },
        )
        parse_gnd(read_gnd(tmp, name), str(tmp / f"gnd_{name}.json"))  # read back and check
    logger.info(
        "built %s: %d database images, %d queries, %d distractors",
        out_root / name,
        len(imlist),
        len(records),
        len(distractors),
    )
    return out_root / name

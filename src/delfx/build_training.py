"""Stage: a tuple-training set from folders of views of the same place.

Input: ``GROUPS_DIR/<group>/*.jpg`` (two or more views per folder), the same layout that
``delfx data build-groups`` reads. A group's ``labels.json`` and ``H_*.txt`` homography sidecars are
ignored; any other non-image file is an error. Each group becomes one cluster, and every ordered
pair ``(a, b)``, ``a != b``, of its views becomes a query-positive pair. Groups (not images) are
split into train and val by a seeded shuffle, so no place is in both splits.

Output: ``<out>/<name>/ims/<group>/<view>.jpg`` and ``<out>/<name>/training_<name>.json``::

    {"groups": [group names; cluster id c is groups[c]],
     "train": {"images": ["<group>/<view>.jpg", ...], "cluster": [...],
               "qidxs": [...], "pidxs": [...]},
     "val": {...} or null}

Read it back with :func:`delfx.datasets.training.load_training`. The set is built in a temporary
folder and renamed at the end, so a failure leaves the output root as it was.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from delfx.build_groups import safe_name
from delfx.datasets.training import load_training_file
from delfx.errors import InputError
from delfx.io import atomic
from delfx.io.images import jpeg_bytes_for, list_photos

logger = logging.getLogger(__name__)

#: Fewest groups in a split: negatives must come from another cluster.
MIN_GROUPS_PER_SPLIT = 2


def _is_sidecar(name: str) -> bool:
    return name == "labels.json" or (name.startswith("H_") and name.endswith(".txt"))


def _read_groups(groups_dir: Path) -> list[tuple[str, list[Path]]]:
    """``(group name, sorted views)`` for each group folder, checked for at least two views."""
    if not groups_dir.is_dir():
        raise InputError(f"{groups_dir}: groups folder not found")
    folders = sorted(p for p in groups_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"{groups_dir}: no group folders inside")
    groups = []
    for folder in folders:
        sidecars = [p.name for p in folder.iterdir() if _is_sidecar(p.name)]
        views = list_photos(folder, ignore=sidecars)
        if not views:
            raise InputError(f"{folder}: empty group folder (no photos)")
        if len(views) < 2:
            raise InputError(f"{folder}: {len(views)} view(s); a group needs at least 2")
        groups.append((folder.name, views))
    return groups


def split_groups(n_groups: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split group indices into train and val by a seeded shuffle.

    Val gets ``round(val_fraction * n_groups)`` groups, but at least :data:`MIN_GROUPS_PER_SPLIT`
    and never so many that train has fewer than that. With ``val_fraction == 0``, or too few
    groups for two valid splits, val is empty.

    Returns:
        ``(train, val)``: sorted group indices.

    Raises:
        InputError: ``val_fraction`` outside ``[0, 1)``, or fewer than 2 groups in all.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction {val_fraction}: must be in [0, 1)")
    if n_groups < MIN_GROUPS_PER_SPLIT:
        raise InputError(
            f"{n_groups} group(s): training needs at least {MIN_GROUPS_PER_SPLIT} "
            "(negatives come from other groups)"
        )
    n_val = 0
    if val_fraction > 0:
        n_val = max(MIN_GROUPS_PER_SPLIT, round(val_fraction * n_groups))
        n_val = min(n_val, n_groups - MIN_GROUPS_PER_SPLIT)
        if n_val < MIN_GROUPS_PER_SPLIT:
            logger.warning(
                "%d groups are too few for a validation split of %d; no val split",
                n_groups,
                MIN_GROUPS_PER_SPLIT,
            )
            n_val = 0
    order = np.random.default_rng(seed).permutation(n_groups)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _split_record(
    groups: list[tuple[str, list[Path]]], members: list[int], names: dict[Path, str]
) -> dict[str, list[Any]]:
    """JSON record of one split: images, cluster ids (global group index) and all ordered pairs."""
    rec: dict[str, list[Any]] = {"images": [], "cluster": [], "qidxs": [], "pidxs": []}
    for g in members:
        start = len(rec["images"])
        views = groups[g][1]
        rec["images"].extend(names[v] for v in views)
        rec["cluster"].extend([g] * len(views))
        for a in range(len(views)):
            for b in range(len(views)):
                if a != b:
                    rec["qidxs"].append(start + a)
                    rec["pidxs"].append(start + b)
    return rec


def main(
    groups_dir: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    name: str,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build the training set ``out_root/name`` from groups of views.

    Args:
        groups_dir: one folder of views per place.
        out_root: datasets root to write into.
        name: training set name (folder and ``training_<name>.json``).
        val_fraction: share of groups held out for validation (see :func:`split_groups`).
        seed: seed of the group split; the same seed gives the same output.
        overwrite: replace an existing ``out_root/name``.

    Returns:
        The training set folder.

    Raises:
        InputError: a group with fewer than 2 views, an empty folder, a non-image or truncated
            photo (the message names it); the output root is then left as it was.
    """
    groups_dir, out_root = Path(groups_dir), Path(out_root)
    if not name or safe_name(name) != name:
        raise InputError(f"name '{name}': use letters, digits, '_', '-' and '.' only")
    groups = _read_groups(groups_dir)
    names: dict[Path, str] = {}
    seen: dict[str, Path] = {}
    for group, views in groups:
        for view in views:
            rel = f"{safe_name(group)}/{safe_name(view.stem)}.jpg"
            if rel in seen:
                raise InputError(f"{view}: maps to image name '{rel}', as does {seen[rel]}")
            names[view], seen[rel] = rel, view
    train, val = split_groups(len(groups), val_fraction, seed)
    record = {
        "groups": [g for g, _ in groups],
        "train": _split_record(groups, train, names),
        "val": _split_record(groups, val, names) if val else None,
    }
    with atomic.staging_dir(out_root / name, overwrite=overwrite) as tmp:
        for view, rel in names.items():
            atomic.write_bytes(tmp / "ims" / rel, jpeg_bytes_for(view))
        atomic.write_json(tmp / f"training_{name}.json", record)
        load_training_file(tmp / f"training_{name}.json", tmp / "ims", name)  # read back
    logger.info(
        "built %s: %d groups (%d train, %d val), %d images, %d train pairs",
        out_root / name,
        len(groups),
        len(train),
        len(val),
        len(names),
        len(record["train"]["qidxs"]),
    )
    return out_root / name

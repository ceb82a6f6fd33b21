"""A retrieval dataset in the revisited Oxford/Paris layout.

Layout::

    <root>/<name>/jpg/<image>.jpg       database and query images
    <root>/<name>/gnd_<name>.pkl        ground truth (field-facts §2); delfx-built sets add .json

Query ``q`` is the image ``qimlist[q]`` cropped to ``gnd[q]["bbx"]``. Indices in ``easy``,
``hard``, ``junk`` and ``ok`` point into ``imlist``.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from delfx.datasets.gnd_io import read_gnd
from delfx.errors import InputError
from delfx.io.images import crop_box, read_image

logger = logging.getLogger(__name__)

#: Protocols of the revisited datasets, and of the old Oxford 5k / Paris 6k ground truth.
REVISITED_PROTOCOLS = ("easy", "medium", "hard")
OLD_PROTOCOLS = ("old",)


@dataclass(frozen=True)
class QueryTruth:
    """Ground truth of one query. Index arrays are sorted ``int64`` into the database list."""

    bbx: tuple[float, float, float, float] | None
    easy: np.ndarray
    hard: np.ndarray
    junk: np.ndarray
    ok: np.ndarray


def _index_array(value: Any, field: str, n_db: int, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{where}: field '{field}' is not a list of indices") from None
    if arr.size and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
        raise InputError(f"{where}: field '{field}' holds non-integer indices")
    idx = arr.astype(np.int64)
    bad = idx[(idx < 0) | (idx >= n_db)]
    if bad.size:
        raise InputError(f"{where}: field '{field}' index {int(bad[0])} out of range [0, {n_db})")
    uniq, counts = np.unique(idx, return_counts=True)
    if np.any(counts > 1):
        raise InputError(f"{where}: field '{field}' repeats index {int(uniq[counts > 1][0])}")
    return uniq


def image_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an image inside a dataset's ``jpg`` folder, or None when it can.

    A name is a relative path with ``/`` separators (sub-folders are allowed) that stays inside
    the folder once normalised: not empty, not absolute, no ``..`` leading out, no NUL and no
    ``\\`` (a Windows separator).
    """
    if not name or "\x00" in name:
        return "empty or holds a NUL"
    if "\\" in name:
        return "holds a backslash"
    if PurePosixPath(name).is_absolute():
        return "is an absolute path"
    norm = posixpath.normpath(name)
    if norm == "." or norm == ".." or norm.startswith("../"):
        return "leads outside the dataset's jpg folder"
    return None


def _check_names(names: list[str], field: str, source: str) -> None:
    for i, name in enumerate(names):
        problem = image_name_problem(name)
        if problem is not None:
            raise InputError(f"{source}: field '{field}' [{i}] image name {name!r} {problem}")


def parse_gnd(raw: Any, source: str) -> tuple[list[str], list[str], list[QueryTruth]]:
    """Validate a raw ground-truth dict and convert it to typed query records.

    Checks: the three keys are present, every image name stays inside the dataset's ``jpg``
    folder (:func:`image_name_problem`), ``gnd`` has one entry per query, every index list holds
    in-range integers without repeats, boxes have four finite values with ``x1 < x2, y1 < y2``.

    Args:
        raw: the loaded ``gnd_<name>`` content.
        source: the file name, used in error messages.

    Returns:
        ``(imlist, qimlist, queries)``.

    Raises:
        InputError: one line naming ``source`` and the field at fault.
    """
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a dict with imlist, qimlist and gnd")
    for key in ("imlist", "qimlist", "gnd"):
        if key not in raw:
            raise InputError(f"{source}: missing key '{key}'")
        if isinstance(raw[key], (str, bytes, dict)) or not hasattr(raw[key], "__len__"):
            raise InputError(
                f"{source}: field '{key}' must be a list, got {type(raw[key]).__name__}"
            )
    imlist = [str(x) for x in raw["imlist"]]
    qimlist = [str(x) for x in raw["qimlist"]]
    _check_names(imlist, "imlist", source)
    _check_names(qimlist, "qimlist", source)
    entries = list(raw["gnd"])
    if len(entries) != len(qimlist):
        raise InputError(
            f"{source}: gnd has {len(entries)} entries but qimlist has {len(qimlist)} queries"
        )
    if len(set(imlist)) != len(imlist):
        raise InputError(f"{source}: imlist repeats an image name")
    n_db = len(imlist)
    queries = []
    for q, entry in enumerate(entries):
        where = f"{source}: gnd[{q}] ({qimlist[q]})"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a dict")
        if not any(k in entry for k in ("easy", "hard", "ok")):
            raise InputError(f"{where}: needs 'easy'/'hard'/'junk' or 'ok'/'junk' lists")
        lists = {
            k: _index_array(entry.get(k, ()), k, n_db, where)
            for k in ("easy", "hard", "junk", "ok")
        }
        for a, b in (("easy", "hard"), ("easy", "junk"), ("hard", "junk"), ("ok", "junk")):
            common = np.intersect1d(lists[a], lists[b])
            if common.size:
                logger.warning("%s: index %d is in both '%s' and '%s'", where, common[0], a, b)
        queries.append(QueryTruth(bbx=_parse_bbx(entry.get("bbx"), where), **lists))
    return imlist, qimlist, queries


def _parse_bbx(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        box = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{where}: field 'bbx' is not four numbers") from None
    if box.size != 4 or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"{where}: field 'bbx' must be [x1, y1, x2, y2] with x1<x2, y1<y2")
    return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


class RetrievalDataset:
    """Image paths, query boxes and ground truth of one dataset.

    Args:
        root: the folder that holds ``<name>/``.
        name: dataset name, e.g. ``roxford5k``.
        check_files: verify that every query image exists (database files are checked lazily).
    """

    def __init__(self, root: str | os.PathLike[str], name: str, *, check_files: bool = True):
        self.root = Path(root)
        self.name = name
        self.folder = self.root / name
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: dataset folder not found")
        source = str(self.folder / f"gnd_{name}.pkl")
        if (self.folder / f"gnd_{name}.json").exists():
            source = str(self.folder / f"gnd_{name}.json")
        self.images, self.queries, self.truth = parse_gnd(read_gnd(self.folder, name), source)
        if check_files:
            for qname in self.queries:
                path = self.image_path(qname)
                if not path.is_file():
                    raise InputError(f"{path}: query image listed in {source} is missing")

    # -- paths -----------------------------------------------------------------------------
    def image_path(self, image_name: str) -> Path:
        """Path of an image given its name without ``.jpg``; a name that would lead outside
        the ``jpg`` folder is refused (:class:`InputError`)."""
        problem = image_name_problem(image_name)
        if problem is not None:
            raise InputError(f"{self.folder}: image name {image_name!r} {problem}")
        return self.folder / "jpg" / f"{image_name}.jpg"

    @property
    def db_paths(self) -> list[Path]:
        """Database image paths, in ``imlist`` order."""
        return [self.image_path(n) for n in self.images]

    @property
    def query_paths(self) -> list[Path]:
        """Query image paths (uncropped), in ``qimlist`` order."""
        return [self.image_path(n) for n in self.queries]

    @property
    def is_revisited(self) -> bool:
        """True for easy/hard/junk ground truth, False for the old ok/junk protocol."""
        return not any(t.ok.size for t in self.truth) or any(
            t.easy.size or t.hard.size for t in self.truth
        )

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocol names this dataset is evaluated under."""
        return REVISITED_PROTOCOLS if self.is_revisited else OLD_PROTOCOLS

    def query_bbox(self, q: int) -> tuple[float, float, float, float] | None:
        """Box ``[x1, y1, x2, y2]`` of query ``q``, or None when the whole image is the query."""
        return self.truth[q].bbx

    def load_query(self, q: int) -> np.ndarray:
        """Query ``q`` as an ``H x W x 3`` ``uint8`` RGB array, cropped to its box."""
        image = read_image(self.image_path(self.queries[q]))
        box = self.truth[q].bbx
        return image if box is None else crop_box(image, box)

    def load_image(self, i: int) -> np.ndarray:
        """Database image ``i`` as an ``H x W x 3`` ``uint8`` RGB array."""
        return read_image(self.image_path(self.images[i]))

    # -- ground truth ----------------------------------------------------------------------
    def protocol_sets(self, protocol: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Positive and junk index arrays per query under a protocol (field-facts §2)."""
        return protocol_sets(self.truth, protocol)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"RetrievalDataset({self.name!r}, {len(self.images)} images, "
            f"{len(self.queries)} queries, root={str(self.root)!r})"
        )


def protocol_sets(
    truth: Sequence[QueryTruth], protocol: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positives and junk of every query under ``protocol``.

    - easy: positives = easy; junk = junk ∪ hard.
    - medium: positives = easy ∪ hard; junk = junk.
    - hard: positives = hard; junk = junk ∪ easy.
    - old: positives = ok; junk = junk.

    Returns:
        One ``(positives, junk)`` pair of sorted ``int64`` arrays per query.
    """
    out = []
    for t in truth:
        if protocol == "easy":
            pair = (t.easy, np.union1d(t.junk, t.hard))
        elif protocol == "medium":
            pair = (np.union1d(t.easy, t.hard), t.junk)
        elif protocol == "hard":
            pair = (t.hard, np.union1d(t.junk, t.easy))
        elif protocol == "old":
            pair = (t.ok, t.junk)
        else:
            raise InputError(f"protocol '{protocol}': expected easy, medium, hard or old")
        out.append((pair[0].astype(np.int64), pair[1].astype(np.int64)))
    return out


def unrelated_images(dataset: RetrievalDataset) -> list[int]:
    """Database images that no query relates to: in no query's easy, hard, junk or ok list.

    They are the dataset's distractors. Training a codebook on them keeps every query's
    positives (and near-positives) out of training, so the vocabulary is never fitted to the
    landmarks being searched for.

    Returns:
        Sorted database indices.
    """
    related = np.zeros(len(dataset.images), dtype=bool)
    for t in dataset.truth:
        for arr in (t.easy, t.hard, t.junk, t.ok):
            related[arr] = True
    return np.flatnonzero(~related).tolist()


#: Datasets whose codebook is conventionally trained on the other one.
COMPANIONS = {
    "roxford5k": "rparis6k",
    "rparis6k": "roxford5k",
    "oxford5k": "paris6k",
    "paris6k": "oxford5k",
}

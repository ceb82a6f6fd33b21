"""Training sets of query-positive pairs for tuple training (cirtorch convention).

A training split is a list of images, the cluster (3D model or landmark) of each image, and aligned
``qidxs`` / ``pidxs``: pair ``i`` says that image ``pidxs[i]`` is a positive of query image
``qidxs[i]``. Hard negatives are mined from the other clusters, so a positive must share its
query's cluster and a split needs at least two clusters.

Two sources are read:

- the field's ``retrieval-SfM-120k`` (field-facts §3): ``<root>/retrieval-SfM-120k/
  retrieval-SfM-120k.pkl``, a dict ``{"train": {...}, "val": {...}}`` with ``cids``, ``cluster``,
  ``qidxs`` and ``pidxs``; image ``cid`` lives at ``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``
  (no extension). It is read with the restricted unpickler of :mod:`delfx.datasets.gnd_io`.
- sets made by ``delfx data build-training``: ``<root>/<name>/training_<name>.json`` with the same
  structure, ``images`` (names relative to ``<root>/<name>/ims/``) in place of ``cids``, and
  ``"val": null`` when there is no validation split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from delfx.datasets.gnd_io import load_json, load_pickle_safely
from delfx.errors import InputError

SFM120K = "retrieval-SfM-120k"
_PAIR_FIELDS = ("cluster", "qidxs", "pidxs")


@dataclass(frozen=True)
class TrainingSplit:
    """One split (train or val) of a training set.

    Attributes:
        images: path of each image, ``N`` entries.
        cluster: cluster id of each image, int64 ``(N,)``.
        qidxs: query image index of each pair, int64 ``(P,)``.
        pidxs: positive image index of each pair, int64 ``(P,)``; same cluster as its query.
    """

    images: tuple[Path, ...]
    cluster: np.ndarray
    qidxs: np.ndarray
    pidxs: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_pairs(self) -> int:
        """Number of query-positive pairs ``P``."""
        return int(self.qidxs.shape[0])


@dataclass(frozen=True)
class TrainingSet:
    """A named training set: a train split and an optional validation split."""

    name: str
    train: TrainingSplit
    val: TrainingSplit | None


def sfm120k_image_path(ims_dir: str | os.PathLike[str], cid: str) -> Path:
    """Where retrieval-SfM-120k keeps image ``cid``.

    That is ``<ims_dir>/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``, with no extension.
    """
    return Path(ims_dir) / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid


def _int_array(value: Any, where: str) -> np.ndarray:
    """A 1-D int64 array from a list or array of integers; ``where`` names the field in errors."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: not a list of integers ({exc})") from None
    if arr.ndim != 1:
        raise InputError(f"{where}: expected a flat list of integers, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise InputError(f"{where}: expected integers, got {arr.dtype} values")


def _check_split(
    raw: Any, names_key: str, to_path: Callable[[str, str], Path], path: Path, split: str
) -> TrainingSplit:
    """Validate one split dict and build its :class:`TrainingSplit`."""
    if not isinstance(raw, dict):
        raise InputError(f"{path}: field '{split}': expected a dict, got {type(raw).__name__}")
    for key in (names_key, *_PAIR_FIELDS):
        if key not in raw:
            raise InputError(f"{path}: field '{split}.{key}' is missing")
    names = raw[names_key]
    if isinstance(names, str | bytes) or not isinstance(names, Sequence | np.ndarray):
        raise InputError(f"{path}: field '{split}.{names_key}': expected a list of names")
    where = f"{path}: field '{split}.{names_key}'"
    images = tuple(to_path(str(n), f"{where}[{i}]") for i, n in enumerate(names))
    n = len(images)
    arrays = {k: _int_array(raw[k], f"{path}: field '{split}.{k}'") for k in _PAIR_FIELDS}
    cluster, qidxs, pidxs = arrays["cluster"], arrays["qidxs"], arrays["pidxs"]
    if cluster.shape[0] != n:
        raise InputError(
            f"{path}: field '{split}.cluster' has {cluster.shape[0]} entries "
            f"but '{split}.{names_key}' has {n}"
        )
    if qidxs.shape[0] != pidxs.shape[0]:
        raise InputError(
            f"{path}: fields '{split}.qidxs' and '{split}.pidxs' differ in length "
            f"({qidxs.shape[0]} vs {pidxs.shape[0]}): every query needs exactly one positive"
        )
    if qidxs.shape[0] == 0:
        raise InputError(f"{path}: field '{split}.qidxs' is empty (no query-positive pairs)")
    for key, arr in (("qidxs", qidxs), ("pidxs", pidxs)):
        bad = np.flatnonzero((arr < 0) | (arr >= n))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{path}: field '{split}.{key}[{i}]' = {int(arr[i])} is out of range "
                f"[0, {n}) ({bad.size} bad entries)"
            )
    wrong = np.flatnonzero(cluster[qidxs] != cluster[pidxs])
    if wrong.size:
        i = int(wrong[0])
        q, p = int(qidxs[i]), int(pidxs[i])
        raise InputError(
            f"{path}: split '{split}' pair {i}: positive {p} is in cluster {int(cluster[p])} "
            f"but its query {q} is in cluster {int(cluster[q])} ({wrong.size} such pairs)"
        )
    n_clusters = np.unique(cluster).size
    if n_clusters < 2:
        raise InputError(
            f"{path}: field '{split}.cluster': {n_clusters} cluster(s); negatives must come from "
            "another cluster, so a split needs at least 2"
        )
    return TrainingSplit(images, cluster, qidxs, pidxs)


def _load_dict(path: Path, data: Any, splits: Sequence[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict of splits, got {type(data).__name__}")
    for split in splits:
        if split not in data:
            raise InputError(f"{path}: split '{split}' is missing")
    return data


def load_sfm120k(root: str | os.PathLike[str]) -> TrainingSet:
    """Read the retrieval-SfM-120k db pickle under ``root`` (the datasets root).

    Args:
        root: folder holding ``retrieval-SfM-120k/``.

    Returns:
        The train and val splits, with image paths under ``retrieval-SfM-120k/ims/``.

    Raises:
        InputError: a missing or malformed file, a missing field, inconsistent lengths, an index
            out of range, a positive outside its query's cluster, or a split with one cluster.
    """
    folder = Path(root) / SFM120K
    path = folder / f"{SFM120K}.pkl"
    data = _load_dict(path, load_pickle_safely(path), ("train", "val"))
    ims = folder / "ims"

    def to_path(cid: str, where: str) -> Path:
        if len(cid) < 6 or "/" in cid or cid in (".", ".."):
            raise InputError(f"{where}: '{cid}' is not an image id")
        return sfm120k_image_path(ims, cid)

    train = _check_split(data["train"], "cids", to_path, path, "train")
    val = _check_split(data["val"], "cids", to_path, path, "val")
    return TrainingSet(SFM120K, train, val)


def load_training_json(root: str | os.PathLike[str], name: str) -> TrainingSet:
    """Read ``<root>/<name>/training_<name>.json`` as written by ``delfx data build-training``.

    Args:
        root: datasets root.
        name: training set name.

    Returns:
        The train split and the val split (``None`` when the file has ``"val": null``).

    Raises:
        InputError: as :func:`load_sfm120k`, and for image names that leave ``ims/``.
    """
    folder = Path(root) / name
    return load_training_file(folder / f"training_{name}.json", folder / "ims", name)


def load_training_file(
    path: str | os.PathLike[str], ims_dir: str | os.PathLike[str], name: str
) -> TrainingSet:
    """Read a training JSON file whose image names are relative to ``ims_dir``.

    See :func:`load_training_json`; this form reads a file that is not (yet) in its final place.
    """
    path, ims = Path(path), Path(ims_dir)
    data = _load_dict(path, load_json(path), ("train", "val"))

    def to_path(rel: str, where: str) -> Path:
        parts = PurePosixPath(rel).parts
        if not parts or rel.startswith("/") or ".." in parts or "\\" in rel:
            raise InputError(f"{where}: '{rel}' is not a relative image name")
        return ims.joinpath(*parts)

    train = _check_split(data["train"], "images", to_path, path, "train")
    val = None if data["val"] is None else _check_split(data["val"], "images", to_path, path, "val")
    return TrainingSet(name, train, val)


def load_training(root: str | os.PathLike[str], name: str) -> TrainingSet:
    """Read a training set by name: ``retrieval-SfM-120k`` from its pickle, others from JSON."""
    if name == SFM120K:
        return load_sfm120k(root)
    return load_training_json(root, name)


def load_whitening_pairs(
    root: str | os.PathLike[str],
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Read ``retrieval-SfM-120k-whiten.pkl`` (pairs for learning the Lw whitening).

    Args:
        root: folder holding ``retrieval-SfM-120k/``.

    Returns:
        ``(paths, qidxs, pidxs)``: ``N`` image paths and two aligned int64 ``(P,)`` index arrays.

    Raises:
        InputError: a missing field, lengths that differ, or an index out of range.
    """
    folder = Path(root) / SFM120K
    path = folder / f"{SFM120K}-whiten.pkl"
    data = load_pickle_safely(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict, got {type(data).__name__}")
    for key in ("cids", "qidxs", "pidxs"):
        if key not in data:
            raise InputError(f"{path}: field '{key}' is missing")
    cids = [str(c) for c in data["cids"]]
    for i, cid in enumerate(cids):
        if len(cid) < 6 or "/" in cid:
            raise InputError(f"{path}: field 'cids[{i}]': '{cid}' is not an image id")
    paths = [sfm120k_image_path(folder / "ims", c) for c in cids]
    qidxs = _int_array(data["qidxs"], f"{path}: field 'qidxs'")
    pidxs = _int_array(data["pidxs"], f"{path}: field 'pidxs'")
    if qidxs.shape[0] != pidxs.shape[0]:
        raise InputError(
            f"{path}: fields 'qidxs' and 'pidxs' differ in length "
            f"({qidxs.shape[0]} vs {pidxs.shape[0]})"
        )
    for key, arr in (("qidxs", qidxs), ("pidxs", pidxs)):
        bad = np.flatnonzero((arr < 0) | (arr >= len(paths)))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{path}: field '{key}[{i}]' = {int(arr[i])} is out of range [0, {len(paths)})"
            )
    return paths, qidxs, pidxs

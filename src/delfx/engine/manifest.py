"""The manifest of an engine folder: its spec and every artefact, committed atomically.

Layout of a collection folder::

    DIR/collection.json        this manifest (replaced atomically, last, by every writer)
    DIR/.lock                  taken by a writer (one at a time)
    DIR/features-NNNNNN.h5     feature shards (HDF5, one per create / add / compact)
    DIR/global-NNNNNN.npz      the global descriptors of a shard (hybrid specs)
    DIR/index/model-*.npz      the trained codebook (written once, by create)
    DIR/index/seg-*.npz        inverted-file segments, one per batch of added images

The manifest is the only source of truth: a reader opens the files it names and nothing else,
so a writer killed at any point leaves the collection as the last commit described it. The
files of an unfinished writer are named like the collection's own, are not in the manifest, and
are removed by the next writer. Files of any other name are never touched.

Fields: ``format``, ``format_version``, ``spec`` (:mod:`delfx.engine.spec`), ``photos`` (the
folder create read), ``created``/``updated`` (UTC ISO times), ``shards`` (list of
``{"features", "global", "n"}``), ``next_shard``, ``index`` (kind, config, meta, meta_empty,
model, segments, n_images, codebook source), ``removed`` (tombstoned image ids), ``timings``.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from delfx.datasets.gnd_io import load_json
from delfx.errors import InputError
from delfx.index.storage import IndexDir, own_name
from delfx.io import atomic

MANIFEST = "collection.json"
FORMAT = "delfx-collection"
FORMAT_VERSION = 1
LOCK = ".lock"
INDEX = "index"
_SHARD = re.compile(r"(?:features-\d{6}\.h5|global-\d{6}\.npz)")
_SHARD_TMP = re.compile(r"\.(?:features-\d{6}\.h5|global-\d{6}\.npz|collection\.json)\..+\.tmp")
#: The plan and done markers of a sharded create or add (delfx.cluster.plan), gone after commit.
_WORK = re.compile(r"\.?(?:shards\.json|features-\d{6}\.done)(?:\..+\.tmp)?")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def shard_names(number: int) -> tuple[str, str]:
    """``(features file, global file)`` of shard ``number``."""
    return f"features-{number:06d}.h5", f"global-{number:06d}.npz"


def stamp(folder: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(mtime, inode)`` of the manifest, which every commit replaces; None when absent."""
    try:
        st = (Path(folder) / MANIFEST).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino


def is_collection(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds a committed collection manifest."""
    return (Path(path) / MANIFEST).is_file()


def _plain(value: Any, field: str, where: Path, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or "/" in value or "\\" in value or value in ("", ".", ".."):
        raise InputError(f"{where}: field '{field}' must be a plain file name, got {value!r}")
    if pattern is not None and not pattern.fullmatch(value):
        raise InputError(f"{where}: field '{field}' = {value!r} is not a collection file name")
    return value


def read(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The committed manifest of a collection folder, checked.

    Raises:
        InputError: one line naming the manifest and the field: missing, another format or
            version, shard entries that are not the collection's own file names, ``removed``
            ids outside the index.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise InputError(
            f"{Path(folder)}: no collection here (create one with "
            "'delfx index create DIR --images PHOTOS')"
        )
    meta = load_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path}: not a delfx collection manifest")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format version {meta.get('format_version')!r} is not supported")
    shards = meta.get("shards")
    if not isinstance(shards, list):
        raise InputError(f"{path}: field 'shards' must be a list")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            raise InputError(f"{path}: field 'shards[{i}]' must be an object")
        _plain(shard.get("features"), f"shards[{i}].features", path, _SHARD)
        if shard.get("global") is not None:
            _plain(shard["global"], f"shards[{i}].global", path, _SHARD)
    index = meta.get("index")
    if not isinstance(index, dict):
        raise InputError(f"{path}: field 'index' must be an object")
    n = index.get("n_images")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"{path}: field 'index.n_images' must be an int >= 0, got {n!r}")
    removed = meta.get("removed")
    if not isinstance(removed, list) or not all(
        isinstance(r, int) and not isinstance(r, bool) and 0 <= r < n for r in removed
    ):
        raise InputError(f"{path}: field 'removed' must list image ids in 0..{n - 1}")
    # the index's files: plain names inside DIR/index (IndexDir checks links and escapes)
    store = IndexDir(Path(folder) / INDEX)
    store.file("index.model", index.get("model"))
    segs = index.get("segments")
    if not isinstance(segs, list):
        raise InputError(f"{path}: field 'index.segments' must be a list of file names")
    for i, s in enumerate(segs):
        store.file(f"index.segments[{i}]", s)
    if index.get("stats") is not None:
        store.file("index.stats", index["stats"])
    return meta


def live_ids(names: Sequence[str], removed: Iterable[int]) -> dict[str, int]:
    """Name -> image id of every image not removed (a replaced name maps to its newest id)."""
    gone = set(removed)
    return {n: i for i, n in enumerate(names) if i not in gone}


def write(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Commit a manifest (atomic replace): the new state becomes what readers open."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "updated": now()}
    return atomic.write_json(Path(folder) / MANIFEST, meta)


def referenced(manifest: dict[str, Any]) -> tuple[set[str], set[str]]:
    """``(top-level files, index files)`` a manifest names."""
    top = {MANIFEST, LOCK}
    for shard in manifest["shards"]:
        top.add(shard["features"])
        if shard.get("global"):
            top.add(shard["global"])
    index = manifest["index"]
    return top, {
        LOCK,
        index["model"],
        *index["segments"],
        *([index["stats"]] if index.get("stats") else []),
    }


def own_top_file(name: str) -> bool:
    """True for a file name a collection writes at its top level (other than the manifest)."""
    return name == LOCK or any(p.fullmatch(name) for p in (_SHARD, _SHARD_TMP, _WORK))


def unused_files(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> list[Path]:
    """Files of the collection's own naming patterns that ``manifest`` does not name."""
    folder = Path(folder)
    top, idx = referenced(manifest)
    out = [
        p
        for p in folder.iterdir()
        if own_top_file(p.name) and p.name not in top and p.is_file() and not p.is_symlink()
    ]
    index_dir = folder / INDEX
    if index_dir.is_dir():
        out += [
            p
            for p in index_dir.iterdir()
            if own_name(p.name) and p.name not in idx and p.is_file() and not p.is_symlink()
        ]
    return sorted(out)

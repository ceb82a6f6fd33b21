"""On-disk index folders: a JSON manifest, model arrays and inverted-file segments in npz.

Layout::

    <dir>/index.json          manifest: format version, kind, config, n_images, segment files
    <dir>/model-<uid>.npz     trained model arrays (codebook, tree, HE projection, ...)
    <dir>/seg-<uid>.npz       one inverted-file segment and the names of its images
    <dir>/stats-<uid>.npz     statistics derived from all segments (idf, norms), for the
                              segments it names: an open does not recompute them
    <dir>/.lock               taken by a writer (one writer at a time)

Nothing is pickled (``allow_pickle=False`` both ways). Segments are memory-mapped when read
(:mod:`delfx.io.npzmap`): opening an index reads headers, and a query pages in the lists it
visits. Every file is written under a temporary
name and renamed; the manifest is replaced last. A build or an append that is killed therefore
leaves the previous manifest, and the index it describes, intact; readers only ever open files
that a committed manifest names, so they can read while a writer adds segments.

A manifest is checked whenever it is read: its ``model`` and ``segments`` entries must be plain
file names that resolve (symlinks followed) inside the folder, the segments unique. An index only
ever deletes files it wrote itself: those its previous manifest names and leftovers of killed
writers under its own naming pattern. Other files in the folder are never touched, and a new
index is never built in a non-empty folder that is not an index.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import re
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from delfx.datasets.gnd_io import load_json
from delfx.errors import InputError
from delfx.index.invfile import Segment
from delfx.io import atomic
from delfx.io.npzmap import map_npz

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "index.json"
MODEL = "model.npz"
LOCK = ".lock"
_PAYLOAD = "payload__"
# names this module writes: model-/seg- files and the temporary files of atomic.write_bytes
_OWN_FILE = re.compile(r"(?:model|seg|stats)-[0-9a-f]{12}\.npz")
_OWN_TMP = re.compile(r"\.(?:(?:model|seg|stats)-[0-9a-f]{12}\.npz|index\.json)\.[a-z0-9_]+\.tmp")


def save_arrays(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write named arrays to an ``.npz`` file atomically (no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic.write_bytes(path, buf.getvalue())


def load_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (object arrays are refused)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(f"{path}: index file not found") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: unreadable index file ({exc})") from None


def own_name(name: str) -> bool:
    """True for a name that an index writes itself, other than ``index.json``.

    These are the lock file, ``model-<uid>.npz``, ``seg-<uid>.npz``, ``stats-<uid>.npz`` and the
    temporary files they and the manifest are written under.
    """
    return name == LOCK or bool(_OWN_FILE.fullmatch(name) or _OWN_TMP.fullmatch(name))


def _plain_name(value: str) -> bool:
    bad = ("/", "\\", "\0")
    return value not in ("", ".", "..") and not any(c in value for c in bad)


class IndexDir:
    """An index folder (see the module docstring).

    Args:
        path: the folder; created on the first commit.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def exists(self) -> bool:
        """True when a committed manifest is present."""
        return (self.path / MANIFEST).is_file()

    def file(self, field: str, name: Any) -> Path:
        """The path of a manifest entry, which must be a plain file name inside the folder.

        Args:
            field: the manifest field the entry comes from (named in errors).
            name: the entry.

        Raises:
            InputError: ``name`` is not a string, not a plain file name (a path, ``.``, ``..``, an
                absolute path, a NUL), or resolves (following symlinks) outside the folder.
        """
        where = self.path / MANIFEST
        if not isinstance(name, str):
            raise InputError(f"{where}: field '{field}' must be a file name, got {name!r}")
        if not _plain_name(name) or os.path.isabs(name):
            raise InputError(
                f"{where}: field '{field}' = {name!r} is not a plain file name in the index folder"
            )
        path = self.path / name
        try:
            root = self.path.resolve()
            target = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise InputError(
                f"{where}: field '{field}' = {name!r} cannot be resolved ({exc})"
            ) from None
        if target == root or not target.is_relative_to(root):
            raise InputError(
                f"{where}: field '{field}' = {name!r} resolves to {target}, "
                "outside the index folder"
            )
        return path

    def manifest(self) -> dict[str, Any]:
        """The committed manifest, checked.

        Raises:
            InputError: naming ``index.json`` and the field: the file is missing or from another
                format version, ``model`` is not a file name in the folder, ``segments`` is not a
                list of unique such names, or ``n_images`` (where present) is not an int >= 0.
        """
        path = self.path / MANIFEST
        if not path.is_file():
            raise InputError(f"{path}: no index here (build one with 'delfx index build')")
        meta = load_json(path)
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{path}: not a delfx index of format version {FORMAT_VERSION}")
        if "model" not in meta:
            raise InputError(f"{path}: field 'model' is missing")
        self.file("model", meta["model"])
        segments = meta.get("segments")
        if not isinstance(segments, list):
            raise InputError(f"{path}: field 'segments' must be a list of file names")
        seen: set[str] = set()
        for i, name in enumerate(segments):
            self.file(f"segments[{i}]", name)
            if name in seen:
                raise InputError(f"{path}: field 'segments' lists {name!r} twice")
            seen.add(name)
        if meta.get("stats") is not None:
            self.file("stats", meta["stats"])
        if "n_images" in meta:
            n = meta["n_images"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise InputError(f"{path}: field 'n_images' must be an int >= 0, got {n!r}")
        return meta

    @contextlib.contextmanager
    def writing(self) -> Iterator[IndexDir]:
        """Hold the writer lock; a second writer fails at once with a clear error.

        A writer that fails (a full disk, a bad input) removes the files it wrote before the
        lock is released: what no committed manifest names (see :meth:`uncommitted`).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK, "a+") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(f"{self.path}: another process is writing this index") from None
            try:
                yield self
            except BaseException:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    for path in self.uncommitted():
                        path.unlink(missing_ok=True)
                raise
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def write_model(self, arrays: Mapping[str, np.ndarray]) -> str:
        """Write model arrays under a fresh name; returns the file name for the manifest."""
        name = f"model-{uuid.uuid4().hex[:12]}.npz"
        save_arrays(self.path / name, arrays)
        return name

    def read_model(self, name: str) -> dict[str, np.ndarray]:
        """Read the model arrays a manifest names."""
        return load_arrays(self.file("model", name))

    def write_segment(self, segment: Segment, names: list[str], first_id: int) -> str:
        """Write one segment with the names of its images (ids ``first_id...``).

        Returns:
            The segment's file name, to list in the manifest.
        """
        fname = f"seg-{uuid.uuid4().hex[:12]}.npz"
        arrays: dict[str, np.ndarray] = {
            "offsets": segment.offsets,
            "image_ids": segment.image_ids,
            "names": np.asarray(names, dtype=np.str_),
            "first_id": np.asarray(first_id, dtype=np.int64),
        }
        arrays.update({_PAYLOAD + k: v for k, v in segment.payload.items()})
        save_arrays(self.path / fname, arrays)
        return fname

    def read_segment(self, fname: str, *, mmap: bool = True) -> tuple[Segment, list[str], int]:
        """Read a segment file: ``(segment, image names, first image id)``.

        With ``mmap`` its posting arrays are read-only memory maps of the file.
        """
        path = self.file("segments", fname)
        arrays = map_npz(path) if mmap else load_arrays(path)
        for key in ("offsets", "image_ids", "names", "first_id"):
            if key not in arrays:
                raise InputError(f"{path}: missing array '{key}'")
        if arrays["first_id"].shape != () or arrays["names"].ndim != 1:
            raise InputError(f"{path}: malformed arrays 'first_id'/'names'")
        payload = {k[len(_PAYLOAD) :]: v for k, v in arrays.items() if k.startswith(_PAYLOAD)}
        offsets, ids = np.asarray(arrays["offsets"]), arrays["image_ids"]
        if offsets.ndim != 1 or offsets.size < 1 or ids.ndim != 1 or int(offsets[-1]) != ids.size:
            raise InputError(f"{path}: arrays 'offsets' and 'image_ids' do not agree")
        for k, v in payload.items():
            if v.shape[:1] != ids.shape:
                raise InputError(f"{path}: payload '{k}' has {v.shape[0]} rows for {ids.size}")
        segment = Segment(offsets.astype(np.int64, copy=False), ids, payload)
        return segment, np.asarray(arrays["names"]).tolist(), int(arrays["first_id"])

    def read_segments(
        self, manifest: Mapping[str, Any], *, mmap: bool = True
    ) -> tuple[list[Segment], list[str]]:
        """Read every segment of a checked manifest: ``(segments, image names in id order)``.

        With ``mmap`` (the default) postings are memory-mapped and their image ids are not
        scanned here: the scan kernels refuse ids outside the index when a query meets them.

        Raises:
            InputError: ``n_images`` is missing, or the segments' image ranges do not cover the
                ids ``0 .. n_images - 1`` exactly once, or a segment holds ids outside its range.
        """
        where = self.path / MANIFEST
        n_images = manifest.get("n_images")
        if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 0:
            raise InputError(f"{where}: field 'n_images' must be an int >= 0, got {n_images!r}")
        segments, spans, names = [], [], [""] * n_images
        for fname in manifest["segments"]:
            seg, seg_names, first = self.read_segment(fname, mmap=mmap)
            stop = first + len(seg_names)
            ids = seg.image_ids
            if not mmap and ids.size and (int(ids.min()) < first or int(ids.max()) >= stop):
                raise InputError(
                    f"{self.path / fname}: image ids outside the segment's images "
                    f"{first}..{stop - 1}"
                )
            segments.append(seg)
            spans.append((first, stop, fname))
            if 0 <= first and stop <= n_images:
                names[first:stop] = seg_names
        expect = 0
        for first, stop, fname in sorted(spans):
            if first != expect:
                raise InputError(
                    f"{where}: fields 'segments' and 'n_images' disagree: segment {fname!r} holds "
                    f"images {first}..{stop - 1} where image {expect} was expected next"
                )
            expect = stop
        if expect != n_images:
            raise InputError(
                f"{where}: fields 'segments' and 'n_images' disagree: n_images is {n_images} "
                f"but the segments hold {expect} images"
            )
        return segments, names

    def write_stats(
        self, arrays: Mapping[str, np.ndarray], segments: Sequence[str], n_images: int
    ) -> str:
        """Write an index's derived statistics for these segments; returns the file name."""
        name = f"stats-{uuid.uuid4().hex[:12]}.npz"
        tag = {"for_segments": np.asarray(list(segments), dtype=np.str_)}
        tag["for_n_images"] = np.asarray(n_images, dtype=np.int64)
        save_arrays(self.path / name, {**arrays, **tag})
        return name

    def read_stats(self, manifest: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """The statistics a manifest names, or None when it names none or they were computed
        for other segments (then the index derives them, and says so in the log)."""
        name = manifest.get("stats")
        if name is None:
            return None
        arrays = load_arrays(self.file("stats", name))
        segs = arrays.pop("for_segments", np.zeros(0, np.str_)).tolist()
        n = arrays.pop("for_n_images", np.asarray(-1))
        if segs != list(manifest.get("segments", [])) or int(n) != manifest.get("n_images"):
            logger.warning("%s: statistics of other segments; recomputing them", self.path / name)
            return None
        return arrays

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Atomically replace the manifest: the new index becomes visible to readers."""
        meta = {"format_version": FORMAT_VERSION, **manifest}
        return atomic.write_json(self.path / MANIFEST, meta)

    def garbage(self) -> list[Path]:
        """Files of the index's own naming pattern that the committed manifest does not name.

        These are left by killed writers. Files of any other name are never listed.
        """
        if not self.exists():
            return []
        meta = self.manifest()
        return self._own_files_but({LOCK, meta["model"], *meta["segments"], meta.get("stats")})

    def _own_files_but(self, keep: set[str | None]) -> list[Path]:
        return sorted(
            p
            for p in self.path.iterdir()
            if own_name(p.name) and p.name not in keep and p.is_file() and not p.is_symlink()
        )

    def check_new(self, overwrite: bool) -> list[str]:
        """Check that a new index may be committed here; has no side effects.

        A missing or empty folder is fine, and so is one that holds only files an index writes
        (the leftovers of a killed build, removed once the new manifest is committed). An
        existing index needs ``overwrite``. Any other folder is refused, even with
        ``overwrite``.

        Returns:
            The files the previous index owns (its manifest's model and segments), to delete once
            the new manifest is committed.

        Raises:
            InputError: as above.
        """
        if not self.path.exists():
            return []
        if not self.path.is_dir():
            raise InputError(f"{self.path}: not a folder")
        if (self.path / MANIFEST).is_file():
            if not overwrite:
                raise InputError(f"{self.path}: an index exists (pass --overwrite to rebuild it)")
            return self._previous_files()
        entries = sorted(self.path.iterdir())
        strangers = [p for p in entries if not (own_name(p.name) and p.is_file())]
        if strangers:
            raise InputError(
                f"{self.path}: not empty and not a delfx index (it holds '{strangers[0].name}'); "
                "choose an empty or new folder"
            )
        # only the files of a killed build: nothing names them, and the commit removes them
        return []

    def _previous_files(self) -> list[str]:
        """The model and segments of the committed manifest, which is about to be replaced."""
        try:
            meta = self.manifest()
        except InputError as exc:
            raw = load_json(self.path / MANIFEST)
            if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
                raise InputError(
                    f"{self.path / MANIFEST}: not a delfx index of format version "
                    f"{FORMAT_VERSION}; choose an empty or new folder"
                ) from None
            # a damaged delfx manifest: its entries cannot be trusted; keep the files it names
            logger.warning("%s; rebuilding, keeping the files it names", exc)
            return []
        return [meta["model"], *meta["segments"], *([meta["stats"]] if meta.get("stats") else [])]

    def uncommitted(self) -> list[Path]:
        """Files of the index's own naming pattern that no committed manifest names: all of
        them where nothing is committed yet. What a failed or killed writer left."""
        if self.exists():
            return self.garbage()
        return self._own_files_but({LOCK}) if self.path.is_dir() else []

    def remove_unused(self, previous: Iterable[str] = ()) -> list[Path]:
        """After a commit, delete ``previous`` index files and :meth:`garbage` the manifest skips.

        Args:
            previous: file names from the replaced manifest (see :meth:`check_new`).

        Returns:
            The deleted files.
        """
        meta = self.manifest()
        keep = {MANIFEST, LOCK, meta["model"], *meta["segments"], meta.get("stats")}
        doomed = {self.file("previous", n) for n in previous if n not in keep} | set(self.garbage())
        removed = []
        for path in sorted(doomed):
            if path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
                logger.debug("removed %s", path)
        return removed

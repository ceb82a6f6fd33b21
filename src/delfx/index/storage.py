"""On-disk index folders: a JSON manifest, model arrays and inverted-file segments in npz.

Layout::

    <dir>/index.json        manifest: format version, kind, config, n_images, segment files
    <dir>/model.npz         trained model arrays (codebook, tree, HE projection, ...)
    <dir>/seg-<uid>.npz     one inverted-file segment and the names of its images
    <dir>/.lock             taken by a writer (one writer at a time)

Nothing is pickled (``allow_pickle=False`` both ways). Every file is written under a temporary
name and renamed; the manifest is replaced last. A build or an append that is killed therefore
leaves the previous manifest, and the index it describes, intact; readers only ever open files
that a committed manifest names, so they can read while a writer adds segments.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from delfx.datasets.gnd_io import load_json
from delfx.errors import InputError
from delfx.index.invfile import Segment
from delfx.io import atomic

FORMAT_VERSION = 1
MANIFEST = "index.json"
MODEL = "model.npz"
_PAYLOAD = "payload__"


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
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: unreadable index file ({exc})") from None


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

    def manifest(self) -> dict[str, Any]:
        """The committed manifest; an error names the file when missing or from another version."""
        path = self.path / MANIFEST
        if not path.is_file():
            raise InputError(f"{path}: no index here (build one with 'delfx index build')")
        meta = load_json(path)
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{path}: not a delfx index of format version {FORMAT_VERSION}")
        return meta

    @contextlib.contextmanager
    def writing(self) -> Iterator[IndexDir]:
        """Hold the writer lock; a second writer fails at once with a clear error."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(f"{self.path}: another process is writing this index") from None
            try:
                yield self
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def write_model(self, arrays: Mapping[str, np.ndarray]) -> str:
        """Write model arrays under a fresh name; returns the file name for the manifest."""
        name = f"model-{uuid.uuid4().hex[:12]}.npz"
        save_arrays(self.path / name, arrays)
        return name

    def read_model(self, name: str) -> dict[str, np.ndarray]:
        """Read the model arrays a manifest names."""
        return load_arrays(self.path / name)

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

    def read_segment(self, fname: str) -> tuple[Segment, list[str], int]:
        """Read a segment file: ``(segment, image names, first image id)``."""
        arrays = load_arrays(self.path / fname)
        for key in ("offsets", "image_ids", "names", "first_id"):
            if key not in arrays:
                raise InputError(f"{self.path / fname}: missing array '{key}'")
        payload = {k[len(_PAYLOAD) :]: v for k, v in arrays.items() if k.startswith(_PAYLOAD)}
        segment = Segment(arrays["offsets"], arrays["image_ids"], payload)
        return segment, [str(n) for n in arrays["names"]], int(arrays["first_id"])

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Atomically replace the manifest: the new index becomes visible to readers."""
        meta = {"format_version": FORMAT_VERSION, **manifest}
        return atomic.write_json(self.path / MANIFEST, meta)

    def garbage(self) -> list[Path]:
        """Files that the committed manifest does not name (left by killed writers)."""
        if not self.exists():
            return []
        meta = self.manifest()
        keep = {MANIFEST, ".lock", meta.get("model", ""), *meta.get("segments", [])}
        return sorted(p for p in self.path.iterdir() if p.is_file() and p.name not in keep)

"""The server's hold on one collection: a Searcher swapped whole after every commit.

A search takes the current :class:`~delfx.engine.Searcher` and keeps it for its whole run, so
it sees the collection before or after a concurrent add, never half of it. The manifest's stat
is checked on every request: a commit by another worker process (or by ``delfx index add``)
is picked up at the next request.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from delfx import engine
from delfx.engine import manifest as mf
from delfx.errors import InputError

logger = logging.getLogger(__name__)

UPLOADS = "uploads"
_BAD_PART = re.compile(r"^\.+$")


def safe_name(name: str) -> str:
    """A photo name from a client, checked: relative, ``/``-separated, no ``..``, no hidden or
    empty parts, no backslash or NUL, an image suffix.

    Raises:
        InputError: naming the name and what is wrong.
    """
    from delfx.io.images import has_image_suffix

    if not name or len(name) > 255 or "\\" in name or "\0" in name or name.startswith("/"):
        raise InputError(f"name {name!r}: must be a relative path of at most 255 characters")
    parts = name.split("/")
    if any(not p or _BAD_PART.match(p) or p.startswith(".") for p in parts):
        raise InputError(f"name {name!r}: no empty, '.', '..' or hidden parts")
    if not has_image_suffix(name):
        raise InputError(f"name {name!r}: needs an image suffix (.jpg, .png, ...)")
    return name


class Library:
    """One collection, opened once and reopened after each commit.

    Args:
        folder: the collection folder.
        device: torch device of the global network.
    """

    def __init__(self, folder: str | os.PathLike[str], device: str = "cpu") -> None:
        self.folder = Path(folder)
        self.device = device
        self._lock = threading.Lock()  # one writer per process; the flock guards processes
        self._stamp: tuple[int, int] | None = None  # the manifest's when last opened
        self._clean_staging()
        t = time.perf_counter()
        self._searcher = self._open()
        self.startup_s = time.perf_counter() - t
        logger.info("opened %s in %.2f s (%d images)", folder, self.startup_s, len(self._searcher))

    def _clean_staging(self, older_s: float = 3600.0) -> None:
        """Remove upload folders left by a killed server (older than ``older_s`` seconds)."""
        now = time.time()
        for p in self.folder.glob(".upload-*"):
            if p.is_dir() and not p.is_symlink() and now - p.stat().st_mtime > older_s:
                shutil.rmtree(p, ignore_errors=True)

    def _open(self) -> engine.Searcher:
        stamp = mf.stamp(self.folder)
        searcher = engine.Searcher.open(self.folder, device=self.device)
        if self._stamp is not None and getattr(self, "_searcher", None) is not None:
            searcher.extractor = self._searcher.extractor  # keep the loaded network
        self._stamp = stamp
        return searcher

    def searcher(self) -> engine.Searcher:
        """The current searcher (reopened when the manifest changed)."""
        if mf.stamp(self.folder) != self._stamp:
            with self._lock:
                if mf.stamp(self.folder) != self._stamp:
                    self._searcher = self._open()
        return self._searcher

    def photo_path(self, name: str) -> Path:
        """The original photo of an indexed name: an upload, else under the create folder.

        Raises:
            InputError: a bad name; KeyError: no such photo file.
        """
        safe_name(name)
        s = self.searcher()
        roots = [self.folder / UPLOADS, Path(s.info.get("photos") or self.folder / UPLOADS)]
        for root in roots:
            path = root / name
            try:
                inside = path.resolve().is_relative_to(root.resolve())
            except OSError:
                continue
            if inside and path.is_file():
                return path
        raise KeyError(name)

    def add(self, files: list[tuple[str, bytes]], replace: bool = False) -> list[str]:
        """Add uploaded photos (``(name, bytes)``); kept under ``DIR/uploads`` once committed."""
        names = [safe_name(n) for n, _ in files]
        if len(set(names)) != len(names):
            raise InputError("two uploads have the same name")
        with self._lock:
            staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.folder))
            try:
                for name, data in files:
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    (staging / name).write_bytes(data)
                added = engine.add(
                    self.folder, [staging], replace_existing=replace, device=self.device,
                    workers=1, progress=False,
                )  # fmt: skip
                for name in added:
                    dst = self.folder / UPLOADS / name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / name, dst)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._searcher = self._open()
        return added

    def remove(self, name: str) -> None:
        """Hide one image (tombstone)."""
        with self._lock:
            engine.remove(self.folder, [name])
            self._searcher = self._open()

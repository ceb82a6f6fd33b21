"""The server's hold on one collection: a Searcher swapped whole after every commit.

A search takes the current :class:`~delfx.engine.Searcher` and keeps it for its whole run, so
it sees the collection before or after a concurrent add, never half of it. The manifest's stat
is checked on every request: a commit by another worker process (or by ``delfx index add``)
is picked up at the next request.
"""

from __future__ import annotations

import contextlib
import json
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
from delfx.io import atomic
from delfx.io.crashpoints import before_commit

logger = logging.getLogger(__name__)

UPLOADS = "uploads"
_JOURNAL = ".commit.json"  # in an upload folder: the commit that carries it
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
        t = time.perf_counter()
        self._searcher = self._open()
        self.startup_s = time.perf_counter() - t
        self._clean_staging()
        logger.info("opened %s in %.2f s (%d images)", folder, self.startup_s, len(self._searcher))

    def _clean_staging(self, older_s: float = 3600.0) -> None:
        """Finish or drop the upload folders a killed server left.

        An upload folder whose journal names a commit that the manifest holds was killed after
        that commit: its photos are moved into ``uploads/`` (roll forward). Any other one is
        removed once older than ``older_s`` seconds (a younger one may be another worker's
        add in progress).
        """
        now = time.time()
        for p in sorted(self.folder.glob(".upload-*")):
            if not p.is_dir() or p.is_symlink():
                continue
            if self._committed(p):
                self._move_uploads(p, self._journal(p)["names"])
                shutil.rmtree(p, ignore_errors=True)
            elif now - p.stat().st_mtime > older_s:
                shutil.rmtree(p, ignore_errors=True)

    @staticmethod
    def _journal(staging: Path) -> dict:
        try:
            return json.loads((staging / _JOURNAL).read_text())
        except (OSError, ValueError):
            return {}

    def _committed(self, staging: Path) -> bool:
        """Whether the commit that an upload folder's journal names is in the manifest: the
        manifest has reached its shard number and every uploaded name is live."""
        journal = self._journal(staging)
        if not journal:
            return False
        s = self._searcher
        live = {n for n, ok in zip(s.names, s.live, strict=True) if ok}
        try:
            shard, names = int(journal["next_shard"]), set(journal["names"])
        except (KeyError, TypeError, ValueError):
            return False  # not a journal this writes: left to the age rule
        return int(s.info.get("next_shard", -1)) >= shard and names <= live

    def _move_uploads(self, staging: Path, names: list[str]) -> None:
        for name in names:
            if not (staging / name).is_file():
                continue  # moved before the kill
            dst = self.folder / UPLOADS / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            before_commit(dst)
            with contextlib.suppress(FileNotFoundError):  # another worker moved it meanwhile
                os.replace(staging / name, dst)

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

                def journal(manifest: dict) -> None:  # which commit carries these uploads
                    record = {"next_shard": manifest["next_shard"], "names": names}
                    atomic.write_json(staging / _JOURNAL, record)

                added = engine.add(
                    self.folder, [staging], replace_existing=replace, device=self.device,
                    workers=1, progress=False, on_commit=journal,
                )  # fmt: skip
                self._move_uploads(staging, added)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._searcher = self._open()
        return added

    def remove(self, name: str) -> None:
        """Hide one image (tombstone)."""
        with self._lock:
            engine.remove(self.folder, [name])
            self._searcher = self._open()

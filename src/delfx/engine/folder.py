"""A collection folder's writer lock and the check that a create may write there."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from delfx.engine import manifest as mf
from delfx.errors import InputError


@contextlib.contextmanager
def locked(folder: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the collection's writer lock; a second writer fails at once.

    ``shared``: the lock of one ``--shard I/N`` slice; slices run side by side, and no writer
    runs beside them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / mf.LOCK, "a+") as lock:
        try:
            fcntl.flock(lock.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{folder}: another process is writing this collection") from None
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def check_new(folder: Path, overwrite: bool) -> None:
    """A create may write here: new, empty, only its own (unfinished) files, or ``overwrite``."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    if mf.is_collection(folder) and not overwrite:
        raise InputError(f"{folder}: a collection exists (pass --overwrite to rebuild it)")
    for p in sorted(folder.iterdir()):
        if p.name in (mf.MANIFEST, mf.INDEX) or mf.own_top_file(p.name):
            continue
        raise InputError(
            f"{folder}: not empty and not a delfx collection (it holds '{p.name}'); "
            "choose an empty or new folder"
        )

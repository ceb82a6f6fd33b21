"""Write files and folders so that readers never see them half-written.

Everything is first written under a temporary name in the destination's own folder (so the final
``os.replace`` is a rename on one file system), then renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from delfx.errors import DelfxError
from delfx.io.crashpoints import before_commit


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder; an error names ``path`` (mkdir alone names only the folder)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        msg = f"{os.strerror(errno.ENOTDIR)} (a parent of it is a file)"
        raise NotADirectoryError(errno.ENOTDIR, msg, str(path)) from None
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename).

    Raises:
        OSError: naming ``path`` (not the temporary file): a parent that is a file, a full
            disk, no permission. Nothing is left behind and an existing ``path`` is untouched.
    """
    path = Path(path)
    _make_parent(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes owner-only files; give the file the permissions open() would
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        before_commit(path)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``final`` on success.

    On any exception the temporary folder is removed and ``final`` is left as it was.

    Args:
        final: the folder to create.
        overwrite: replace an existing ``final``; otherwise an existing one is an error.

    Yields:
        The temporary folder to fill.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise DelfxError(f"{final}: already exists (pass --overwrite to replace it)")
    _make_parent(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes an owner-only folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    before_commit(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Safe handling of the HDF5 files delfx writes: opening, write errors and foreign layouts.

h5py reports operating-system failures (a full disk, a folder where the file should be, another
process holding the file's lock) as :class:`OSError` whose message is HDF5's error stack and
whose errno is sometimes only in that message. These helpers turn them into one clean error
naming the file: an :class:`OSError` with the plain reason for an OS failure (the command line
prints ``path: reason``), an :class:`~delfx.errors.InputError` for a file that is not readable
HDF5 or is locked by another writer.

HDF5 can also make a file read data from elsewhere: soft and external links, datasets with
external storage (raw data in other files) and virtual datasets. A delfx file never holds them;
:func:`link_kind` and :func:`check_array` find them so readers can refuse them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path

import h5py

from delfx.errors import InputError
from delfx.io.crashpoints import before_commit

#: Bytes kept free beyond an image's arrays (room for HDF5's metadata) by :func:`check_space`.
SPACE_MARGIN = 64 * 1024


def errno_of(exc: Exception) -> int | None:
    """The operating-system error behind an h5py error (h5py may keep it only in its message;
    a failed flush is a ``RuntimeError``)."""
    code = getattr(exc, "errno", None)
    if code in errno.errorcode:
        return code
    msg = str(exc)
    found = re.search(r"errno = (\d+)", msg)
    if found and int(found.group(1)) in errno.errorcode:
        return int(found.group(1))
    return errno.ENOSPC if "No space left on device" in msg else None


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (HDF5's span several)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def write_error(exc: Exception, path: Path) -> Exception:
    """A failed write as one clean error naming ``path``: an :class:`OSError` with the reason
    (``path: No space left on device``), or an :class:`InputError` when HDF5 gives no OS cause."""
    code = errno_of(exc)
    if code is None:
        return InputError(f"{path}: writing the HDF5 file failed ({first_line(exc)})")
    return OSError(code, os.strerror(code), str(path))


def open_h5(path: Path, mode: str, name: Path | None = None) -> h5py.File:
    """Open ``path`` with h5py; errors name ``name`` (default ``path``).

    Raises:
        InputError: missing (when reading), locked by another process, or not readable HDF5
            (truncated, corrupt, not HDF5).
        OSError: any other operating-system failure, naming the file (e.g. ``Is a directory``).
    """
    name = path if name is None else name
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        code, msg = errno_of(exc), first_line(exc)
        if code in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise InputError(f"{name}: feature file is open in another writer") from None
        if "unable to lock file" in msg:
            raise InputError(
                f"{name}: cannot lock the feature file ({os.strerror(code) if code else msg}); "
                "on a file system without locks set HDF5_USE_FILE_LOCKING=FALSE"
            ) from None
        if code == errno.ENOENT and mode != "w":
            raise InputError(f"{name}: no such feature file") from None
        if code is not None:
            raise OSError(code, os.strerror(code), str(name)) from None
        detail = msg.partition("(")[2].rstrip(")") or msg
        raise InputError(
            f"{name}: not a readable HDF5 feature file (truncated or corrupt: {detail})"
        ) from None


def link_kind(link: object) -> str | None:
    """None for a plain (hard) link, else what the link is (``group.get(key, getlink=True)``)."""
    if isinstance(link, h5py.HardLink):
        return None
    if isinstance(link, h5py.ExternalLink):
        return f"an external link to {link.filename}:{link.path}"
    if isinstance(link, h5py.SoftLink):
        return f"a soft link to {link.path}"
    return "a link of unknown type"


def refuse(path: Path, what: str) -> InputError:
    """The error for a foreign layout: ``path: what; refusing it (...)``."""
    return InputError(
        f"{path}: {what}; refusing it (delfx feature files hold no links or external data)"
    )


def check_array(group: h5py.Group, field: str, path: Path, where: str) -> h5py.Dataset:
    """The dataset ``field`` of ``group``; refused (naming ``path`` and ``where``, e.g. the
    image) when missing, a link, or stored outside the file."""
    link = group.get(field, getlink=True)
    if link is None:
        raise InputError(f"{path}: {where} has no '{field}' array")
    kind = link_kind(link)
    if kind is not None:
        raise refuse(path, f"{where}: '{field}' is {kind}")
    ds = group[field]
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{path}: {where}: '{field}' is not an array")
    if ds.external is not None:
        raise refuse(path, f"{where}: '{field}' is stored in external files")
    if ds.is_virtual:
        raise refuse(path, f"{where}: '{field}' is a virtual dataset")
    return ds


def check_space(path: Path, nbytes: int) -> None:
    """Refuse (``ENOSPC``, naming ``path``) to write ``nbytes`` more into ``path`` when its disk
    lacks room for them and :data:`SPACE_MARGIN`, before HDF5 writes part of them."""
    statvfs = getattr(os, "statvfs", None)
    try:
        st = statvfs(path.parent) if statvfs else None
    except OSError:
        return
    if st is None or not st.f_blocks:  # a file system that reports no sizes
        return
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free < nbytes + SPACE_MARGIN:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def make_folder(path: Path) -> None:
    """Create the folder of ``path``; an error names ``path`` and the folder at fault."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else path.parent
        reason = exc.strerror or os.strerror(exc.errno or 0)
        if where.exists() and not where.is_dir():
            reason = "not a folder"
        raise OSError(exc.errno, f"cannot create its folder: {where}: {reason}", str(path)) from exc


def temp_sibling(path: Path) -> Path:
    """A new empty file next to ``path`` to build its replacement in (see
    :func:`move_into_place`), with the permissions ``open`` would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes owner-only files
    finally:
        os.close(fd)
    return Path(tmp)


def move_into_place(tmp: Path, path: Path) -> None:
    """Sync ``tmp`` to disk and rename it to ``path``; on failure remove it (errors name
    ``path``)."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        before_commit(path)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc

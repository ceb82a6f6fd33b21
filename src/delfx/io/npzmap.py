"""Memory-map the arrays of an uncompressed ``.npz`` file instead of reading them.

``np.savez`` stores each array as an ``.npy`` member of a zip archive without compression, so a
member's bytes lie contiguous in the file: after the zip local header comes the ``.npy`` header,
then the raw array. :func:`map_npz` finds that offset for every member and returns a read-only
``np.memmap`` over it, so opening an index of a million images touches only its headers; pages
are read when a query visits them. Compressed members, object arrays and small arrays are read
normally. Nothing is unpickled (``allow_pickle=False`` where arrays are read).
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from delfx.errors import InputError

#: Arrays smaller than this are read, not mapped (a map costs a file handle and a page).
MAP_FROM_BYTES = 1 << 16
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # the zip local file header, 30 bytes


def _member_offset(fh, info: zipfile.ZipInfo) -> int:
    """Offset of a stored member's data: after its local header, name and extra field."""
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != b"PK\x03\x04":
        raise ValueError(f"member {info.filename}: bad local header")
    name_len, extra_len = fields[9], fields[10]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy version {version}")


def map_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file; large uncompressed ones as read-only memory maps.

    Args:
        path: the file.

    Returns:
        name (without ``.npy``) -> array; mapped arrays are ``np.memmap`` (mode ``"r"``).

    Raises:
        InputError: the file is missing, not a zip of ``.npy`` members, or holds object arrays.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename} is not an .npy array")
                key = info.filename[: -len(".npy")]
                if info.compress_type != zipfile.ZIP_STORED or info.file_size < MAP_FROM_BYTES:
                    with zf.open(info) as member:
                        out[key] = np.lib.format.read_array(member, allow_pickle=False)
                    continue
                fh.seek(_member_offset(fh, info))
                shape, fortran, dtype = _npy_header(fh)
                if dtype.hasobject:
                    raise ValueError(f"member {info.filename} holds Python objects")
                start = fh.tell()
                need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if start + need > path.stat().st_size or need > info.file_size:
                    raise ValueError(f"member {info.filename} is truncated")
                out[key] = np.memmap(
                    path, dtype=dtype, mode="r", offset=start, shape=shape,
                    order="F" if fortran else "C",
                )  # fmt: skip
    except FileNotFoundError:
        raise InputError(f"{path}: index file not found") from None
    except (ValueError, OSError, zipfile.BadZipFile, struct.error, EOFError) as exc:
        raise InputError(f"{path}: unreadable index file ({exc})") from None
    return out


def is_mapped(a: np.ndarray) -> bool:
    """True for an array backed by a memory map (or a view of one)."""
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base if isinstance(a, np.ndarray) else None
    return False

"""The HDF5 feature store: the local features of every image of one extraction run.

Layout of one file (one extraction run on one dataset)::

    /                     attrs: format_version (1), config (JSON), dim (once known)
    /features/<key>       one group per image, attrs: complete (True) and any extras (bbox...)
        keypoints         N x 2 float32 (x, y) in original-image pixels
        scales            (N,) float32
        orientations      (N,) float32
        scores            (N,) float32
        descriptors       N x D float32 (or float16 on disk; always float32 when read)
        image_size        (2,) int32 (width, height)
    /staging/<key>        groups being written; removed when a writer opens the file

``<key>`` is the image name with ``%`` written as ``%25``, ``/`` as ``%2F`` and a leading ``.``
as ``%2E`` (HDF5 link names cannot hold ``/``), so every group sits directly under
``/features`` and :meth:`FeatureReader.names` gives back exactly the names written.

A group is filled under ``/staging``, marked ``complete`` and only then moved (one link
operation) under ``/features``: a reader never sees a half-written image, and listing the names
needs no per-group check. The file uses the default (oldest) HDF5 format, which has no
"open for writing" flag in its superblock, so a file left by a killed run reopens without
``h5clear``; the writer flushes every few writes so such a file keeps what was written.

A failed writer (a full disk...) leaves the previous state: a resumed file keeps its complete
images, a fresh file over an existing one is built under a temporary name and renamed on success,
a new file with no image is removed; each image is refused first when the disk lacks room for it.
Readers refuse links and data stored outside the file (:mod:`delfx.io.h5files`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h5py
import numpy as np

from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.io.crashpoints import before_commit
from delfx.io.h5files import (
    check_array,
    check_space,
    link_kind,
    make_folder,
    move_into_place,
    open_h5,
    refuse,
    temp_sibling,
    write_error,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_FEATURES = "features"
_STAGING = "staging"
_ARRAYS = ("keypoints", "scales", "orientations", "scores", "descriptors", "image_size")
_RESERVED_ATTRS = ("complete",)
_HALF_MAX = float(np.finfo(np.float16).max)


def escape_name(name: str) -> str:
    """The HDF5 link name of an image name (``%`` -> ``%25``, ``/`` -> ``%2F``, leading ``.``)."""
    if not name:
        raise InputError("image name: must not be empty")
    key = name.replace("%", "%25").replace("/", "%2F")
    return "%2E" + key[1:] if key.startswith(".") else key


def unescape_name(key: str) -> str:
    """Inverse of :func:`escape_name`."""
    return unquote(key)


def _canonical(config: dict[str, Any]) -> str:
    try:
        return json.dumps(config, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"feature store config is not JSON-serialisable ({exc})") from None


def _check_delfx(f: h5py.File, path: Path) -> None:
    for top in (_FEATURES, _STAGING):
        kind = link_kind(link := f.get(top, getlink=True))
        if link is not None and kind is not None:
            raise refuse(path, f"'/{top}' is {kind}")
    version = f.attrs.get("format_version")
    if version is None or "config" not in f.attrs or _FEATURES not in f:
        raise InputError(f"{path}: not a delfx feature file (no format_version/config/features)")
    if not isinstance(f[_FEATURES], h5py.Group):
        raise InputError(f"{path}: not a delfx feature file ('/{_FEATURES}' is not a group)")
    if int(version) != FORMAT_VERSION:
        raise InputError(
            f"{path}: feature file format_version {int(version)}, this delfx reads {FORMAT_VERSION}"
        )


def _read_attrs(group: h5py.Group) -> dict[str, Any]:
    out = {}
    for key, value in group.attrs.items():
        if key in _RESERVED_ATTRS:
            continue
        out[key] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


class FeatureWriter:
    """The single writer of a feature file; use as a context manager.

    Args:
        path: the ``.h5`` file.
        config: the extraction config (JSON-serialisable); stored as the root ``config``.
        resume: keep an existing file written with the same config (callers skip the names for
            which :meth:`has` is true); False starts a new file, which replaces an existing one
            only when the writer closes without an error.
        half: store descriptors as float16 on disk (read back as float32).
        flush_every: flush to disk after this many writes (and at least every 10 seconds).

    Raises:
        InputError: the existing file is not a delfx feature file, was written with another
            config or descriptor precision, or is open in another writer.
        OSError: the file or its folder cannot be created or written (the error names
            ``path``), e.g. a full disk.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: dict[str, Any],
        *,
        resume: bool = True,
        half: bool = False,
        flush_every: int = 16,
    ) -> None:
        self.path = Path(path)
        self.config = json.loads(_canonical(config))
        self.half = bool(half)
        self.flush_every = max(1, int(flush_every))
        self._pending = 0
        self._last_flush = time.monotonic()
        dtype = "float16" if self.half else "float32"
        self._tmp: Path | None = None  # the temporary name of a fresh file replacing another
        self._created = False  # a new file, removed if the writer fails before any image
        self._names: set[str] = set()
        make_folder(self.path)
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.path))
        if resume and self.path.exists():
            self._file = open_h5(self.path, "a")
            try:
                self._check_resume(dtype)
            except BaseException:
                self._file.close()
                raise
        else:
            self._create(dtype)
        self._features = self._file[_FEATURES]
        self._staging = self._file[_STAGING]
        dim = self._file.attrs.get("dim")
        self.dim: int | None = None if dim is None else int(dim)
        self._names = {unescape_name(k) for k in self._features.keys()}

    def _create(self, dtype: str) -> None:
        target = self.path
        try:
            if self.path.exists() or self.path.is_symlink():
                self._tmp = target = temp_sibling(self.path)
            else:
                self._created = True
            self._file = open_h5(target, "w", self.path)
            try:
                self._file.attrs["format_version"] = FORMAT_VERSION
                self._file.attrs["config"] = _canonical(self.config)
                self._file.attrs["descriptor_dtype"] = dtype
                self._file.create_group(_FEATURES)
                self._file.create_group(_STAGING)
                self._file.flush()
            except BaseException:
                with contextlib.suppress(Exception):  # closing flushes, and may fail too
                    self._file.close()
                raise
        except (OSError, RuntimeError) as exc:  # h5py's failed flush is a RuntimeError
            self._discard()
            raise write_error(exc, self.path) from exc
        except BaseException:
            self._discard()
            raise

    def _check_resume(self, dtype: str) -> None:
        f = self._file
        _check_delfx(f, self.path)
        stored = json.loads(str(f.attrs["config"]))
        if stored != self.config:
            raise InputError(
                f"{self.path}: feature file was written with another config "
                f"({json.dumps(stored, sort_keys=True)}); use another output file or remove it"
            )
        stored_dtype = str(f.attrs.get("descriptor_dtype", "float32"))
        if stored_dtype != dtype:
            raise InputError(
                f"{self.path}: feature file stores {stored_dtype} descriptors, asked for {dtype}"
            )
        staging = f.require_group(_STAGING)
        partial = list(staging.keys())
        for key in partial:
            del staging[key]
        # groups without the flag can only come from outside this writer; check them anyway
        features = f[_FEATURES]
        for key in list(features.keys()):
            kind = link_kind(features.get(key, getlink=True))
            if kind is not None:
                raise refuse(self.path, f"image '{unescape_name(key)}' is {kind}")
            if not h5py.h5a.exists(features.id, b"complete", obj_name=key.encode("utf-8")):
                del features[key]
                partial.append(key)
        if partial:
            logger.info("%s: dropped %d half-written image(s)", self.path, len(partial))
        f.flush()

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._finish(failed=exc_type is not None)

    def close(self) -> None:
        """Flush and close the file (idempotent); a fresh file replacing another moves into
        place now."""
        self._finish(failed=False)

    def _finish(self, failed: bool) -> None:
        """Close; on failure, drop what holds nothing complete (see :meth:`_discard`)."""
        if self._file.id.valid:
            try:
                self._file.flush()
                self._file.close()
            except (OSError, RuntimeError) as exc:
                with contextlib.suppress(Exception):
                    self._file.close()
                if not failed:
                    self._discard()
                    raise write_error(exc, self.path) from exc
                logger.debug("%s: closing after an error failed too: %s", self.path, exc)
        if failed:
            self._discard()
        elif self._tmp is not None:
            tmp, self._tmp = self._tmp, None
            move_into_place(tmp, self.path)

    def _discard(self) -> None:
        """Remove what this writer made that holds nothing complete: the temporary file of a
        fresh file meant to replace another, or a new file without any image."""
        doomed = self._tmp or (self.path if self._created and not self._names else None)
        self._tmp, self._created = None, False
        if doomed is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(doomed)

    def __len__(self) -> int:
        return len(self._names)

    # -- writing ---------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        """True when the features of ``name`` are stored completely."""
        return name in self._names

    def write(self, name: str, feats: LocalFeatures, attrs: dict[str, Any] | None = None) -> None:
        """Store the features of one image, replacing any earlier record of that name.

        Args:
            name: image name; may contain ``/``.
            feats: the features; their descriptor dimension must match the file's.
            attrs: extra group attributes (numbers, strings or small arrays), e.g. a query box.

        Raises:
            InputError: the descriptor dimension differs from the file's, or half precision
                cannot hold the descriptors.
        """
        key = escape_name(name)
        reserved = [k for k in attrs or {} if k in _RESERVED_ATTRS]
        if reserved:
            raise InputError(f"{name}: attribute name '{reserved[0]}' is reserved")
        if self.dim is None:
            self.dim = feats.dim
            self._file.attrs["dim"] = self.dim
        elif feats.dim != self.dim:
            raise InputError(
                f"{name}: descriptor dimension {feats.dim} differs from {self.dim} in {self.path}"
            )
        desc = np.ascontiguousarray(feats.descriptors, dtype=np.float32)
        if self.half:
            if desc.size and float(np.abs(desc).max()) > _HALF_MAX:
                raise InputError(f"{name}: descriptor values too large for --half (float16)")
            desc = desc.astype(np.float16)
        check_space(self.path, desc.nbytes + len(feats) * 20 + 8)
        try:
            if key in self._staging:
                del self._staging[key]
            group = self._staging.create_group(key)
            group.create_dataset("keypoints", data=np.asarray(feats.keypoints, np.float32))
            for field in ("scales", "orientations", "scores"):
                group.create_dataset(field, data=np.asarray(getattr(feats, field), np.float32))
            group.create_dataset("descriptors", data=desc)
            group.create_dataset("image_size", data=np.asarray(feats.image_size, np.int32))
            for akey, value in (attrs or {}).items():
                group.attrs[akey] = value
            group.attrs["complete"] = True
            if key in self._features:
                del self._features[key]
            before_commit(f"{self.path}:{key}")
            self._file.move(f"{_STAGING}/{key}", f"{_FEATURES}/{key}")
        except (OSError, RuntimeError) as exc:
            with contextlib.suppress(Exception):  # drop the half-written group
                if key in self._staging:
                    del self._staging[key]
            raise write_error(exc, self.path) from exc
        self._names.add(name)
        self._pending += 1
        now = time.monotonic()
        if self._pending >= self.flush_every or now - self._last_flush > 10.0:
            self.flush()

    def flush(self) -> None:
        """Write everything so far to disk."""
        try:
            self._file.flush()
        except (OSError, RuntimeError) as exc:
            raise write_error(exc, self.path) from exc
        self._pending = 0
        self._last_flush = time.monotonic()


class FeatureReader:
    """Read a feature file lazily, one image at a time; use as a context manager.

    Args:
        path: the ``.h5`` file written by :class:`FeatureWriter`.

    Raises:
        InputError: the file is missing, not HDF5 (or truncated), or not a delfx feature file;
            reading an image whose entry is a link or whose data lives outside the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such feature file")
        self._file = open_h5(self.path, "r")
        try:
            _check_delfx(self._file, self.path)
        except BaseException:
            self._file.close()
            raise
        self._features = self._file[_FEATURES]
        self.config: dict[str, Any] = json.loads(str(self._file.attrs["config"]))
        dim = self._file.attrs.get("dim")
        self.dim: int | None = None if dim is None else int(dim)

    def __enter__(self) -> FeatureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file.id.valid:
            self._file.close()

    def names(self, prefix: str = "") -> list[str]:
        """Sorted names of the stored images that start with ``prefix``."""
        names = (unescape_name(k) for k in self._features.keys())
        return sorted(n for n in names if n.startswith(prefix))

    def __len__(self) -> int:
        return len(self._features)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name:
            return False
        return self._features.get(escape_name(name), getlink=True) is not None

    def _group(self, name: str) -> h5py.Group:
        link = self._features.get(escape_name(name), getlink=True)
        if link is None:
            raise InputError(f"{self.path}: no features stored for image '{name}'")
        kind = link_kind(link)
        if kind is not None:
            raise refuse(self.path, f"image '{name}' is {kind}")
        group = self._features[escape_name(name)]
        if not isinstance(group, h5py.Group):
            raise InputError(f"{self.path}: image '{name}' is not a group of arrays")
        if not group.attrs.get("complete", False):
            raise InputError(f"{self.path}: features of image '{name}' are incomplete")
        return group

    def _array(self, group: h5py.Group, name: str, field: str) -> h5py.Dataset:
        return check_array(group, field, self.path, f"image '{name}'")

    def get(self, name: str) -> LocalFeatures:
        """The features of one image (descriptors as float32).

        Raises:
            InputError: no complete record of ``name`` in the file.
        """
        g = self._group(name)
        arrays = {f: self._array(g, name, f)[()] for f in _ARRAYS}
        size = arrays.pop("image_size")
        self._check_finite(name, arrays["descriptors"])
        return LocalFeatures(
            **{f: a.astype(np.float32, copy=False) for f, a in arrays.items()},
            image_size=(int(size[0]), int(size[1])),
        )

    def descriptors(self, name: str) -> np.ndarray:
        """Only the ``N x D`` float32 descriptors of one image."""
        ds = self._array(self._group(name), name, "descriptors")
        return self._check_finite(name, ds[()].astype(np.float32, copy=False))

    def _check_finite(self, name: str, desc: np.ndarray) -> np.ndarray:
        """Refuse descriptors holding NaN or infinity (a damaged file; faiss would crash)."""
        if desc.size and not np.isfinite(desc).all():
            raise InputError(
                f"{self.path}: image '{name}': descriptors hold NaN or infinite values"
            )
        return desc

    def num_features(self, name: str) -> int:
        """The number of features of one image, without reading them."""
        return int(self._array(self._group(name), name, "descriptors").shape[0])

    def attrs(self, name: str) -> dict[str, Any]:
        """The extra attributes stored with one image (e.g. a query's ``bbox``)."""
        return _read_attrs(self._group(name))

    def iter(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, LocalFeatures]]:
        """Yield ``(name, features)`` one image at a time (all stored names when None)."""
        for name in self.names() if names is None else names:
            yield name, self.get(name)

    def __repr__(self) -> str:
        return f"FeatureReader({str(self.path)!r}, {len(self)} images, dim={self.dim})"

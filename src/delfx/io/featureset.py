"""Several feature files read as one: each image name maps to the shard that holds it.

A collection grows by appending shards: every ``index add`` writes a new ``.h5`` file
(:class:`~delfx.io.featurestore.FeatureWriter`) instead of rewriting the old ones. A
:class:`FeatureSet` opens the shards a manifest lists, in order, and answers ``get(name)`` from
the shard that holds ``name``. When two shards hold one name (a photo replaced by a later add),
the later shard wins, so the newest features of a name are the ones read.

It offers the reading side of :class:`~delfx.io.featurestore.FeatureReader` (``get``,
``descriptors``, ``num_features``, ``attrs``, ``names``, ``in``), so every stage that takes a
reader takes a feature set.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.io.featurestore import FeatureReader


class FeatureSet:
    """Read-only view of feature shards; use as a context manager.

    Args:
        paths: the shard files, oldest first.

    Raises:
        InputError: a shard is missing or not a delfx feature file, or two shards hold
            descriptors of different dimensions.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        self.paths = [Path(p) for p in paths]
        self._readers: list[FeatureReader] = []
        self._where: dict[str, int] = {}
        self._lock = threading.Lock()  # h5py serialises anyway; keep callers from interleaving
        try:
            for i, path in enumerate(self.paths):
                reader = FeatureReader(path)
                self._readers.append(reader)
                for name in reader.names():
                    self._where[name] = i  # a later shard replaces an earlier one
        except BaseException:
            self.close()
            raise
        dims = {r.dim for r in self._readers if r.dim is not None}
        if len(dims) > 1:
            self.close()
            raise InputError(
                f"{self.paths[0].parent}: feature shards of different dimensions {sorted(dims)}"
            )
        self.dim: int | None = dims.pop() if dims else None

    def __enter__(self) -> FeatureSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every shard (idempotent)."""
        for reader in self._readers:
            reader.close()

    @property
    def config(self) -> dict[str, Any]:
        """The extraction config of the first shard (every shard of a collection shares it)."""
        if not self._readers:
            return {}
        return self._readers[0].config

    def names(self, prefix: str = "") -> list[str]:
        """Sorted names held by any shard that start with ``prefix``."""
        return sorted(n for n in self._where if n.startswith(prefix))

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._where

    def shard_of(self, name: str) -> Path:
        """The shard file that holds ``name``."""
        return self.paths[self._reader_index(name)]

    def _reader_index(self, name: str) -> int:
        try:
            return self._where[name]
        except KeyError:
            raise InputError(f"{self.path}: no features stored for image '{name}'") from None

    def _reader(self, name: str) -> FeatureReader:
        return self._readers[self._reader_index(name)]

    def get(self, name: str) -> LocalFeatures:
        """The features of one image (descriptors ``N x D`` float32)."""
        with self._lock:
            return self._reader(name).get(name)

    def descriptors(self, name: str) -> np.ndarray:
        """Only the ``N x D`` float32 descriptors of one image."""
        with self._lock:
            return self._reader(name).descriptors(name)

    def num_features(self, name: str) -> int:
        """The number of features of one image, without reading them."""
        with self._lock:
            return self._reader(name).num_features(name)

    def attrs(self, name: str) -> dict[str, Any]:
        """The extra attributes stored with one image."""
        with self._lock:
            return self._reader(name).attrs(name)

    def iter(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, LocalFeatures]]:
        """Yield ``(name, features)`` one image at a time (all names when None)."""
        for name in self.names() if names is None else names:
            yield name, self.get(name)

    @property
    def path(self) -> Path:
        """What errors name: the file of a single shard, else the shards' folder."""
        if len(self.paths) == 1:
            return self.paths[0]
        return self.paths[0].parent if self.paths else Path(".")

    def __repr__(self) -> str:
        return f"FeatureSet({len(self.paths)} shards, {len(self)} images, dim={self.dim})"

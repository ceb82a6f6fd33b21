"""Global descriptors of a collection: one ``.npz`` per feature shard, rows in id order.

A shard's file holds ``names`` (its images, in id order from the shard's ``first`` id) and
``vectors`` (``n x D`` float32 unit rows). Nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from delfx.engine.extractor import Extractor
from delfx.errors import InputError
from delfx.extract import Job, read_job
from delfx.index.storage import load_arrays, save_arrays


def describe_jobs(extractor: Extractor, jobs: Sequence[Job], progress: bool) -> np.ndarray:
    """``N x D`` global descriptors of the jobs' photos, in job order."""

    def images() -> Iterator[np.ndarray]:
        for job in tqdm(
            jobs, desc="global", unit="img", leave=False, disable=None if progress else True
        ):
            yield read_job(job)[0]

    return extractor.global_vectors(images())


def write_vectors(path: Path, names: Sequence[str], vectors: np.ndarray) -> Path:
    """Write one shard's global descriptors (atomically)."""
    if len(names) != len(vectors):
        raise InputError(f"{path}: {len(names)} names for {len(vectors)} vectors")
    return save_arrays(
        path,
        {
            "names": np.asarray(list(names), dtype=np.str_),
            "vectors": np.ascontiguousarray(vectors, dtype=np.float32),
        },
    )


def read_matrix(folder: Path, shards: Sequence[Mapping[str, Any]], n_images: int) -> np.ndarray:
    """The ``n_images x D`` global matrix of a collection, row = image id.

    Raises:
        InputError: a shard without a global file, or files that do not cover the ids.
    """
    parts = []
    expect = 0
    for shard in shards:
        if not shard.get("global"):
            raise InputError(f"{folder}: shard {shard['features']} has no global descriptors")
        path = folder / shard["global"]
        arrays = load_arrays(path)
        vec = arrays.get("vectors")
        if vec is None or vec.ndim != 2 or vec.dtype != np.float32:
            raise InputError(f"{path}: expected a 'vectors' array of N x D float32")
        if int(shard.get("first", expect)) != expect or len(vec) != int(shard["n"]):
            raise InputError(f"{path}: holds {len(vec)} vectors where {shard['n']} were expected")
        parts.append(vec)
        expect += len(vec)
    if expect != n_images:
        raise InputError(f"{folder}: global descriptors of {expect} images for {n_images}")
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

"""Stage: train a local-descriptor index, add images from a feature store, save it; append later.

The index folder (:mod:`delfx.index.storage`) holds the trained model and one segment per batch
of added images. A build or an append commits its manifest last, so a killed run leaves the
previous index intact, and readers can search while images are appended.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from delfx.errors import InputError
from delfx.index import local
from delfx.index.local import IndexConfig, LocalIndex
from delfx.index.storage import IndexDir
from delfx.io.featurestore import FeatureReader

logger = logging.getLogger(__name__)

PRESETS = local.PRESETS


def _load_batch(
    reader: FeatureReader, names: Sequence[str], dim: int, allow_empty: bool
) -> list[np.ndarray]:
    out = []
    for name in names:
        desc = reader.descriptors(name)
        if desc.shape[0] == 0:
            if not allow_empty:
                raise InputError(
                    f"{reader.path}: image '{name}' has no features (pass --allow-empty to index "
                    "it as an image that never matches)"
                )
            logger.warning("%s: no features; indexed as an image that never matches", name)
            desc = np.zeros((0, dim), np.float32)
        elif desc.shape[1] != dim:
            raise InputError(
                f"{reader.path}: image '{name}' has {desc.shape[1]}-d descriptors; "
                f"the index expects {dim}-d"
            )
        out.append(desc)
    return out


def add_batches(
    index: LocalIndex,
    store: IndexDir,
    reader: FeatureReader,
    names: Sequence[str],
    *,
    batch_images: int,
    allow_empty: bool,
    progress: bool,
) -> tuple[LocalIndex, list[str]]:
    """Add ``names`` in batches, writing one segment file per batch.

    ``reader`` is a feature file or a :class:`~delfx.io.featureset.FeatureSet`.

    Returns:
        ``(index with the images added, the new segment file names)``.
    """
    dim = local.dim_of(index)
    files = []
    bar = tqdm(
        total=len(names),
        desc="indexing",
        unit="img",
        leave=False,
        disable=None if progress else True,
    )
    for start in range(0, len(names), batch_images):
        batch = list(names[start : start + batch_images])
        first = index.n_images
        index = index.add(_load_batch(reader, batch, dim, allow_empty))
        files.append(store.write_segment(local.segments_of(index)[-1], batch, first))
        bar.update(len(batch))
    bar.close()
    return index, files


def save_stats(store: IndexDir, index: LocalIndex, segments: Sequence[str]) -> str:
    """Write the index's derived statistics (idf, norms, γ) for ``segments``; the file name."""
    return store.write_stats(local.stats_of(index), segments, index.n_images)


def build(
    conf: IndexConfig,
    features: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    train_descriptors: np.ndarray | None = None,
    train_source: str = "",
    centroids: np.ndarray | None = None,
    model_from: str | os.PathLike[str] | None = None,
    names: Sequence[str] | None = None,
    batch_images: int = 2000,
    allow_empty: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train an index on ``train_descriptors`` and add the images of a feature store.

    Args:
        conf: index settings.
        features: the feature store (``.h5``) of the images to index.
        out_dir: the index folder to write.
        train_descriptors: ``N x D`` float32 descriptors to train the codebook on.
        train_source: where they come from (recorded in the manifest).
        centroids: a flat codebook trained on them already (HE, ASMK*), reused.
        model_from: an index folder whose trained model is reused instead of training (a shard
            of a run that :func:`delfx.merge_index.merge` joins); its kind must be ``conf``'s.
        names: store names to index, in id order (default: every ``db/`` entry).
        batch_images: images per segment.
        allow_empty: index images without features (they never match) instead of failing.
        overwrite: replace an existing index (or the files of a killed build). Only files the
            index wrote itself are deleted: the previous manifest's model and segments and
            leftovers under the index's own names; a non-empty folder that is not an index is
            refused even so.
        progress: progress bar.

    Returns:
        The index folder.
    """
    store = IndexDir(out_dir)
    store.check_new(overwrite)  # before the lock, which would leave a file in a refused folder
    timings: dict[str, float] = {}
    with FeatureReader(features) as reader, store.writing():
        previous = store.check_new(overwrite)  # again, now that no other writer can change it
        names = list(reader.names("db/") if names is None else names)
        if not names:
            raise InputError(f"{reader.path}: no images to index")
        t = time.perf_counter()
        if model_from is not None:
            index, conf, train_source, n_train = _reused_model(model_from, conf)
        elif train_descriptors is None:
            raise InputError(f"{store.path}: give training descriptors or a model to reuse")
        else:
            index = local.train(conf, train_descriptors, centroids)
            n_train = int(train_descriptors.shape[0])
        timings["train"] = time.perf_counter() - t
        meta, arrays = local.state_of(index)
        model = store.write_model(arrays)
        t = time.perf_counter()
        index, files = add_batches(
            index,
            store,
            reader,
            names,
            batch_images=batch_images,
            allow_empty=allow_empty,
            progress=progress,
        )
        timings["add"] = time.perf_counter() - t
        manifest: dict[str, Any] = {
            "kind": conf.kind,
            "config": asdict(conf),
            "meta": meta,
            "model": model,
            "segments": files,
            "n_images": index.n_images,
            "stats": save_stats(store, index, files),
            "train_source": train_source,
            "n_train_descriptors": n_train,
            "features": str(features),
            "timings": timings,
        }
        store.commit(manifest)
        # only files this index format wrote: the old manifest's, and killed writers' leftovers
        store.remove_unused(previous)
    logger.info("index %s: %d images, trained on %s", store.path, index.n_images, train_source)
    return store.path


def _reused_model(
    index_dir: str | os.PathLike[str], conf: IndexConfig
) -> tuple[LocalIndex, IndexConfig, str, int]:
    """The empty index of another index's model: ``(index, its config, source, n_train)``."""
    store = IndexDir(index_dir)
    other = store.manifest()
    if other.get("kind") != conf.kind:
        raise InputError(
            f"{Path(index_dir) / 'index.json'}: a {other.get('kind')} index; --kind is {conf.kind}"
        )
    meta, arrays = {**other["meta"], "n_images": 0}, store.read_model(other["model"])
    config = IndexConfig(**other["config"]) if isinstance(other.get("config"), dict) else conf
    source = f"model of {index_dir} ({other.get('train_source', '?')})"
    return local.restore(meta, arrays, [], 0), config, source, int(other["n_train_descriptors"])


def append(
    index_dir: str | os.PathLike[str],
    features: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    batch_images: int = 2000,
    allow_empty: bool = False,
    progress: bool = True,
) -> Path:
    """Add images to an existing index without rebuilding it (new segments, new manifest).

    Images already in the index (by name) are refused.
    """
    store = IndexDir(index_dir)
    with FeatureReader(features) as reader, store.writing():
        index, present, manifest = load(store.path)
        names = list(reader.names("db/") if names is None else names)
        dup = set(names) & set(present)
        if dup:
            raise InputError(f"{store.path}: image '{sorted(dup)[0]}' is already indexed")
        index, files = add_batches(
            index,
            store,
            reader,
            names,
            batch_images=batch_images,
            allow_empty=allow_empty,
            progress=progress,
        )
        meta, _ = local.state_of(index)
        store.commit(
            {
                **manifest,
                "meta": meta,
                "segments": manifest["segments"] + files,
                "n_images": index.n_images,
                "stats": save_stats(store, index, manifest["segments"] + files),
            }
        )
        store.remove_unused([manifest["stats"]] if manifest.get("stats") else [])
    return store.path


def load(
    index_dir: str | os.PathLike[str], *, mmap: bool = True
) -> tuple[LocalIndex, list[str], dict[str, Any]]:
    """Open a saved index.

    Args:
        index_dir: the index folder.
        mmap: memory-map the segments (default) instead of reading them.

    Returns:
        ``(index, image names in id order, manifest)``.
    """
    store = IndexDir(index_dir)
    manifest = store.manifest()  # checks the fields and that every file lies inside the folder
    arrays = store.read_model(manifest["model"])
    # checks that the segments' images cover 0..n_images-1 once
    segments, names = store.read_segments(manifest, mmap=mmap)
    stats = store.read_stats(manifest)
    index = local.restore(manifest["meta"], arrays, segments, manifest["n_images"], stats)
    return index, names, manifest


def merge_segments(index_dir: str | os.PathLike[str], *, chunk: int = 1 << 24) -> Path:
    """Merge all segments of an index folder into one, streaming (see :mod:`delfx.index.merge`).

    The postings, the statistics and therefore every score stay the same; a query then reads
    each of its lists in one piece. The old segment files are deleted after the commit.
    """
    from delfx.index.merge import merge_files

    store = IndexDir(index_dir)
    with store.writing():
        manifest = store.manifest()
        old = list(manifest["segments"])
        if len(old) <= 1:
            return store.path
        stats = store.read_stats(manifest)
        fname, _, _, _ = merge_files(store, old, chunk=chunk)
        new = {**manifest, "segments": [fname]}
        new.pop("format_version", None)
        if stats is not None:
            new["stats"] = store.write_stats(stats, [fname], manifest["n_images"])
        store.commit(new)
        store.remove_unused(old + ([manifest["stats"]] if manifest.get("stats") else []))
    logger.info("index %s: %d segments merged into one", store.path, len(old))
    return store.path

"""The writer of a collection: create, add, remove, compact (see :mod:`delfx.engine.manifest`).

Every writer takes the folder's lock, writes new files under names no committed manifest uses,
commits the manifest last and then deletes the files the new manifest no longer names. Killed
at any point, it leaves the collection as the last commit described it; a killed create
resumes its extraction on the next create.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from delfx.cluster.distributor import Distributor
from delfx.engine import manifest as mf
from delfx.engine import sharded
from delfx.engine.folder import check_new, locked
from delfx.engine.photos import photo_jobs
from delfx.engine.spec import EngineSpec
from delfx.engine.vectors import write_vectors
from delfx.errors import InputError
from delfx.index import local
from delfx.index.storage import IndexDir
from delfx.io.cache_key import model_id
from delfx.io.descriptor_sample import load_descriptors
from delfx.io.featureset import FeatureSet
from delfx.io.featurestore import FeatureReader, FeatureWriter

logger = logging.getLogger(__name__)

#: Fewest training descriptors per visual word when a collection sizes its own codebook.
POINTS_PER_WORD = 64
#: Smallest codebook a collection sizes for itself.
MIN_WORDS = 256


def codebook_words(conf: local.IndexConfig, n_train: int, given: bool) -> local.IndexConfig:
    """Size a flat codebook for a collection: at most the preset's words, at least
    :data:`POINTS_PER_WORD` training descriptors per word (a power of two >= :data:`MIN_WORDS`),
    unless the size was ``given`` explicitly."""
    if given or conf.kind == "voctree":
        return conf
    words = MIN_WORDS
    while words * 2 * POINTS_PER_WORD <= n_train and words * 2 <= conf.n_words:
        words *= 2
    # faiss asks for at least 39 points per centroid
    return replace(
        conf, n_words=min(words, conf.n_words), points_per_word=max(40, conf.points_per_word)
    )


#: Images per index segment written by create, add and compact (compact then merges them).
BATCH_IMAGES = 2000


def _add_images(
    index: local.LocalIndex,
    folder: Path,
    feats: FeatureSet,
    names: Sequence[str],
    progress: bool,
) -> tuple[local.LocalIndex, list[str]]:
    from delfx.build_index import add_batches

    store = IndexDir(folder / mf.INDEX)
    return add_batches(
        index, store, feats, names, batch_images=BATCH_IMAGES, allow_empty=True, progress=progress
    )


def create(
    spec: EngineSpec,
    folder: str | os.PathLike[str],
    photos: str | os.PathLike[str],
    *,
    codebook_from: str | os.PathLike[str] | None = None,
    codebook_size_given: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    distributor: Distributor | None = None,
) -> Path:
    """Extract, train the codebook and index every photo under ``photos``.

    Args:
        spec: the engine (a SIFT pipeline or a global hybrid of one).
        folder: the collection folder to write.
        photos: the folder of photos; names are paths relative to it.
        codebook_from: a feature file (``.h5``) of other images to train the codebook on
            (default: the photos themselves).
        codebook_size_given: keep ``spec.pipeline.index.n_words`` as is (else sized to the data).
        overwrite: replace an existing collection.
        workers: extraction processes (default: every core).
        device: torch device of the global network.
        progress: progress bars.
        distributor: split the photos in shards, run here, as one ``--shard I/N`` slice (which
            extracts its shard and returns) or on Ray (:mod:`delfx.engine.sharded`); the
            collection equals the one a single process builds.

    Returns:
        The collection folder.
    """
    folder, photos = Path(folder), Path(photos)
    check_new(folder, overwrite)
    jobs = photo_jobs([photos], root=photos)
    dist = sharded.distributor_for(distributor, folder)
    timings: dict[str, float] = {}
    with locked(folder, shared=dist.only is not None):
        check_new(folder, overwrite)
        previous = mf.read(folder) if mf.is_collection(folder) else None
        number = 0 if previous is None else previous["next_shard"]
        t = time.perf_counter()
        # resumes the shards of a killed create (same names, same config); an overwrite starts anew
        shards, entries = sharded.extract_new(
            folder, spec, jobs, dist, number=number, first_id=0, resume=previous is None,
            workers=workers, device=device, progress=progress, overwrite=overwrite,
        )  # fmt: skip
        if dist.only is not None:
            return folder  # a --shard I/N slice: its shard is done
        timings["extract"] = time.perf_counter() - t
        names = [j.name for j in jobs]
        t = time.perf_counter()
        conf = spec.pipeline.index
        with FeatureSet([folder / e["features"] for e in entries]) as feats:
            if codebook_from is None:
                source, train_names, reader = "the collection's photos", names, feats
                train, _ = load_descriptors(reader, train_names, conf.train_per_image, conf.seed)
            else:
                with FeatureReader(codebook_from) as other:
                    source = f"features {codebook_from}"
                    train, _ = load_descriptors(
                        other, other.names(), conf.train_per_image, conf.seed
                    )
            if train.shape[0] == 0:
                raise InputError(f"{photos}: no features found in any photo to train on")
            conf = codebook_words(conf, train.shape[0], codebook_size_given)
            index = local.train(conf, train)
            timings["codebook"] = time.perf_counter() - t
            meta_empty, arrays = local.state_of(index)
            store = IndexDir(folder / mf.INDEX)
            store.path.mkdir(parents=True, exist_ok=True)
            model = store.write_model(arrays)
            t = time.perf_counter()
            if shards is None:
                index, segments = _add_images(index, folder, feats, names, progress)
            else:
                index, segments = sharded.index(
                    store, index, model, shards.shards, dist, batch_images=BATCH_IMAGES,
                    device=device, progress=progress,
                )  # fmt: skip
            timings["index"] = time.perf_counter() - t
        meta, _ = local.state_of(index)
        manifest = {
            "spec": replace_index(spec, conf).to_dict(),
            "global_model": None if spec.global_opts is None else model_id(spec.global_opts.model),
            "photos": str(photos.resolve()),
            "created": mf.now(),
            "shards": entries,
            "next_shard": number + len(entries),
            "index": {
                "kind": conf.kind,
                "config": asdict(conf),
                "meta": meta,
                "meta_empty": meta_empty,
                "model": model,
                "segments": segments,
                "n_images": index.n_images,
                "stats": save_stats(store, index, segments),
                "codebook": source,
                "n_train_descriptors": int(train.shape[0]),
            },
            "removed": [],
            "timings": timings,
        }
        mf.write(folder, manifest)
        _clean(folder, manifest)
    logger.info("collection %s: %d photos (%s)", folder, len(names), spec.name)
    return folder


def replace_index(spec: EngineSpec, conf: local.IndexConfig) -> EngineSpec:
    """``spec`` with its index settings replaced (the codebook size a create chose)."""
    return replace(spec, pipeline=replace(spec.pipeline, index=conf))


def save_stats(store: IndexDir, index: local.LocalIndex, segments: Sequence[str]) -> str:
    """Write the index's derived statistics for ``segments`` (see :mod:`delfx.build_index`)."""
    from delfx.build_index import save_stats as save

    return save(store, index, segments)


def _clean(folder: Path, manifest: dict[str, Any]) -> None:
    for path in mf.unused_files(folder, manifest):
        path.unlink(missing_ok=True)
        logger.debug("removed %s", path)


def _load_index(folder: Path, manifest: dict[str, Any], meta_key: str = "meta") -> Any:
    store = IndexDir(folder / mf.INDEX)
    idx = manifest["index"]
    arrays = store.read_model(idx["model"])
    if meta_key == "meta_empty":
        return local.restore(idx["meta_empty"], arrays, [], 0), []
    segments, names = store.read_segments(idx)
    index = local.restore(idx["meta"], arrays, segments, idx["n_images"], store.read_stats(idx))
    return index, names


def add(
    folder: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    *,
    replace_existing: bool = False,
    workers: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    distributor: Distributor | None = None,
    on_commit: Callable[[dict[str, Any]], None] | None = None,
) -> list[str]:
    """Add photos (files or folders) to a collection; returns the names added.

    A photo under the folder the collection was created from is named relative to it, a photo
    in a given folder relative to that folder, a file given alone by its file name.
    ``distributor`` spreads the new photos in shards as :func:`create` does. ``on_commit`` is
    called with the new manifest just before it is written, inside the writer lock (the service
    records there which commit carries its uploads).

    Raises:
        InputError: a name that is already in the collection (unless ``replace_existing``, which
            removes the old image), two photos of one name, or no photo at all.
    """
    from delfx.engine.spec import from_dict

    folder = Path(folder)
    dist = sharded.distributor_for(distributor, folder)
    with locked(folder, shared=dist.only is not None):
        manifest = mf.read(folder)
        spec = from_dict(manifest["spec"], str(folder / mf.MANIFEST))
        jobs = photo_jobs([Path(p) for p in paths], root=Path(manifest["photos"]))
        index, names = _load_index(folder, manifest)
        live = mf.live_ids(names, manifest["removed"])
        removed = list(manifest["removed"])
        for job in jobs:
            if job.name in live:
                if not replace_existing:
                    raise InputError(
                        f"{job.path}: '{job.name}' is already in {folder} "
                        "(pass --replace to replace it)"
                    )
                removed.append(live[job.name])
        new = [j.name for j in jobs]
        shards, entries = sharded.extract_new(
            folder, spec, jobs, dist, number=manifest["next_shard"], first_id=len(names),
            resume=False, workers=workers, device=device, progress=progress,
        )  # fmt: skip
        if dist.only is not None:
            return new  # a --shard I/N slice: its shard is done
        shard_paths = [folder / s["features"] for s in [*manifest["shards"], *entries]]
        if shards is None:
            with FeatureSet(shard_paths) as feats:
                index, segments = _add_images(index, folder, feats, new, progress)
        else:
            index, segments = sharded.index(
                IndexDir(folder / mf.INDEX), index, manifest["index"]["model"], shards.shards,
                dist, batch_images=BATCH_IMAGES, device=device, progress=progress,
            )  # fmt: skip
        meta, _ = local.state_of(index)
        updated = {
            **manifest,
            "shards": [*manifest["shards"], *entries],
            "next_shard": manifest["next_shard"] + len(entries),
            "index": {
                **manifest["index"],
                "meta": meta,
                "segments": [*manifest["index"]["segments"], *segments],
                "n_images": index.n_images,
                "stats": save_stats(
                    IndexDir(folder / mf.INDEX),
                    index,
                    [*manifest["index"]["segments"], *segments],
                ),
            },
            "removed": sorted(removed),
        }
        if on_commit is not None:
            on_commit(updated)
        mf.write(folder, updated)
        _clean(folder, updated)
    return new


def remove(folder: str | os.PathLike[str], names: Sequence[str]) -> int:
    """Hide images at once (tombstones); :func:`compact` drops them from disk.

    Returns:
        The number of images removed.

    Raises:
        InputError: a name that is not in the collection (nothing is removed then).
    """
    folder = Path(folder)
    with locked(folder):
        manifest = mf.read(folder)
        _, all_names = _load_index(folder, manifest)
        live = mf.live_ids(all_names, manifest["removed"])
        missing = [n for n in names if n not in live]
        if missing:
            raise InputError(f"{folder}: no image named '{missing[0]}' in the collection")
        ids = sorted({*manifest["removed"], *(live[n] for n in names)})
        mf.write(folder, {**manifest, "removed": ids})
    return len(set(names))


def compact(folder: str | os.PathLike[str], *, progress: bool = True) -> int:
    """Rewrite the collection without its removed images: one shard, a rebuilt index of one
    segment (same codebook). Returns the number of images dropped from disk."""
    from delfx.engine.vectors import read_matrix

    folder = Path(folder)
    with locked(folder):
        manifest = mf.read(folder)
        _, names = _load_index(folder, manifest)
        live = mf.live_ids(names, manifest["removed"])
        keep = sorted(live.values())
        keep_names = [names[i] for i in keep]
        number = manifest["next_shard"]
        feat_name, glob_name = mf.shard_names(number)
        shard_paths = [folder / s["features"] for s in manifest["shards"]]
        with FeatureSet(shard_paths) as feats:
            with FeatureWriter(folder / feat_name, feats.config, resume=False) as writer:
                for name in keep_names:
                    writer.write(name, feats.get(name), feats.attrs(name))
        shard: dict[str, Any] = {
            "features": feat_name, "global": None, "n": len(keep), "first": 0,
        }  # fmt: skip
        if any(s.get("global") for s in manifest["shards"]):
            matrix = read_matrix(folder, manifest["shards"], len(names))
            write_vectors(folder / glob_name, keep_names, matrix[keep])
            shard["global"] = glob_name
        index, _ = _load_index(folder, manifest, "meta_empty")
        with FeatureSet([folder / feat_name]) as feats:
            index, segments = _add_images(index, folder, feats, keep_names, progress)
        if len(segments) > 1:  # one segment: each query list is read in one piece
            from delfx.index.merge import merge_files

            segments = [merge_files(IndexDir(folder / mf.INDEX), segments)[0]]
        meta, _ = local.state_of(index)
        updated = {
            **manifest,
            "shards": [shard],
            "next_shard": number + 1,
            "index": {
                **manifest["index"],
                "meta": meta,
                "segments": segments,
                "n_images": index.n_images,
                "stats": save_stats(IndexDir(folder / mf.INDEX), index, segments),
            },  # fmt: skip
            "removed": [],
        }
        mf.write(folder, updated)
        _clean(folder, updated)
    return len(names) - len(keep)


__all__ = ["add", "compact", "create", "remove"]

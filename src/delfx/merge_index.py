"""Stage: index folders built from shards of one image list, with one model, merged into one.

On a cluster without a shared collection, each node indexes its shard into its own index
folder (``delfx index build --model-from TRAINED``: the codebook is trained once and every
shard reuses it, so the postings of all shards live in one vocabulary). :func:`merge` then
writes one index: the model, one segment holding every shard's lists concatenated word by word
(shard ``k``'s image ids shifted by the images of shards ``0 .. k-1``, streamed in bounded
memory by :mod:`delfx.index.merge`), and the statistics (idf, norms, γ) recomputed over all of
it. Postings, statistics and rankings equal those of one build over all the images in order.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from delfx.errors import InputError
from delfx.index import local
from delfx.index.merge import write_merged
from delfx.index.storage import IndexDir

logger = logging.getLogger(__name__)


def model_digest(arrays: dict[str, np.ndarray]) -> str:
    """A digest of model arrays (names, dtypes, shapes and bytes): equal models, equal digests."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def merge(
    out_dir: str | os.PathLike[str],
    shard_dirs: Sequence[str | os.PathLike[str]],
    *,
    overwrite: bool = False,
    chunk: int = 1 << 24,
) -> Path:
    """Merge index folders of consecutive shards (same model) into one index at ``out_dir``.

    Args:
        out_dir: the index folder to write.
        shard_dirs: the shards' index folders, in image-id order.
        overwrite: replace an existing index at ``out_dir``.
        chunk: postings held in memory at a time.

    Returns:
        ``out_dir``.

    Raises:
        InputError: fewer than two shards, shards of another model or kind, or an image name in
            two shards.
    """
    if len(shard_dirs) < 2:
        raise InputError("index merge: give at least two shard index folders")
    shards = [IndexDir(d) for d in shard_dirs]
    manifests = [s.manifest() for s in shards]
    models = [s.read_model(m["model"]) for s, m in zip(shards, manifests, strict=True)]
    digest = model_digest(models[0])
    for s, m, arrays in zip(shards, manifests, models, strict=True):
        if m["kind"] != manifests[0]["kind"] or model_digest(arrays) != digest:
            raise InputError(
                f"{s.path}: built with another model than {shards[0].path} (build every shard "
                "with --model-from one trained index)"
            )
    read, shifts, seen, offset = [], [], set(), 0
    for s, m in zip(shards, manifests, strict=True):
        segs, names = s.read_segments(m)
        dup = seen.intersection(names)
        if dup:
            raise InputError(f"{s.path}: image '{sorted(dup)[0]}' is in two shards")
        seen.update(names)
        for fname in m["segments"]:
            seg, seg_names, first = s.read_segment(fname)
            read.append((seg, seg_names, first))
            shifts.append(offset)
        offset += m["n_images"]
    order = sorted(range(len(read)), key=lambda i: read[i][2] + shifts[i])
    read, shifts = [read[i] for i in order], [shifts[i] for i in order]
    store = IndexDir(out_dir)
    store.check_new(overwrite)
    with store.writing():
        previous = store.check_new(overwrite)
        model = store.write_model(models[0])
        fname, seg, _, _ = write_merged(store, read, shifts, chunk=chunk)
        meta = {**manifests[0]["meta"], "n_images": offset}
        index = local.restore(meta, models[0], [seg], offset)
        meta, _ = local.state_of(index)
        manifest: dict[str, Any] = {
            **{k: v for k, v in manifests[0].items() if k not in ("format_version", "timings")},
            "meta": meta,
            "model": model,
            "segments": [fname],
            "n_images": offset,
            "stats": store.write_stats(local.stats_of(index), [fname], offset),
            "features": [str(m.get("features")) for m in manifests],
            "merged_from": [str(s.path) for s in shards],
        }
        store.commit(manifest)
        store.remove_unused(previous)
    logger.info("index %s: %d shards merged, %d images", store.path, len(shards), offset)
    return store.path

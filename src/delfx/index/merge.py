"""Merge index segments on disk, streaming: many small segments become one, in bounded memory.

Each add writes a segment, and a query pays a random access per (segment, query word): an
index built from a thousand batches reads its lists in a thousand pieces. :func:`merge_files`
writes the postings of consecutive segments as one segment file, word range by word range
(about ``chunk`` postings in memory at a time), with the lists of each word in segment order,
which is what :meth:`delfx.index.invfile.InvertedFile.compact` gives in memory. The result is an
ordinary segment file (an uncompressed ``.npz``, memory-mapped when read), written under a
temporary name and renamed.

Shapes: ``W`` words, ``P`` postings of the merged segment.
"""

from __future__ import annotations

import logging
import os
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from delfx.errors import InputError
from delfx.index.invfile import Segment
from delfx.index.storage import _PAYLOAD, IndexDir
from delfx.io.crashpoints import before_commit

logger = logging.getLogger(__name__)


def _write_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple, chunks) -> None:
    """Write one ``.npy`` member from an iterator of arrays (row blocks) of ``dtype``."""
    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        np.lib.format.write_array_header_2_0(out, {**header, "shape": shape})
        for block in chunks:
            out.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def _word_ranges(offsets: Sequence[np.ndarray], n_words: int, chunk: int) -> list[tuple[int, int]]:
    """Consecutive word ranges holding about ``chunk`` postings over all segments."""
    total = np.zeros(n_words + 1, dtype=np.int64)
    for off in offsets:
        total += off
    bounds = [0]
    while bounds[-1] < n_words:
        a = bounds[-1]
        b = int(np.searchsorted(total, total[a] + chunk, side="right")) - 1
        bounds.append(min(max(b, a + 1), n_words))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _blocks(segments: Sequence[Segment], field: str | None, ranges, shifts: Sequence[int]):
    """The merged array ``field`` (None: image ids, each segment's shifted by its entry of
    ``shifts``) range by range, lists in segment order."""
    for a, b in ranges:
        parts, words = [], []
        for seg, shift in zip(segments, shifts, strict=True):
            off = np.asarray(seg.offsets)
            arr = seg.image_ids if field is None else seg.payload[field]
            part = np.asarray(arr[off[a] : off[b]])
            parts.append(part + np.uint32(shift) if field is None and shift else part)
            words.append(np.repeat(np.arange(a, b), np.diff(off[a : b + 1])))
        order = np.argsort(np.concatenate(words), kind="stable")  # by word, segments in order
        yield np.concatenate(parts)[order]


def merge_files(
    store: IndexDir, files: Sequence[str], *, chunk: int = 1 << 24
) -> tuple[str, Segment, list[str], int]:
    """Merge consecutive segment files of an index into one new segment file.

    Args:
        store: the index folder (the caller holds its writer lock).
        files: segment file names whose images are consecutive ids, in id order.
        chunk: postings held in memory at a time.

    Returns:
        ``(new file name, the new segment memory-mapped, its image names, its first id)``.
        The old files are left for the caller to drop from the manifest and delete.
    """
    read = [store.read_segment(f) for f in files]
    first = read[0][2]
    expect = first
    for fname, (_, names, start) in zip(files, read, strict=True):
        if start != expect:
            raise InputError(f"{store.path / fname}: segments to merge must hold consecutive ids")
        expect = start + len(names)
    return write_merged(store, read, [0] * len(read), chunk=chunk)


def write_merged(
    store: IndexDir,
    read: Sequence[tuple[Segment, list[str], int]],
    shifts: Sequence[int],
    *,
    chunk: int = 1 << 24,
) -> tuple[str, Segment, list[str], int]:
    """Write segments (``(segment, names, first id)`` as read, ids consecutive once shifted by
    ``shifts``) as one new segment file of ``store``; returns as :func:`merge_files`."""
    segments = [r[0] for r in read]
    first = read[0][2] + shifts[0]
    n_words = segments[0].offsets.size - 1
    fields = sorted(segments[0].payload)
    if any(seg.offsets.size != n_words + 1 or sorted(seg.payload) != fields for seg in segments):
        raise InputError(f"{store.path}: segments to merge differ in vocabulary or payload")
    offsets = [np.asarray(s.offsets, dtype=np.int64) for s in segments]
    ranges = _word_ranges(offsets, n_words, chunk)
    n_post = sum(s.n_postings for s in segments)
    fname = f"seg-{uuid.uuid4().hex[:12]}.npz"
    path = store.path / fname
    tmp = store.path / f".{fname}.merge_{uuid.uuid4().hex[:6]}.tmp"
    names = [n for _, seg_names, _ in read for n in seg_names]
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            merged_offsets = np.sum(offsets, axis=0)
            _write_member(zf, "offsets", np.dtype(np.int64), merged_offsets.shape,
                          [merged_offsets])  # fmt: skip
            _write_member(zf, "image_ids", np.dtype(np.uint32), (n_post,),
                          _blocks(segments, None, ranges, shifts))  # fmt: skip
            for field in fields:
                arr = segments[0].payload[field]
                _write_member(zf, _PAYLOAD + field, arr.dtype, (n_post, *arr.shape[1:]),
                              _blocks(segments, field, ranges, shifts))  # fmt: skip
            _write_member(zf, "names", np.asarray(names, dtype=np.str_).dtype, (len(names),),
                          [np.asarray(names, dtype=np.str_)])  # fmt: skip
            _write_member(zf, "first_id", np.dtype(np.int64), (), [np.asarray(first)])
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        before_commit(path)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    seg, seg_names, seg_first = store.read_segment(fname)
    logger.info("merged %d segments (%d postings) into %s", len(read), n_post, fname)
    return fname, seg, seg_names, seg_first

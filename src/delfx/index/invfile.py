"""An inverted file in CSR segments, shared by the vocabulary tree, Hamming embedding and ASMK.

Postings are grouped by visual word. Each posting names an image (a global ``int64`` id) and
carries named payload arrays (a TF-IDF weight, a binary signature, an aggregated residual...).
Images are added in batches; each batch becomes one immutable CSR *segment*, and all postings
of one image live in one segment. Adding images therefore never rewrites what is there, a
reader can keep using the segments it loaded while a writer adds new ones, and ``compact``
merges segments when wanted. Scoring walks only the lists of the query's words.

Shapes: ``P`` postings in a segment, ``W`` words, ``H`` hits returned by :meth:`lookup`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from delfx.errors import InputError
from delfx.io.npzmap import is_mapped


@dataclass(frozen=True)
class Segment:
    """Postings of a batch of images, sorted by word.

    Attributes:
        offsets: ``(W + 1,)`` int64; word ``w``'s postings are ``offsets[w]:offsets[w + 1]``.
        image_ids: ``(P,)`` uint32 global image ids (4 bytes a posting; up to 2**32 images).
        payload: name -> ``(P, ...)`` array aligned with ``image_ids``.
    """

    offsets: np.ndarray
    image_ids: np.ndarray
    payload: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_postings(self) -> int:
        """Number of postings ``P``."""
        return int(self.image_ids.shape[0])

    def nbytes(self) -> int:
        """Memory held by the segment's arrays, in bytes."""
        return int(
            self.offsets.nbytes
            + self.image_ids.nbytes
            + sum(a.nbytes for a in self.payload.values())
        )


def build_segment(
    words: np.ndarray,
    image_ids: np.ndarray,
    n_words: int,
    payload: Mapping[str, np.ndarray] | None = None,
) -> Segment:
    """Group postings by word into a CSR segment.

    Args:
        words: ``(P,)`` word id of each posting, in ``[0, n_words)``.
        image_ids: ``(P,)`` image id of each posting.
        n_words: vocabulary size ``W``.
        payload: name -> ``(P, ...)`` arrays.

    Returns:
        The segment; postings of a word keep their input order (stable sort).
    """
    words = np.asarray(words, dtype=np.int64).reshape(-1)
    image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    payload = dict(payload or {})
    if words.shape != image_ids.shape:
        raise InputError(f"words {words.shape} and image ids {image_ids.shape} differ in length")
    if words.size and (words.min() < 0 or words.max() >= n_words):
        raise InputError(f"word id out of range [0, {n_words})")
    for name, arr in payload.items():
        if arr.shape[0] != words.size:
            raise InputError(f"payload '{name}' has {arr.shape[0]} rows for {words.size} postings")
    if image_ids.size and (image_ids.min() < 0 or image_ids.max() >= 2**32):
        raise InputError("image id out of range [0, 2**32)")
    order = np.argsort(words, kind="stable")
    offsets = np.zeros(n_words + 1, dtype=np.int64)
    np.cumsum(np.bincount(words, minlength=n_words), out=offsets[1:])
    return Segment(
        offsets,
        image_ids[order].astype(np.uint32),
        {k: np.ascontiguousarray(v[order]) for k, v in payload.items()},
    )


@dataclass(frozen=True)
class Hits:
    """Postings found for a list of query words.

    Attributes:
        query_pos: ``(H,)`` index into the query-word list that each hit answers.
        image_ids: ``(H,)`` image id of each hit.
        payload: name -> ``(H, ...)`` payload of each hit.
    """

    query_pos: np.ndarray
    image_ids: np.ndarray
    payload: dict[str, np.ndarray]


def _gather(offsets: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posting indices of ``words`` in one segment, and the query position of each."""
    starts, ends = offsets[words], offsets[words + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pos = np.repeat(np.arange(words.size, dtype=np.int64), lengths)
    # index = start of its list + rank within the list
    first = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64) - np.repeat(first, lengths) + np.repeat(starts, lengths)
    return idx, pos


class InvertedFile:
    """Segments of postings over a fixed vocabulary.

    Args:
        n_words: vocabulary size ``W``.
        segments: existing segments, oldest first.
    """

    def __init__(self, n_words: int, segments: Sequence[Segment] = ()):
        self.n_words = int(n_words)
        self.segments: tuple[Segment, ...] = tuple(segments)
        for seg in self.segments:
            if seg.offsets.shape != (self.n_words + 1,):
                raise InputError(f"segment built for {seg.offsets.size - 1} words, not {n_words}")

    def add(self, segment: Segment) -> InvertedFile:
        """A new inverted file with ``segment`` appended (this one is unchanged)."""
        return InvertedFile(self.n_words, (*self.segments, segment))

    @property
    def n_postings(self) -> int:
        """Postings in all segments."""
        return sum(s.n_postings for s in self.segments)

    def nbytes(self) -> int:
        """Memory held by all segments, in bytes."""
        return sum(s.nbytes() for s in self.segments)

    def lookup(self, words: np.ndarray, fields: Sequence[str] | None = None) -> Hits:
        """All postings of the given words, over every segment.

        Args:
            words: ``(Q,)`` word ids (repeats allowed; each is looked up).
            fields: payload names to return (all when None).

        Returns:
            :class:`Hits` with one entry per posting found.
        """
        words = np.asarray(words, dtype=np.int64).reshape(-1)
        if words.size and (words.min() < 0 or words.max() >= self.n_words):
            raise InputError(f"query word id out of range [0, {self.n_words})")
        parts_pos, parts_ids, parts_payload = [], [], []
        for seg in self.segments:
            idx, pos = _gather(seg.offsets, words)
            names = seg.payload.keys() if fields is None else fields
            parts_pos.append(pos)
            parts_ids.append(seg.image_ids[idx].astype(np.int64))
            parts_payload.append({k: seg.payload[k][idx] for k in names})
        if not parts_pos:
            return Hits(np.zeros(0, np.int64), np.zeros(0, np.int64), {})
        payload = {k: np.concatenate([p[k] for p in parts_payload]) for k in parts_payload[0]}
        return Hits(np.concatenate(parts_pos), np.concatenate(parts_ids), payload)

    def document_frequency(self) -> np.ndarray:
        """``(W,)`` int64 number of distinct images with at least one posting in each word."""
        df = np.zeros(self.n_words, dtype=np.int64)
        for seg in self.segments:
            word_of = np.repeat(np.arange(self.n_words, dtype=np.int64), np.diff(seg.offsets))
            if word_of.size == 0:
                continue
            ids = seg.image_ids.astype(np.int64)
            span = int(ids.max()) + 1
            pairs = np.unique(word_of * span + ids)
            df += np.bincount(pairs // span, minlength=self.n_words)
        return df

    def compact(self) -> InvertedFile:
        """Merge all segments into one (same postings, same per-word order of images)."""
        if len(self.segments) <= 1:
            return self
        words = np.concatenate(
            [np.repeat(np.arange(self.n_words), np.diff(s.offsets)) for s in self.segments]
        )
        ids = np.concatenate([s.image_ids.astype(np.int64) for s in self.segments])
        names = list(self.segments[0].payload)
        payload = {k: np.concatenate([s.payload[k] for s in self.segments]) for k in names}
        return InvertedFile(self.n_words, (build_segment(words, ids, self.n_words, payload),))


def accumulate(image_ids: np.ndarray, values: np.ndarray, n_images: int) -> np.ndarray:
    """Sum ``values`` per image: the score vector of a query.

    Args:
        image_ids: ``(H,)`` ids in ``[0, n_images)``.
        values: ``(H,)`` contributions.
        n_images: number of images.

    Returns:
        ``(n_images,)`` float64 scores.
    """
    return np.bincount(image_ids, weights=values, minlength=n_images).astype(np.float64)


def word_image_runs(segment: Segment, n_words: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (word, image) pairs of a segment and their posting counts.

    Returns:
        ``(R,)`` words, ``(R,)`` image ids and ``(R,)`` counts.
    """
    ids = segment.image_ids
    if ids.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    word_of = np.repeat(np.arange(n_words, dtype=np.int64), np.diff(segment.offsets))
    same_word = word_of[1:] == word_of[:-1]
    if not np.all((ids[1:] >= ids[:-1]) | ~same_word):  # not image-ordered within words
        order = np.lexsort((ids, word_of))
        word_of, ids = word_of[order], ids[order]
        same_word = word_of[1:] == word_of[:-1]
    new = np.ones(ids.size, dtype=bool)
    new[1:] = ~same_word | (ids[1:] != ids[:-1])
    starts = np.flatnonzero(new)
    return word_of[starts], ids[starts], np.diff(np.append(starts, ids.size))


def word_chunks(ivf: InvertedFile, words: np.ndarray, max_hits: int = 1 << 20) -> list[slice]:
    """Split query words into consecutive runs of at most ``max_hits`` postings each.

    Scoring chunk by chunk bounds a query's temporaries (a 100k-image HE query touches ~50M
    postings) and keeps them cache- and allocator-friendly (about 2x faster than one pass); a
    word longer than ``max_hits`` is a chunk of its own.
    """
    if words.size == 0 or not ivf.segments:
        return []
    cum = np.cumsum(sum(np.diff(s.offsets)[words] for s in ivf.segments))
    cuts = np.searchsorted(cum, np.arange(max_hits, int(cum[-1]), max_hits), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [words.size]]))
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def segment_ids_bound(segments: Sequence[Segment]) -> int:
    """One past the largest image id in the segments held in memory (0 when empty).

    Memory-mapped segments are skipped (reading all their ids would defeat the map); the scan
    kernels check every id they meet against the index instead.
    """
    return max(
        (
            int(s.image_ids.max()) + 1
            for s in segments
            if s.n_postings and not is_mapped(s.image_ids)
        ),
        default=0,
    )


# ---- the index ------------------------------------------------------------------------------

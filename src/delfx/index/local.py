"""One face over the three local-descriptor indexes: vocabulary tree, HE and ASMK*.

Every index is immutable: ``add(descriptor_lists)`` returns a new index with one more
inverted-file segment, ``search(descriptors, top_k)`` returns ``(ids, scores)`` and
``words(descriptors)`` the visual word of each descriptor (for word-based matching).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from delfx.errors import InputError
from delfx.index.asmk import ASMKIndex
from delfx.index.bow import TreeIndex
from delfx.index.he import HEIndex
from delfx.index.invfile import Segment
from delfx.index.kmeans import Quantizer, train_flat
from delfx.index.voctree import train_tree

KINDS = ("voctree", "he", "asmk")


class LocalIndex(Protocol):
    """What the stages need of an index."""

    n_images: int

    def add(self, descriptor_lists: Sequence[np.ndarray]) -> LocalIndex: ...

    def search(
        self, descriptors: np.ndarray, top_k: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def words(self, descriptors: np.ndarray) -> np.ndarray: ...

    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class IndexConfig:
    """How to train an index.

    Attributes:
        kind: ``voctree``, ``he`` or ``asmk``.
        branch: vocabulary tree branching factor.
        height: vocabulary tree height.
        n_words: flat codebook size (HE, ASMK).
        kmeans_iters: k-means iterations.
        points_per_word: k-means trains on at most this many points per word (subsampled).
        ma: query-side multiple assignment (HE, ASMK).
        train_per_image: descriptors drawn per training image (None: all).
        seed: seed of sampling and k-means.
        quantizer: nearest-word search of codebooks of 4096 words or more (HE, ASMK):
            ``ivf`` (faiss IVF over the words) or ``hnsw`` (an HNSW graph, faster at 64k-256k).
    """

    kind: str = "asmk"
    branch: int = 10
    height: int = 6
    n_words: int = 16384
    kmeans_iters: int = 10
    points_per_word: int = 32
    ma: int = 5
    train_per_image: int | None = 1000
    seed: int = 0
    quantizer: str = "ivf"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"index kind '{self.kind}': expected one of {', '.join(KINDS)}")
        if self.quantizer not in Quantizer.KINDS:
            raise InputError(
                f"quantizer '{self.quantizer}': expected one of {', '.join(Quantizer.KINDS)}"
            )
        # named as the command line spells them (delfx index build / delfx run flags)
        least = (
            ("tree-branch", self.branch, 2),
            ("tree-height", self.height, 1),
            ("codebook-size", self.n_words, 2),
            ("kmeans-iters", self.kmeans_iters, 1),
            ("points-per-word", self.points_per_word, 1),
            ("multiple-assignment", self.ma, 1),
            ("train-per-image", 1 if self.train_per_image is None else self.train_per_image, 1),
        )
        for name, value, low in least:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputError(f"{name} must be an integer, got {value!r}")
            if value < low:
                raise InputError(f"{name} must be at least {low}, got {value}")


PRESETS: dict[str, IndexConfig] = {
    "voctree": IndexConfig(kind="voctree", branch=10, height=6),
    "he": IndexConfig(kind="he", n_words=16384, ma=3),
    "asmk": IndexConfig(kind="asmk", n_words=16384, ma=5),
}


def codebook_key(conf: IndexConfig) -> list[Any]:
    """The settings a flat codebook depends on (HE and ASMK* share a codebook of equal key)."""
    return [conf.n_words, conf.kmeans_iters, conf.points_per_word, conf.train_per_image, conf.seed]


def train_codebook(conf: IndexConfig, descriptors: np.ndarray) -> np.ndarray:
    """The flat codebook of an HE or ASMK* index: ``n_words x D`` float32 k-means centroids.

    Raises:
        InputError: fewer training descriptors than words.
    """
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    n_words = conf.n_words
    if x.shape[0] < n_words:
        raise InputError(
            f"codebook: {x.shape[0]} training descriptors for {n_words} words; "
            "use more training images or fewer words"
        )
    return train_flat(
        x,
        n_words,
        niter=conf.kmeans_iters,
        seed=conf.seed,
        max_points_per_centroid=conf.points_per_word,
    )


def train(
    conf: IndexConfig, descriptors: np.ndarray, centroids: np.ndarray | None = None
) -> LocalIndex:
    """Train an empty index of ``conf.kind`` on ``N x D`` float32 descriptors.

    Args:
        conf: the index settings.
        descriptors: the training descriptors.
        centroids: a flat codebook already trained with :func:`train_codebook` on the same
            descriptors and settings (HE and ASMK* only), reused instead of retrained.
    """
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    if conf.kind == "voctree":
        tree = train_tree(x, conf.branch, conf.height, seed=conf.seed, niter=conf.kmeans_iters)
        return TreeIndex(tree)
    if centroids is None:
        centroids = train_codebook(conf, x)
    elif centroids.shape != (conf.n_words, x.shape[1]):
        raise InputError(
            f"codebook: {centroids.shape} centroids for {conf.n_words} words of {x.shape[1]}-d"
        )
    quantizer = Quantizer(np.ascontiguousarray(centroids, np.float32), kind=conf.quantizer)
    if conf.kind == "he":
        return HEIndex.from_codebook(centroids, x, seed=conf.seed, ma=conf.ma, quantizer=quantizer)
    return ASMKIndex.from_codebook(centroids, seed=conf.seed, ma=conf.ma, quantizer=quantizer)


def segments_of(index: LocalIndex) -> tuple[Segment, ...]:
    """The inverted-file segments of an index, oldest first."""
    inv = index.inverted if isinstance(index, TreeIndex) else index.ivf  # type: ignore[attr-defined]
    return tuple(inv.segments)


def state_of(index: LocalIndex) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """JSON-able meta and model arrays (the segments are saved separately)."""
    state = index.state()  # type: ignore[attr-defined]
    return state[0], state[1]


def stats_of(index: LocalIndex) -> dict[str, np.ndarray]:
    """The statistics derived from all postings (idf, norms, γ), to save beside the segments."""
    return index.stats()  # type: ignore[attr-defined]


def restore(
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    segments: Sequence[Segment],
    n_images: int,
    stats: Mapping[str, np.ndarray] | None = None,
) -> LocalIndex:
    """Rebuild an index from its meta, model arrays and segments, with ``n_images`` images.

    ``stats`` (:func:`stats_of`, saved for these segments) spares recomputing idf and norms.
    """
    kind = meta.get("kind")
    meta = {**meta, "n_images": n_images}
    if kind == "voctree":
        st = None if stats is None else dict(stats)
        return TreeIndex.from_state(dict(meta), dict(arrays), segments, n_images=n_images, stats=st)
    if kind == "he":
        return HEIndex.from_state(meta, arrays, segments, stats)
    if kind == "asmk":
        return ASMKIndex.from_state(meta, arrays, segments, stats)
    raise InputError(f"unknown index kind {kind!r}")


def dim_of(index: LocalIndex) -> int:
    """Descriptor dimension the index expects."""
    return index.tree.dim if isinstance(index, TreeIndex) else index.dim  # type: ignore[attr-defined]

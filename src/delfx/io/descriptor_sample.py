"""Descriptors of many images of a feature file gathered into one matrix (codebook training)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from delfx.io.featurestore import FeatureReader


def load_descriptors(
    reader: FeatureReader,
    names: Sequence[str] | None = None,
    max_per_image: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gather descriptors of many images, e.g. to train a codebook.

    Args:
        reader: an open feature file.
        names: the images to take (all stored images when None).
        max_per_image: keep at most this many descriptors per image, drawn at random without
            replacement (all when None).
        rng: random generator or seed for the draw (None: seed 0, so the draw is repeatable).

    Returns:
        ``(descriptors, image_index)``: ``N x D`` float32 and ``(N,)`` int64 positions into
        ``names``, in the order of ``names``.
    """
    names = reader.names() if names is None else list(names)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng or 0)
    counts = np.array([reader.num_features(n) for n in names], dtype=np.int64)
    if max_per_image is not None:
        counts = np.minimum(counts, int(max_per_image))
    dim = reader.dim or 0
    out = np.empty((int(counts.sum()), dim), dtype=np.float32)
    index = np.repeat(np.arange(len(names), dtype=np.int64), counts)
    pos = 0
    for name, count in zip(names, counts, strict=True):
        if count == 0:
            continue
        desc = reader.descriptors(name)
        if count < desc.shape[0]:
            keep = np.sort(gen.choice(desc.shape[0], size=int(count), replace=False))
            desc = desc[keep]
        out[pos : pos + count] = desc
        pos += int(count)
    return out, index

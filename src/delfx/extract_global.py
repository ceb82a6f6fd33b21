"""The global extraction stage: one CNN descriptor per database image and per (cropped) query.

Output HDF5 layout::

    /                       attrs: format_version (1), config (JSON), model_meta (JSON)
    /global/db              N x D float32, unit rows, in imlist order
    /global/query           Q x D float32, queries cropped to their box, in qimlist order
    /global/db_names        N strings, ``db/<imlist name>``
    /global/query_names     Q strings, ``query/<qimlist name>``

The file is written under a temporary name in the destination folder and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from delfx.datasets.revisited import RetrievalDataset
from delfx.errors import InputError
from delfx.io.crashpoints import before_commit
from delfx.models.describe import describe_images
from delfx.models.global_net import ARCHS, GlobalNet, create, load_checkpoint

logger = logging.getLogger(__name__)

#: Version of the global descriptor file layout.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GlobalExtractConfig:
    """Settings of global extraction.

    Attributes:
        image_size: longer side of each image, in pixels, before description.
        scales: relative scales, combined as in :func:`~delfx.models.describe.describe_images`.
        batch_size: images per forward pass.
    """

    image_size: int = 1024
    scales: tuple[float, ...] = (1.0,)
    batch_size: int = 1

    def __post_init__(self) -> None:
        # named as the flags of delfx extract global
        for name, value in (("image-size", self.image_size), ("batch-size", self.batch_size)):
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if not self.scales or any(not (math.isfinite(s) and s > 0) for s in self.scales):
            raise InputError(f"multiscale must be positive numbers, got {list(self.scales)}")


#: Single-scale and cirtorch's multi-scale settings.
PRESETS: dict[str, GlobalExtractConfig] = {
    "ss": GlobalExtractConfig(),
    "ms": GlobalExtractConfig(scales=(1.0, 1.0 / math.sqrt(2.0), 0.5)),
}


def resolve_model(
    model: str, *, pretrained: str = "none", pooling: str = "gem", device: str = "cpu"
) -> GlobalNet:
    """A checkpoint file (see :func:`load_checkpoint`) or a fresh net of an architecture name.

    An attention checkpoint (``delfx train attention``) gives its attention-weighted descriptor.
    A fresh net's random parts (all of it with ``pretrained="none"``) are drawn with seed 0, so
    the same arguments always describe images the same way; the global RNG is left untouched.

    Raises:
        InputError: ``model`` is neither an existing file nor one of :data:`ARCHS`.
    """
    if Path(model).is_file():
        if pretrained != "none":
            logger.warning("--pretrained %s ignored: weights come from %s", pretrained, model)
        from delfx.models.attention import has_attention, load_attention

        if has_attention(model):  # the attention-pooled descriptor of the seed's attention stage
            return load_attention(model, device)  # type: ignore[return-value]
        return load_checkpoint(model, device)
    if model in ARCHS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return create(model, pooling=pooling, pretrained=pretrained).eval()
    raise InputError(
        f"model '{model}': no such checkpoint file, nor an architecture ({', '.join(ARCHS)})"
    )


def _progress(items: Iterable[np.ndarray], total: int, desc: str, on: bool) -> Iterator[np.ndarray]:
    with tqdm(total=total, desc=desc, unit="img", leave=False, disable=None if on else True) as bar:
        for item in items:
            yield item
            bar.update(1)


def main(
    conf: GlobalExtractConfig,
    out: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str],
    dataset: str,
    model: str,
    pretrained: str = "none",
    pooling: str = "gem",
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Describe every database image and every cropped query of a dataset into ``out``.

    Args:
        conf: image size, scales and batch size (recorded in the file's ``config``).
        out: the ``.h5`` file to write (replaced atomically).
        root: datasets root.
        dataset: dataset name under ``root``.
        model: a checkpoint path or an architecture name of :data:`ARCHS`.
        pretrained: backbone weights for an architecture name (``none``, ``imagenet``, a path).
        pooling: pooling for an architecture name (a checkpoint carries its own).
        device: torch device, e.g. ``cpu`` or ``cuda:0``.
        progress: show progress bars (on a terminal).

    Returns:
        ``out`` as a Path.
    """
    data = RetrievalDataset(root, dataset)
    net = resolve_model(model, pretrained=pretrained, pooling=pooling, device=device)
    kw: dict[str, Any] = {
        "image_size": conf.image_size,
        "scales": conf.scales,
        "device": device,
        "batch_size": conf.batch_size,
    }
    start = time.perf_counter()
    db_iter = (data.load_image(i) for i in range(len(data.images)))
    db = describe_images(net, _progress(db_iter, len(data.images), "global db", progress), **kw)
    q_iter = (data.load_query(q) for q in range(len(data.queries)))
    qv = describe_images(net, _progress(q_iter, len(data.queries), "global query", progress), **kw)
    elapsed = time.perf_counter() - start
    out = Path(out)
    write_global(
        out,
        db,
        qv,
        [f"db/{n}" for n in data.images],
        [f"query/{n}" for n in data.queries],
        config={"extractor": "global", **asdict(conf)},
        model_meta=net.meta,
    )
    n = len(db) + len(qv)
    logger.info(
        "%s: %d images of %s in %.1f s (%.2f img/s), %d-D",
        out,
        n,
        dataset,
        elapsed,
        n / max(elapsed, 1e-9),
        db.shape[1],
    )
    return out


def write_global(
    path: Path,
    db: np.ndarray,
    query: np.ndarray,
    db_names: list[str],
    query_names: list[str],
    *,
    config: dict[str, Any],
    model_meta: dict[str, Any],
) -> Path:
    """Write a global descriptor file atomically (temporary file in the same folder, rename).

    Shape:
        ``db``: ``N x D``; ``query``: ``Q x D``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = json.dumps(config)
            f.attrs["model_meta"] = json.dumps(model_meta)
            g = f.create_group("global")
            g.create_dataset("db", data=np.asarray(db, dtype=np.float32))
            g.create_dataset("query", data=np.asarray(query, dtype=np.float32))
            str_t = h5py.string_dtype("utf-8")
            g.create_dataset("db_names", data=np.array(db_names, dtype=object), dtype=str_t)
            g.create_dataset("query_names", data=np.array(query_names, dtype=object), dtype=str_t)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes owner-only files
        before_commit(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_global(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, list[str], list[str], dict[str, Any]]:
    """Read a global descriptor file.

    Returns:
        ``(db N x D, query Q x D, db_names, query_names, attrs)``; ``attrs`` has
        ``format_version`` and the decoded ``config`` and ``model_meta`` dicts.

    Raises:
        InputError: the file is missing or not a global descriptor file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such global descriptor file")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format_version") != FORMAT_VERSION or "global" not in f:
                raise InputError(f"{path}: not a delfx global descriptor file (format_version 1)")
            g = f["global"]
            db = g["db"][()].astype(np.float32, copy=False)
            query = g["query"][()].astype(np.float32, copy=False)
            db_names = [s.decode() if isinstance(s, bytes) else s for s in g["db_names"][()]]
            q_names = [s.decode() if isinstance(s, bytes) else s for s in g["query_names"][()]]
            attrs = {
                "format_version": int(f.attrs["format_version"]),
                "config": json.loads(f.attrs["config"]),
                "model_meta": json.loads(f.attrs["model_meta"]),
            }
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: unreadable global descriptor file ({exc})") from None
    return db, query, db_names, q_names, attrs

"""The extraction stage: local features of every image of a dataset into one feature file.

Database images are stored as ``db/<imlist name>``; queries as ``query/<qimlist name>``, cropped
to their box, with keypoints in the full image's pixels, ``image_size`` the full image's, and the
box in the group's ``bbox`` attribute (``crop`` holds the whole-pixel box actually cut; a crop
larger than ``max_side`` is shrunk on its own). A plain folder of photos gives
``db/<relative path without suffix>``.

Worker processes (started with "spawn", so no state is inherited) read and describe images; the
main process is the single writer and stores results in input order. The output file is written
in place and is resumable: images already stored are skipped, and a killed run keeps what it
wrote (see :mod:`delfx.io.featurestore`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from delfx.datasets.revisited import RetrievalDataset
from delfx.errors import InputError
from delfx.features.sift import SiftConfig, extract_sift
from delfx.features.types import LocalFeatures
from delfx.io.featurestore import FeatureWriter
from delfx.io.images import crop_box, has_image_suffix, read_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of the extraction stage.

    Attributes:
        sift: the SIFT extractor settings (stored in the output file as its config).
        workers: worker processes (None: ``os.cpu_count()``; 1: extract in this process).
        half: store descriptors as float16 on disk.
    """

    sift: SiftConfig = field(default_factory=SiftConfig)
    workers: int | None = None
    half: bool = False

    def store_config(self) -> dict[str, Any]:
        """The part of the settings that determines the features (the file's ``config``)."""
        return {"extractor": "sift", "sift": asdict(self.sift)}


@dataclass(frozen=True)
class Job:
    """One image to extract: its store name, file and optional query box."""

    name: str
    path: Path
    bbox: tuple[float, float, float, float] | None = None


def dataset_jobs(dataset: RetrievalDataset) -> list[Job]:
    """Database images (``db/...``), then queries cropped to their box (``query/...``)."""
    jobs = [Job(f"db/{n}", dataset.image_path(n)) for n in dataset.images]
    for q, n in enumerate(dataset.queries):
        jobs.append(Job(f"query/{n}", dataset.image_path(n), dataset.query_bbox(q)))
    return jobs


def folder_jobs(folder: str | os.PathLike[str]) -> list[Job]:
    """Every photo under ``folder`` (recursively, hidden entries skipped), sorted by name.

    Raises:
        InputError: the folder is missing, holds no photo, or two photos differ only in suffix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    jobs: dict[str, Job] = {}
    skipped = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if not has_image_suffix(path):
            skipped += 1
            continue
        name = f"db/{rel.with_suffix('').as_posix()}"
        if name in jobs:
            raise InputError(f"{path}: same name as {jobs[name].path} once the suffix is dropped")
        jobs[name] = Job(name, path)
    if not jobs:
        also = f" ({skipped} file(s) without an image suffix)" if skipped else ""
        raise InputError(f"{folder}: no photos found{also}")
    if skipped:
        logger.info("%s: skipped %d file(s) that are not photos", folder, skipped)
    return sorted(jobs.values(), key=lambda j: j.name)


def source_jobs(
    root: str | os.PathLike[str] | None,
    dataset: str | None,
    images_dir: str | os.PathLike[str] | None,
) -> tuple[list[Job], str]:
    """The jobs of a dataset (``root`` and ``dataset``) or of a folder of photos, and a label.

    Raises:
        InputError: neither or both sources given, or a bad dataset or folder.
    """
    if (images_dir is None) == (root is None and dataset is None):
        raise InputError("extract: give either root and dataset, or images_dir")
    if images_dir is None:
        if root is None or dataset is None:
            raise InputError("extract: root and dataset go together")
        return dataset_jobs(RetrievalDataset(root, dataset)), f"dataset {dataset}"
    return folder_jobs(images_dir), f"folder {Path(images_dir).name}"


def read_job(job: Job) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], dict[str, Any]]:
    """Read one job's image, a query cropped to its box.

    Returns:
        ``(image, offset, full size, group attributes)``: ``image`` ``h x w x 3`` ``uint8``;
        ``offset`` the ``(x, y)`` corner ``crop_box`` cut (rounded, clipped; add it to the
        crop's keypoints to put them in the full image); the full image's ``(width, height)``;
        the ``bbox`` and ``crop`` attributes of a query (empty for a whole image).

    Raises:
        InputError: the image is missing, truncated or not an image (the message names it).
    """
    image = read_image(job.path)
    h, w = image.shape[:2]
    if job.bbox is None:
        return image, (0, 0), (w, h), {}
    crop = crop_box(image, job.bbox)
    x1, y1 = max(0, round(job.bbox[0])), max(0, round(job.bbox[1]))
    attrs = {
        "bbox": [float(v) for v in job.bbox],
        "crop": [x1, y1, x1 + crop.shape[1], y1 + crop.shape[0]],
    }
    return crop, (x1, y1), (w, h), attrs


def extract_job(job: Job, conf: SiftConfig) -> tuple[str, LocalFeatures, dict[str, Any]]:
    """Read one image (cropping a query to its box) and extract its features.

    Returns:
        ``(name, features, group attributes)``.

    Raises:
        InputError: the image is missing, truncated or not an image (the message names it).
    """
    image, offset, size, attrs = read_job(job)
    return job.name, extract_sift(image, conf, offset=offset, image_size=size), attrs


_WORKER_CONF: SiftConfig | None = None


def _init_worker(conf: SiftConfig) -> None:
    global _WORKER_CONF
    _WORKER_CONF = conf
    cv2.setNumThreads(1)  # one process per core already


def _worker(job: Job) -> tuple[str, LocalFeatures, dict[str, Any]]:
    assert _WORKER_CONF is not None
    return extract_job(job, _WORKER_CONF)


def _results(
    jobs: Sequence[Job], conf: SiftConfig, workers: int
) -> Iterator[tuple[str, LocalFeatures, dict[str, Any]]]:
    """Extract ``jobs`` in order, in this process or in a pool of ``workers`` processes."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield extract_job(job, conf)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(conf,)) as pool:
        yield from pool.imap(_worker, jobs, chunksize=1)


def write_store(
    out: Path,
    config: dict[str, Any],
    jobs: Sequence[Job],
    results: Callable[[list[Job]], Iterable[tuple[str, LocalFeatures, dict[str, Any]]]],
    *,
    label: str,
    source: str,
    progress: bool = True,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Store the features of the ``jobs`` not yet in ``out`` (resuming a file of equal config).

    Args:
        out: the ``.h5`` feature file.
        config: the store's config (see :class:`~delfx.io.featurestore.FeatureWriter`).
        jobs: every image of the run.
        results: given the jobs still to do, yields ``(name, features, attrs)`` in any order.
        label: progress bar text.
        source: what the images are, for the log.
        progress: show a progress bar (on a terminal).
        overwrite: start a new file instead of resuming.
        half: store descriptors as float16.

    Returns:
        ``out``.
    """
    start = time.perf_counter()
    n_feats = 0
    with FeatureWriter(out, config, resume=not overwrite, half=half) as writer:
        todo = [j for j in jobs if not writer.has(j.name)]
        if len(todo) < len(jobs):
            logger.info("%s: %d of %d images already stored", out, len(jobs) - len(todo), len(jobs))
        bar = tqdm(
            total=len(todo), desc=label, unit="img", leave=False, disable=None if progress else True
        )
        with bar:
            for name, feats, attrs in results(todo) if todo else ():
                writer.write(name, feats, attrs)
                n_feats += len(feats)
                bar.update(1)
    elapsed = time.perf_counter() - start
    if todo:
        logger.info(
            "%s: %d images from %s in %.1f s (%.2f img/s, %.0f features/image)",
            out,
            len(todo),
            source,
            elapsed,
            len(todo) / max(elapsed, 1e-9),
            n_feats / len(todo),
        )
    return out


def _planned(out: Path) -> bool:
    """True when a sharded run writing ``out`` is unfinished (its shard plan is there)."""
    from delfx.cluster.plan import PLAN
    from delfx.extract_sharded import shard_folder

    return (shard_folder(out) / PLAN).is_file()


def main(
    conf: ExtractConfig,
    out: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    distributor: Any = None,
) -> Path:
    """Extract SIFT features of a dataset (or a folder of photos) into ``out``.

    Args:
        conf: extractor settings; ``conf.sift`` is recorded in the file.
        out: the ``.h5`` feature file; an existing one with the same config is resumed.
        root: datasets root (with ``dataset``).
        dataset: dataset name under ``root``.
        images_dir: a folder of photos instead of a dataset.
        workers: worker processes (overrides ``conf.workers``; None: ``os.cpu_count()``).
        progress: show a progress bar (on a terminal).
        overwrite: start a new file instead of resuming an existing one.
        distributor: a :class:`~delfx.cluster.distributor.Distributor` that splits the run in
            shards (``--shards``, ``--shard I/N``, ``--ray``; see :mod:`delfx.extract_sharded`);
            None: one file, written by this process.

    Returns:
        ``out`` as a Path (the shard folder for a ``--shard I/N`` slice).

    With ``workers > 1`` the workers are started with "spawn": a script that calls this must
    guard its entry point with ``if __name__ == "__main__":``.

    Raises:
        InputError: bad arguments, an unreadable or truncated image (images stored before it
            stay in ``out``), or an existing ``out`` written with another config.
    """
    jobs, source = source_jobs(root, dataset, images_dir)
    n_workers = workers if workers is not None else conf.workers
    n_workers = max(1, int(n_workers if n_workers is not None else os.cpu_count() or 1))
    if (distributor is not None and distributor.sharded) or _planned(Path(out)):
        from delfx import extract_sharded
        from delfx.cluster.distributor import SEQUENTIAL
        from delfx.cluster.work import SiftWork

        distributor = distributor or SEQUENTIAL

        # a Ray worker is one process on one core; a sequential run keeps its process pool
        procs = n_workers if distributor.kind == "sequential" else 1
        work = SiftWork(conf.sift, conf.store_config(), conf.half, procs)
        return extract_sharded.main(
            work, out, jobs, distributor, label="extract sift", half=conf.half,
            progress=progress, overwrite=overwrite,
        )  # fmt: skip
    return write_store(
        Path(out),
        conf.store_config(),
        jobs,
        lambda todo: _results(todo, conf.sift, n_workers),
        label="extract sift",
        source=source,
        progress=progress,
        overwrite=overwrite,
        half=conf.half,
    )

"""The DELF extraction stage: attention-selected local CNN features into a feature file.

The output is the feature store of :mod:`delfx.extract` (SIFT's): ``db/<imlist name>``, and
``query/<qimlist name>`` cropped to its box with keypoints in the full image's pixels and the
``bbox``/``crop`` group attributes; or ``db/<relative path>`` for a folder of photos. It is
resumable: images already stored are skipped. The root ``config`` is
``{"extractor": "delf", "delf": DelfConfig, "model": ..., "pca": ...}``.

Descriptors may be PCA-whitened to ``--pca-dim`` dimensions. The PCA is learned on the
features of TRAINING images only (``pca_from``: another dataset's database given as
``ROOT:NAME``, or a folder of photos) and saved as ``.npz`` next to the output (or at ``pca``);
training images that are also being extracted are refused. An existing PCA file is reused when
it was learned from the same source with the same model and settings.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from delfx.datasets.revisited import RetrievalDataset
from delfx.errors import InputError
from delfx.extract import Job, dataset_jobs, folder_jobs, read_job, source_jobs, write_store
from delfx.features.delf import DelfConfig, extract_delf
from delfx.features.local_pca import LocalPCA, learn_local_pca, load_local_pca, save_local_pca
from delfx.features.types import LocalFeatures
from delfx.io.cache_key import file_digest
from delfx.models.attention import AttentionNet, resolve_attention

logger = logging.getLogger(__name__)

#: At most this many training descriptors are used to learn the PCA (spread over the images).
PCA_SAMPLES = 100_000


def load_network(
    model: str,
    *,
    pretrained: str = "none",
    attention: str | None = None,
    block: str | None = None,
    device: str = "cpu",
) -> tuple[AttentionNet, dict[str, Any]]:
    """The attention network and its description for the feature file's config.

    A new network's random parts are drawn with seed 0 (the global RNG is left untouched), so
    the same arguments always give the same features and a resumed run stays consistent.

    Raises:
        InputError: see :func:`~delfx.models.attention.resolve_attention`; also a checkpoint
            whose attention sits on another block than ``block``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = resolve_attention(
            model, pretrained=pretrained, attention=attention, block=block or "last", device=device
        )
    if block is not None and net.block != block:
        raise InputError(f"{model}: its attention sits on block '{net.block}', not '{block}'")
    path = Path(model)
    if path.is_file():
        described = {"source": path.name, "weights": file_digest(path)[:16]}
    else:
        described = {"source": model, "weights": pretrained}
    return net, {**described, **net.meta}


def training_jobs(pca_from: str) -> tuple[list[Job], str]:
    """The training images of ``pca_from``: a folder of photos, or ``ROOT:NAME``'s database.

    Raises:
        InputError: neither an existing folder nor ``ROOT:NAME``, or a bad dataset.
    """
    if Path(pca_from).is_dir():
        return folder_jobs(pca_from), f"folder {Path(pca_from).resolve()}"
    if ":" not in pca_from:
        raise InputError(f"--pca-from '{pca_from}': expected ROOT:NAME or a folder of photos")
    root, name = pca_from.rsplit(":", 1)
    jobs = [j for j in dataset_jobs(RetrievalDataset(root, name)) if j.name.startswith("db/")]
    return jobs, f"dataset {name} ({Path(root).resolve()})"


def _check_disjoint(train_paths: Sequence[str], jobs: Sequence[Job], what: str) -> None:
    """Refuse training images that are among the images being extracted."""
    test = {str(j.path.resolve()) for j in jobs}
    shared = sorted(p for p in train_paths if p in test)
    if shared:
        raise InputError(
            f"{what}: {len(shared)} of its training images are images being extracted "
            f"(e.g. {shared[0]}); learn the PCA on other images (--pca-from ROOT:NAME or DIR)"
        )


def _features(
    net: AttentionNet,
    conf: DelfConfig,
    jobs: Sequence[Job],
    device: str,
    pca: LocalPCA | None = None,
) -> Iterator[tuple[str, LocalFeatures, dict[str, Any]]]:
    """``(name, features, group attributes)`` of each job, in order."""
    arrays = None if pca is None else (pca.mean, pca.projection)
    for job in jobs:
        image, offset, size, attrs = read_job(job)
        try:
            feats = extract_delf(
                net, image, conf, device=device, offset=offset, image_size=size, pca=arrays
            )
        except InputError as exc:
            raise InputError(f"{job.path}: {exc}") from None
        yield job.name, feats, attrs


def learn_pca(
    net: AttentionNet,
    conf: DelfConfig,
    pca_from: str,
    dim: int,
    *,
    test_jobs: Sequence[Job],
    model_config: dict[str, Any],
    device: str = "cpu",
    progress: bool = True,
) -> LocalPCA:
    """Learn a local PCA on the (unreduced) DELF features of ``pca_from``'s training images.

    Raises:
        InputError: ``pca_from`` shares images with ``test_jobs``, or too few descriptors.
    """
    jobs, source = training_jobs(pca_from)
    paths = [str(j.path.resolve()) for j in jobs]
    _check_disjoint(paths, test_jobs, f"--pca-from {pca_from}")
    per_image = max(1, PCA_SAMPLES // len(jobs))
    rng = np.random.default_rng(0)
    arrays = []
    results = _features(net, conf, jobs, device)
    bar = tqdm(
        results,
        total=len(jobs),
        desc="delf pca",
        unit="img",
        leave=False,
        disable=None if progress else True,
    )
    for _, feats, _ in bar:
        desc = feats.descriptors
        if len(desc) > per_image:
            desc = desc[np.sort(rng.choice(len(desc), per_image, replace=False))]
        arrays.append(desc)
    mean, projection = learn_local_pca(arrays, dim)
    info = {
        "source": source,
        "pca_from": pca_from,
        "images": paths,
        "descriptors": int(sum(len(a) for a in arrays)),
        "model": model_config,
        "delf": asdict(conf),
    }
    return LocalPCA(mean, projection, info)


def check_pca_args(
    test_jobs: Sequence[Job],
    *,
    pca: str | os.PathLike[str] | None,
    pca_dim: int | None,
    pca_from: str | None,
) -> None:
    """Check the PCA arguments (before any network is built).

    Raises:
        InputError: ``pca_dim`` below 1 or without a PCA source, ``pca_from`` without
            ``pca_dim``, or training images (of ``pca_from``, or named by the ``pca`` file) that
            are among the images being extracted.
    """
    if pca_dim is not None and pca_dim < 1:
        raise InputError(f"--pca-dim must be at least 1, got {pca_dim}")
    if pca_from is not None:
        if pca_dim is None:
            raise InputError("--pca-from needs --pca-dim (the reduced dimension)")
        train, _ = training_jobs(pca_from)
        _check_disjoint([str(j.path.resolve()) for j in train], test_jobs, f"--pca-from {pca_from}")
    elif pca is not None:
        _check_disjoint(load_local_pca(pca).info.get("images", []), test_jobs, f"PCA {pca}")
    elif pca_dim is not None:
        raise InputError(
            "--pca-dim needs --pca-from ROOT:NAME|DIR (training images) or --pca FILE.npz; "
            "the PCA is never learned on the images being extracted"
        )


def resolve_pca(
    net: AttentionNet,
    conf: DelfConfig,
    out: Path,
    *,
    test_jobs: Sequence[Job],
    model_config: dict[str, Any],
    pca: str | os.PathLike[str] | None,
    pca_dim: int | None,
    pca_from: str | None,
    device: str,
    progress: bool,
    overwrite: bool,
) -> LocalPCA | None:
    """The PCA to apply: loaded from ``pca``, or learned on ``pca_from`` (and saved), or None.

    A PCA file at the destination learned from the same ``pca_from`` with the same model and
    settings (and at least ``pca_dim`` components) is reused unless ``overwrite``.

    Raises:
        InputError: see :func:`check_pca_args`; also a ``pca_dim`` above the descriptor
            dimension, or a ``pca`` file for another descriptor dimension.
    """
    check_pca_args(test_jobs, pca=pca, pca_dim=pca_dim, pca_from=pca_from)
    if pca_dim is not None and pca_dim > net.local_dim:
        raise InputError(f"--pca-dim must be in 1..{net.local_dim}, got {pca_dim}")
    if pca_from is None and pca is None:
        return None
    if pca_from is None:
        learned = load_local_pca(pca)  # type: ignore[arg-type]
        if learned.mean.shape[0] != net.local_dim:
            raise InputError(
                f"{pca}: PCA of {learned.mean.shape[0]}-D descriptors, "
                f"the model gives {net.local_dim}-D"
            )
        return learned if pca_dim is None else learned.truncated(pca_dim)
    assert pca_dim is not None  # checked above
    path = Path(pca) if pca is not None else out.with_name(f"{out.stem}.pca.npz")
    if path.is_file() and not overwrite:
        old = load_local_pca(path)
        info = old.info
        wanted = json.loads(json.dumps({"model": model_config, "delf": asdict(conf)}))
        same = info.get("pca_from") == pca_from and all(info.get(k) == v for k, v in wanted.items())
        if same and old.dim >= pca_dim:
            _check_disjoint(info.get("images", []), test_jobs, f"PCA {path}")
            logger.info("%s: reusing the PCA learned on %s", path, info.get("source"))
            return old.truncated(pca_dim)
    learned = learn_pca(
        net,
        conf,
        pca_from,
        pca_dim,
        test_jobs=test_jobs,
        model_config=model_config,
        device=device,
        progress=progress,
    )
    if path.is_file():
        logger.warning("%s: replacing the PCA there with one learned on %s", path, pca_from)
    save_local_pca(path, learned)
    logger.info("%s: %d-D PCA learned on %s", path, learned.dim, learned.info["source"])
    return learned


def main(
    conf: DelfConfig,
    out: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    model: str,
    pretrained: str = "none",
    attention: str | None = None,
    block: str | None = None,
    device: str = "cpu",
    pca: str | os.PathLike[str] | None = None,
    pca_dim: int | None = None,
    pca_from: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    pca_training_set: bool = False,
    distributor: Any = None,
) -> Path:
    """Extract DELF features of a dataset (or a folder of photos) into ``out``.

    Args:
        conf: image size, scales, feature number and attention threshold.
        out: the ``.h5`` feature file; an existing one with the same config is resumed.
        root: datasets root (with ``dataset``).
        dataset: dataset name under ``root``.
        images_dir: a folder of photos instead of a dataset.
        model: a checkpoint (with an attention head, or a global one with ``attention="l2"``)
            or an architecture name (with ``attention="l2"``).
        pretrained: backbone weights for an architecture name (``none``, ``imagenet``, a path).
        attention: ``"learned"`` or ``"l2"``; None: the checkpoint's own head.
        block: ``"last"`` or ``"block3"``; None: the checkpoint's own, else ``"last"``.
        device: torch device, e.g. ``cpu`` or ``cuda:0``.
        pca: a PCA ``.npz`` file to apply, or where to save the one learned on ``pca_from``.
        pca_dim: reduced descriptor dimension (needs ``pca_from`` or ``pca``).
        pca_from: training images for the PCA: ``ROOT:NAME`` (a dataset's database) or a folder.
        progress: show progress bars (on a terminal).
        overwrite: start a new file (and relearn the PCA) instead of resuming.
        pca_training_set: the images are the ``pca`` file's own training images (e.g. to train
            a codebook on the same independent set), so they may overlap them.
        distributor: extract in shards, here, as a ``--shard I/N`` slice or on Ray
            (:mod:`delfx.extract_sharded`); the PCA is resolved here first.

    Returns:
        ``out`` as a Path.

    Raises:
        InputError: bad arguments, a model without an attention head, an unreadable image or one
            smaller than the network's stride (the message names it), PCA training images that
            are being extracted, or an existing ``out`` written with another config.
    """
    jobs, source = source_jobs(root, dataset, images_dir)
    checked = [] if pca_training_set else jobs
    if pca_training_set and (pca is None or pca_from is not None):
        raise InputError("pca_training_set needs a PCA file (pca) and no pca_from")
    check_pca_args(checked, pca=pca, pca_dim=pca_dim, pca_from=pca_from)  # fail before the model
    out = Path(out)
    net, model_config = load_network(
        model, pretrained=pretrained, attention=attention, block=block, device=device
    )
    learned = resolve_pca(
        net,
        conf,
        out,
        test_jobs=checked,
        model_config=model_config,
        pca=pca,
        pca_dim=pca_dim,
        pca_from=pca_from,
        device=device,
        progress=progress,
        overwrite=overwrite,
    )
    pca_config = None
    if learned is not None:
        pca_config = {
            "dim": learned.dim,
            "source": learned.info.get("source"),
            "digest": learned.digest,
        }
    config = {"extractor": "delf", "delf": asdict(conf), "model": model_config, "pca": pca_config}
    from delfx.extract import _planned

    if (distributor is not None and distributor.sharded) or _planned(out):
        from delfx import extract_sharded
        from delfx.cluster.distributor import SEQUENTIAL
        from delfx.cluster.work import DelfWork

        work = DelfWork(conf, config, model, pretrained, attention, block, learned)
        return extract_sharded.main(
            work, out, jobs, distributor or SEQUENTIAL, label="extract delf", device=device,
            progress=progress, overwrite=overwrite,
        )  # fmt: skip
    return write_store(
        out,
        config,
        jobs,
        lambda todo: _features(net, conf, todo, device, learned),
        label="extract delf",
        source=source,
        progress=progress,
        overwrite=overwrite,
    )

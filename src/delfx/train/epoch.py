"""One epoch of tuple training and the evaluation used between epochs.

Mining describes sampled queries and a pool with the current network (eval mode, no grad) and keeps
``neg_num`` hard negatives per query; training forwards every image of a tuple one at a time in
train mode with batch-norm layers frozen, stacks the ``S x D`` descriptors and back-propagates the
tuple loss. See :mod:`delfx.train.loop` for the settings and the run's state, and
:mod:`delfx.train.distributed` for multi-process runs (shared mining, DDP-averaged gradients).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from delfx.datasets.revisited import RetrievalDataset
from delfx.datasets.training import TrainingSplit
from delfx.evaluate import score
from delfx.evaluation.report import results_dict
from delfx.io.images import read_image
from delfx.models.describe import describe_images, resize_to, to_tensor
from delfx.models.global_net import GlobalNet
from delfx.train import distributed
from delfx.train.mining import mine_hard_negatives
from delfx.train.tuples import build_tuples, sample_pool, sample_queries, tuple_labels

if TYPE_CHECKING:
    from delfx.train.loop import TrainConfig


def _freeze_batchnorm(module: nn.Module) -> None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.eval()


class TupleForward(nn.Module):
    """Describe a tuple's images one at a time (their sizes differ) and stack the descriptors.

    One forward per tuple, so that a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper
    sees one forward and one backward per tuple.

    Shape:
        ``S`` tensors ``1 x 3 x H_i x W_i`` -> ``S x D``.
    """

    def __init__(self, net: GlobalNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x) for x in xs])


def _read_all(paths: list[Path], workers: int) -> list[np.ndarray]:
    if workers < 1:
        return [read_image(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(read_image, paths))


def mine_tuples(
    net: GlobalNet,
    split: TrainingSplit,
    conf: TrainConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> list[list[int]]:
    """Sample queries and a pool, mine hard negatives with ``net``; ``Q`` tuples of image indices.

    Each tuple is ``[q, p, n_1, ..., n_neg_num]`` (indices into ``split.images``). In a process
    group, each rank describes a contiguous shard of the queries + pool and the descriptors are
    all-gathered, so every rank (sampling with the same seed) mines the same tuples.
    """
    qidxs, pidxs = sample_queries(split, conf.query_size, rng)
    pool = sample_pool(split, conf.pool_size, rng)
    kw: dict[str, Any] = {"image_size": conf.image_size, "device": device}
    rank, world = distributed.rank_world()
    if world > 1:
        both = distributed.shard(np.concatenate([qidxs, pool]), rank, world)
        mine = describe_images(net, _read_all([split.images[i] for i in both], conf.workers), **kw)
        vecs = distributed.all_gather_array(mine)
        qv, pv = vecs[: len(qidxs)], vecs[len(qidxs) :]
    else:
        qv = describe_images(net, _read_all([split.images[i] for i in qidxs], conf.workers), **kw)
        pv = describe_images(net, _read_all([split.images[i] for i in pool], conf.workers), **kw)
    neg = mine_hard_negatives(qv, pv, split.cluster[qidxs], split.cluster[pool], conf.neg_num)
    return build_tuples(qidxs, pidxs, pool[neg.numpy()])


def train_tuples(
    net: GlobalNet,
    split: TrainingSplit,
    tuples: list[list[int]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    conf: TrainConfig,
    device: torch.device,
    progress: bool = False,
    model: nn.Module | None = None,
) -> float:
    """One pass over ``tuples`` in batches; returns the mean loss per tuple.

    Each tuple's images are described one at a time (sizes differ), giving ``S x D`` with
    ``S = neg_num + 2``; gradients of every tuple in ``update_every`` batches accumulate before
    an optimizer step (and a final step for a partial group).

    ``model`` is what the tuples go through: :class:`TupleForward` of ``net`` by default, or that
    wrapped in DistributedDataParallel, whose gradients are then averaged over the ranks once per
    optimizer step (the other backward passes run under ``no_sync``). Every rank must then get
    as many tuples.
    """
    model = TupleForward(net) if model is None else model
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    model.train()
    model.apply(_freeze_batchnorm)
    labels = tuple_labels(conf.neg_num).to(device)
    n_batches = math.ceil(len(tuples) / conf.batch_size)
    total = 0.0
    optimizer.zero_grad(set_to_none=True)
    for b in tqdm(range(n_batches), desc="train", leave=False, disable=None if progress else True):
        batch = tuples[b * conf.batch_size : (b + 1) * conf.batch_size]
        step = (b + 1) % conf.update_every == 0 or b + 1 == n_batches
        for j, tup in enumerate(batch):
            images = _read_all([split.images[i] for i in tup], conf.workers)
            xs = [to_tensor(resize_to(im, conf.image_size), net.mean, net.std) for im in images]
            sync = not ddp or (step and j == len(batch) - 1)
            with contextlib.nullcontext() if sync else model.no_sync():  # type: ignore[operator]
                out = model(*(x[None].to(device) for x in xs))
                loss = criterion(out, labels)
                loss.backward()
            total += float(loss.detach())
        if step:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return total / max(len(tuples), 1)


def evaluate_dataset(
    net: GlobalNet, root: str | os.PathLike[str], name: str, image_size: int, device: torch.device
) -> dict[str, Any]:
    """Describe a benchmark's database and cropped queries, rank by dot product and score.

    Returns:
        The results dict of :func:`~delfx.evaluation.report.results_dict` (mAP in percent);
        :func:`~delfx.evaluation.report.format_lines` gives the seed's two lines.
    """
    start = time.perf_counter()
    ds = RetrievalDataset(root, name)
    kw: dict[str, Any] = {"image_size": image_size, "device": device}
    db = describe_images(net, (ds.load_image(i) for i in range(len(ds.images))), **kw)
    qv = describe_images(net, (ds.load_query(q) for q in range(len(ds.queries))), **kw)
    sims = qv @ db.T  # Q x N
    rankings = [np.argsort(-row, kind="stable") for row in sims]
    timings = {"evaluate": time.perf_counter() - start}
    return results_dict(
        ds.name,
        "delfx-train-global",
        score(ds, rankings),
        timings,
        n_images=len(ds.images),
        n_queries=len(ds.queries),
    )

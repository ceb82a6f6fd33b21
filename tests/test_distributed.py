"""Data-parallel training: 2 CPU processes (gloo) match one process on the same tuples."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from delfx.datasets.training import TrainingSplit
from delfx.models.global_net import create
from delfx.train import distributed
from delfx.train.epoch import TupleForward, mine_tuples, train_tuples
from delfx.train.loop import TrainConfig
from delfx.train.losses import ContrastiveLoss

WORLD = 2
N_IMAGES = 12  # 4 clusters of 3
TUPLES = [[0, 1, 3], [4, 5, 9], [6, 8, 0], [10, 11, 2]]  # [query, positive, negative]
# per rank: 1 tuple per batch, 2 batches per step -> one no_sync backward, then one synced
CONF = TrainConfig(
    training_dataset="tiny",
    test_datasets=(),
    neg_num=1,
    query_size=3,
    pool_size=8,  # 3 + 8 images to describe: uneven shards of 6 and 5
    batch_size=1,
    update_every=2,
    image_size=40,
    pretrained="none",
)


class _Recorder:
    """Optimizer stand-in that records the gradients at each ``step()``."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.named = list(net.named_parameters())
        self.steps: list[dict[str, np.ndarray]] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, p in self.named:
            p.grad = None

    def step(self) -> None:
        assert all(p.grad is not None for _, p in self.named)
        self.steps.append({n: p.grad.detach().numpy().copy() for n, p in self.named})


def _write_images(folder: Path) -> None:
    """12 random images of 32-48 px, saved losslessly (PNG)."""
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        h, w = rng.integers(32, 49, size=2)
        im = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(im).save(folder / f"im{i:02d}.png")


def _split(folder: Path) -> TrainingSplit:
    """The images of :func:`_write_images` in 4 clusters of 3; query-positive pairs within one."""
    paths = tuple(sorted(folder.glob("im*.png")))
    cluster = np.repeat(np.arange(4), 3).astype(np.int64)
    qidxs = np.array([0, 3, 6, 9, 1, 4], dtype=np.int64)
    return TrainingSplit(paths, cluster, qidxs, qidxs + 1)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as in the children (fast and deterministic on small CPUs)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("resnet18", "gem", "none")


def _worker(rank: int, store: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        split = _split(Path(folder))
        net = _net()
        cpu = torch.device("cpu")
        mined = mine_tuples(net, split, CONF, np.random.default_rng(0), cpu)
        model = distributed.wrap(TupleForward(net), cpu)
        assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
        opt = _Recorder(net)
        mine = distributed.shard(TUPLES, rank, WORLD)
        loss = train_tuples(net, split, mine, ContrastiveLoss(0.85), opt, CONF, cpu, model=model)  # type: ignore[arg-type]
        assert len(opt.steps) == 1
        np.savez(Path(folder) / f"grads{rank}.npz", **opt.steps[0])
        np.savez(Path(folder) / f"out{rank}.npz", mined=np.array(mined), loss=np.array(loss))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_gradients_match_single_process(tmp_path):
    _write_images(tmp_path)
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)

    split = _split(tmp_path)
    net = _net()
    cpu = torch.device("cpu")
    mined = mine_tuples(net, split, CONF, np.random.default_rng(0), cpu)
    opt = _Recorder(net)
    conf = replace(CONF, batch_size=len(TUPLES), update_every=1)
    loss = train_tuples(net, split, TUPLES, ContrastiveLoss(0.85), opt, conf, cpu)  # type: ignore[arg-type]
    assert len(opt.steps) == 1
    # one process: gradient of the loss summed over all 4 tuples. DDP: each rank sums the loss
    # over its 2 tuples and the gradients are averaged over the ranks -> the sum / WORLD.
    ref = {k: v / WORLD for k, v in opt.steps[0].items()}
    losses = []
    for rank in range(WORLD):
        out = np.load(tmp_path / f"out{rank}.npz")
        assert out["mined"].tolist() == mined  # shared descriptors: the same hard negatives
        losses.append(float(out["loss"]))
        grads = np.load(tmp_path / f"grads{rank}.npz")
        assert sorted(grads.files) == sorted(ref)
        for k, v in ref.items():
            np.testing.assert_allclose(grads[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    assert np.mean(losses) == pytest.approx(loss, rel=1e-5)
    assert max(float(np.abs(v).max()) for v in ref.values()) > 1e-4  # not trivially zero


@pytest.mark.parametrize("n", [0, 1, 5, 7, 12])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("contiguous", [True, False])
def test_shard_covers_every_index_once(n, world, contiguous):
    items = list(range(n))
    parts = [distributed.shard(items, r, world, contiguous=contiguous) for r in range(world)]
    assert sorted(i for p in parts for i in p) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    if contiguous:
        assert [i for p in parts for i in p] == items
    arr = np.arange(n)
    assert np.array_equal(
        np.concatenate([distributed.shard(arr, r, world) for r in range(world)]), arr
    )
    padded = distributed.pad_to_multiple(items, world)
    assert len(padded) % world == 0 and padded[:n] == items and set(padded) == set(items)


def test_single_process_helpers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() == (0, 1, 0)
    assert distributed.is_main() and distributed.rank_world() == (0, 1)
    x = np.arange(6.0).reshape(3, 2)
    assert distributed.all_gather_array(x) is x
    net = TupleForward(_net())
    assert distributed.wrap(net, torch.device("cpu")) is net
    distributed.barrier()
    distributed.cleanup()

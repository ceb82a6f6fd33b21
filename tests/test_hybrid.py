"""Hybrid pipelines (a global descriptor with local features) and the global descriptor cache.

Built from the sample photos shipped in the package, so a clone alone runs them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from delfx import build_groups, run
from delfx.cli import main as cli_main
from delfx.demo import samples_dir
from delfx.extract_global import load_global
from delfx.index.fusion import fuse_rankings
from delfx.index.global_search import alpha_qe, rank_ip
from delfx.models import global_net

PLACES = ("admiralty_arch", "berlin_cathedral", "lund_street_b", "maupertuis_house")
SMALL = ["--codebook-size", "64", "--image-size", "96", "--no-progress"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four shipped places (their views) and four distractors, as one benchmark ``hyb``."""
    base = tmp_path_factory.mktemp("hybrid")
    groups, distractors = base / "groups", base / "distractors"
    for place in PLACES:
        (groups / place).mkdir(parents=True)
        for src in sorted((samples_dir() / "groups" / place).glob("*.jpg")):
            os.symlink(src, groups / place / src.name)
    distractors.mkdir()
    for src in sorted((samples_dir() / "distractors").glob("*.jpg"))[:4]:
        os.symlink(src, distractors / src.name)
    conf = build_groups.GroupsConfig(progress=False)
    build_groups.main(conf, groups, base / "root", "hyb", distractors_dir=distractors)
    return base / "root"


def _net(seed: int) -> global_net.GlobalNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return global_net.create("resnet18", "gem", "none").eval()


def _global_files(work: Path) -> list[Path]:
    return sorted(work.glob("global-hyb-*.h5"))


def test_retrained_checkpoint_at_the_same_path_changes_the_descriptors(
    root: Path, tmp_path: Path
) -> None:
    """The cache is keyed on the checkpoint's bytes: a checkpoint retrained in place (same path,
    same size, even the same modification time) is described again, and the new descriptors
    are the new network's."""
    ckpt = tmp_path / "model_best.pth"
    work = tmp_path / "work"
    argv = ["run", "global-gem", "--root", str(root), "--dataset", "hyb", "--work", str(work)]
    argv += ["--model", str(ckpt), "--image-size", "64", "--no-progress"]

    global_net.save_checkpoint(ckpt, _net(1))
    assert cli_main([*argv, "--output", str(tmp_path / "a.json")]) == 0
    (first,) = _global_files(work)
    db_a = load_global(first)[0]

    stat = ckpt.stat()
    global_net.save_checkpoint(ckpt, _net(2))  # "retrained": same arch, same path
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ckpt.stat().st_size == stat.st_size and ckpt.stat().st_mtime_ns == stat.st_mtime_ns
    assert cli_main([*argv, "--output", str(tmp_path / "b.json")]) == 0
    files = _global_files(work)
    assert len(files) == 2
    (second,) = [f for f in files if f != first]
    db_b = load_global(second)[0]
    assert not np.allclose(db_a, db_b)

    # the new file holds what the retrained network computes; an unchanged one is reused
    from delfx.extract_global import GlobalExtractConfig
    from delfx.extract_global import main as extract_main

    ref = extract_main(
        GlobalExtractConfig(image_size=64),
        tmp_path / "ref.h5",
        root=root,
        dataset="hyb",
        model=str(ckpt),
        progress=False,
    )
    np.testing.assert_allclose(db_b, load_global(ref)[0], atol=1e-6)
    assert cli_main([*argv, "--output", str(tmp_path / "c.json")]) == 0
    assert _global_files(work) == files


def _spy_fusion(monkeypatch: pytest.MonkeyPatch) -> list[tuple[np.ndarray, ...]]:
    calls: list[tuple[np.ndarray, ...]] = []

    def spy(ranks_a, scores_a, ranks_b, scores_b, n_images, weight_b=1.0):
        calls.append((ranks_b, scores_b, weight_b))
        return fuse_rankings(ranks_a, scores_a, ranks_b, scores_b, n_images, weight_b)

    monkeypatch.setattr(run, "fuse_rankings", spy)
    return calls


def _expected_qe(work: Path, qe: int) -> tuple[np.ndarray, np.ndarray]:
    """The global ranking (with αQE when ``qe > 0``) from the cached descriptors."""
    (path,) = _global_files(work)
    db, q, *_ = load_global(path)
    ranks, scores = rank_ip(db, q)
    return rank_ip(db, alpha_qe(db, q, ranks, qe, 3.0)) if qe else (ranks, scores)


@pytest.mark.parametrize("pipeline", ["global+asmk", "global+sift-asmk"])
def test_fused_pipelines_use_query_expansion(
    root: Path, tmp_path: Path, pipeline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--qe 2`` reaches the global half of a fused pipeline: the ranking fused is the αQE one,
    recomputed here from the cached descriptors, and the fusion weight is the one asked for."""
    calls = _spy_fusion(monkeypatch)
    out = tmp_path / "res.json"
    argv = ["run", pipeline, "--root", str(root), "--dataset", "hyb", "--work", str(tmp_path)]
    argv += ["--output", str(out), "--model", "resnet18", "--pretrained", "none"]
    argv += ["--attention", "l2", "--scales", "1", "--delf-image-size", "128", "--feature-num"]
    argv += ["100", "--codebook-from", "database", "--qe", "2", "--fusion-weight", "0.5", *SMALL]
    assert cli_main(argv) == 0
    res = json.loads(out.read_text())
    assert res["global_method"] == "global-gem+aqe2"
    assert res["fusion_weight"] == 0.5
    (call,) = calls
    ranks, scores = _expected_qe(tmp_path, 2)
    np.testing.assert_array_equal(call[0], ranks)
    np.testing.assert_allclose(call[1], scores, atol=1e-6)
    assert call[2] == 0.5


def test_global_shortlist_verified_with_rootsift(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``global+sift-sv`` verifies the top of the multi-scale global ranking with RootSIFT: the
    ranking verified is the global one, recomputed here from the cached descriptors; the first
    ``rerank_num`` images come back as a permutation of that shortlist and the rest keep their
    order."""
    seen = []

    def spy(conf, ranks, scores, *args, **kwargs):
        out = run_rerank_all(conf, ranks, scores, *args, **kwargs)
        seen.append((ranks.copy(), out[0], conf.rerank_num))
        return out

    from delfx.engine import searcher
    from delfx.rerank import rerank_all as run_rerank_all

    monkeypatch.setattr(searcher, "rerank_all", spy)  # run verifies through the engine
    out = tmp_path / "res.json"
    argv = ["run", "global+sift-sv", "--root", str(root), "--dataset", "hyb", "--work"]
    argv += [str(tmp_path), "--output", str(out), "--model", "resnet18", "--pretrained", "none"]
    argv += ["--rerank-num", "5", "--multiscale", "1,0.707", *SMALL]
    assert cli_main(argv) == 0
    res = json.loads(out.read_text())
    assert res["method"] == "global+sift-sv+sv5"
    assert res["global_options"]["scales"] == [1.0, 0.707]
    assert res["pipeline"]["features"] == "rootsift"
    (before, after, n), expected = seen[0], _expected_qe(tmp_path, 0)
    np.testing.assert_array_equal(before, expected[0])
    assert n == 5
    for b, a in zip(before, after, strict=True):
        assert sorted(a[:5]) == sorted(b[:5])
        np.testing.assert_array_equal(a[5:], b[5:])

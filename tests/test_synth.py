"""Tests of the synthetic benchmark: building blocks, ground truth, determinism, bad input."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from delfx import synth
from delfx.datasets.revisited import RetrievalDataset
from delfx.datasets.synth_geometry import (
    box_scale,
    project,
    to_opencv,
    view_homography,
    visible_fraction,
)
from delfx.datasets.synth_photometric import (
    Occluder,
    Photometric,
    apply_photometric,
    occluder_mask,
    polygon_mask,
)
from delfx.datasets.synth_views import (
    LabelThresholds,
    ViewRanges,
    label,
    render_view,
    sample_view,
)
from delfx.errors import DelfxError, InputError

CONF = dataclasses.replace(synth.preset("small"), size=96, views=6)


def _photo(seed: int, size: tuple[int, int] = (128, 96)) -> np.ndarray:
    """A distinct textured ``h x w x 3`` image: coloured blocks, a gradient and a few discs."""
    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(blocks).resize((w, h), Image.Resampling.NEAREST), np.float64)
    img += np.linspace(0, 60, w)[None, :, None]
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 20)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _folder(path: Path, n: int, seed0: int, prefix: str = "p") -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        size = (128, 96) if i % 3 else (96, 128)
        Image.fromarray(_photo(seed0 + i, size)).save(path / f"{prefix}{i}.jpg", quality=95)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("synth_inputs")
    return _folder(base / "photos", 8, 100), _folder(base / "distractors", 3, 500, "d")


@pytest.fixture(scope="module")
def built(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    photos, distractors = inputs
    root = tmp_path_factory.mktemp("synth_out")
    synth.main(CONF, photos, root, "toy", seed=3, distractors_dir=distractors)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- building blocks ----------------------------------------------------------------------------


def test_visible_fraction_hand_cases() -> None:
    box = (20, 20, 60, 60)
    eye = np.eye(3)
    assert visible_fraction(box, eye, (100, 100)) == 1.0
    half_off = np.array([[1.0, 0, -40], [0, 1, 0], [0, 0, 1]])
    assert visible_fraction(box, half_off, (100, 100)) == pytest.approx(0.5)
    everything = np.ones((100, 100), dtype=bool)
    assert visible_fraction(box, eye, (100, 100), everything) == 0.0
    left_quarter = occluder_mask(
        (100, 100), [Occluder(((0, 0), (30, 0), (30, 100), (0, 100)), 0, (0, 0))]
    )
    assert visible_fraction(box, eye, (100, 100), left_quarter) == pytest.approx(0.75)
    shrink = np.diag([0.5, 0.5, 1.0])  # box lands at [10, 30) in a 20 x 20 canvas: quarter inside
    assert visible_fraction(box, shrink, (20, 20)) == pytest.approx(0.25)


def test_polygon_mask_matches_half_planes() -> None:
    """A convex polygon: pixel centres on the inner side of every edge, checked directly."""
    angles = np.linspace(0, 2 * np.pi, 7, endpoint=False) + 0.3
    poly = np.stack([30 + 20 * np.cos(angles), 25 + 15 * np.sin(angles)], axis=1)
    yy, xx = np.mgrid[0:50, 0:64] + 0.5
    inside = np.ones((50, 64), dtype=bool)
    for p, q in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        inside &= (q[0] - p[0]) * (yy - p[1]) - (q[1] - p[1]) * (xx - p[0]) > 0
    assert np.array_equal(polygon_mask((64, 50), poly), inside)


def test_visible_fraction_matches_backward_warp() -> None:
    """Reference: warp the view's visibility mask back onto the photo and count box pixels."""
    h = view_homography(
        (60, 40), (50, 20), scale=1.3, rotation_deg=25, tilt_deg=(20, -10), focal=150
    )
    occluded = polygon_mask((100, 80), [(10, 10), (60, 5), (45, 50)])
    seen = cv2.warpPerspective(
        (~occluded).astype(np.uint8),
        to_opencv(h),
        (120, 90),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
    )
    reference = seen[20:70, 30:100].mean()
    fast = visible_fraction((30, 20, 100, 70), h, (100, 80), occluded)
    assert 0.1 < fast < 0.9
    assert fast == pytest.approx(reference, abs=0.01)


def test_view_homography_keeps_anchor_and_scale() -> None:
    h = view_homography((40, 30), (40, 30), scale=1.0, rotation_deg=0, tilt_deg=(0, 0), focal=100)
    np.testing.assert_allclose(h, np.eye(3), atol=1e-12)
    h = view_homography(
        (40, 30), (10, 5), scale=2.0, rotation_deg=30, tilt_deg=(20, -15), focal=100
    )
    np.testing.assert_allclose(project(h, np.array([[40.0, 30.0]])), [[10.0, 5.0]], atol=1e-9)
    h = view_homography((0, 0), (0, 0), scale=2.0, rotation_deg=90, tilt_deg=(0, 0), focal=100)
    assert box_scale(h, (0, 0, 10, 10)) == pytest.approx(2.0)
    np.testing.assert_allclose(project(h, np.array([[1.0, 0.0]])), [[0.0, -2.0]], atol=1e-12)


def test_labels_follow_thresholds() -> None:
    t = LabelThresholds()
    assert label(0.9, 0.1, t) == "easy"
    assert label(0.5, 0.1, t) == "hard"
    assert label(0.9, 0.7, t) == "hard"
    assert label(0.1, 0.1, t) == "junk"
    assert label(0.9, 1.5, t) == "junk"


def test_render_view_shape_and_identity() -> None:
    img = _photo(1)
    rng = np.random.default_rng(0)
    view = sample_view(
        rng, (128, 96), (10, 10, 100, 80), ViewRanges(), n_backgrounds=1, n_patches=1
    )
    out = render_view(img, view, [_photo(2)], [_photo(3)])
    assert out.dtype == np.uint8 and out.shape == (view.canvas_size[1], view.canvas_size[0], 3)
    still = sample_view(
        rng,
        (128, 96),
        (0, 0, 128, 96),
        ViewRanges(),
        n_backgrounds=0,
        n_patches=0,
        difficulty_cap=0.0,
    )
    same = render_view(img, still, [], [])
    assert np.abs(same.astype(int) - img).max() <= 1
    assert np.array_equal(apply_photometric(img, Photometric(), 0), img)


# -- the stage ----------------------------------------------------------------------------------


def test_dataset_ground_truth(built: Path) -> None:
    ds = RetrievalDataset(built, "toy")
    assert len(ds.queries) == 8
    assert len(ds.images) == 8 * CONF.views + 3 * CONF.distractor_views
    assert not set(ds.queries) & set(ds.images)
    names = ds.queries + ds.images
    assert len({n.lower() for n in names}) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in names)
    distractor_idx = {i for i, n in enumerate(ds.images) if n.startswith("distractor_")}
    assert len(distractor_idx) == 3
    counts = dict.fromkeys(("easy", "hard", "junk"), 0)
    for q, t in enumerate(ds.truth):
        assert t.easy.size + t.hard.size >= 1
        for key in counts:
            idx = getattr(t, key)
            counts[key] += idx.size
            assert np.all((idx >= 0) & (idx < len(ds.images)))
            assert not distractor_idx & set(idx.tolist())
            # each listed image is a view of this query's photo
            stem = ds.queries[q][: -len("_q")]
            assert all(ds.images[i].rsplit("_v", 1)[0] == stem for i in idx)
        assert t.bbx is not None and ds.load_query(q).size > 0
    assert all(counts[k] > 0 for k in counts), counts
    # views of one photo are spread out, not stored next to each other
    first = [i for i, n in enumerate(ds.images) if n.startswith(ds.queries[0][:-2] + "_v")]
    assert first != list(range(first[0], first[0] + len(first)))
    assert (built / "toy" / "synth.json").is_file()


def test_same_seed_same_bytes(inputs: tuple[Path, Path], built: Path, tmp_path: Path) -> None:
    photos, distractors = inputs
    again = synth.main(CONF, photos, tmp_path / "a", "toy", seed=3, distractors_dir=distractors)
    assert _files(again) == _files(built / "toy")
    other = synth.main(CONF, photos, tmp_path / "b", "toy", seed=4, distractors_dir=distractors)
    first, second = _files(again), _files(other)
    assert first.keys() == second.keys()
    assert first["gnd_toy.json"] != second["gnd_toy.json"]


def test_every_query_gets_a_positive(tmp_path: Path) -> None:
    photos = _folder(tmp_path / "photos", 3, 7)
    strict = LabelThresholds(
        easy_visible=0.99, easy_severity=0.01, junk_visible=0.99, junk_severity=0.01
    )
    conf = dataclasses.replace(CONF, views=1, thresholds=strict)
    folder = synth.main(conf, photos, tmp_path / "out", "strict", seed=0)
    ds = RetrievalDataset(tmp_path / "out", "strict")
    assert all(t.easy.size + t.hard.size >= 1 for t in ds.truth)
    assert "attempts" in (folder / "synth.json").read_text()


def test_unsafe_and_clashing_names(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, fname in enumerate(["a b.jpg", "a_b.png", "A B.jpeg"]):
        Image.fromarray(_photo(i)).save(photos / fname)
    synth.main(dataclasses.replace(CONF, views=1), photos, tmp_path / "out", "names", seed=0)
    ds = RetrievalDataset(tmp_path / "out", "names")
    assert ds.queries == ["A_B_q", "a_b_2_q", "a_b_3_q"]
    assert len({n.lower() for n in ds.queries + ds.images}) == 3 + 3


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("kind", ["truncated", "text", "empty"])
def test_bad_input(kind: str, tmp_path: Path) -> None:
    photos = _folder(tmp_path / "photos", 2, 0) if kind != "empty" else tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    bad = photos
    if kind == "truncated":
        bad = photos / "p1.jpg"
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        bad = photos / "notes.txt"
        bad.write_text("not a photo")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=re.escape(str(bad))):
        synth.main(CONF, photos, out, "bad", seed=0)
    _assert_nothing_left(out)


def test_bad_distractor_leaves_nothing(tmp_path: Path) -> None:
    photos = _folder(tmp_path / "photos", 2, 0)
    distractors = _folder(tmp_path / "distractors", 2, 50, "d")
    bad = distractors / "d1.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=re.escape(str(bad))):
        synth.main(CONF, photos, out, "bad", seed=0, distractors_dir=distractors)
    _assert_nothing_left(out)


def test_existing_dataset_needs_overwrite(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    photos, _ = inputs
    conf = dataclasses.replace(CONF, views=1)
    synth.main(conf, photos, tmp_path, "once", seed=0)
    with pytest.raises(DelfxError, match="already exists"):
        synth.main(conf, photos, tmp_path, "once", seed=0)
    synth.main(conf, photos, tmp_path, "once", seed=1, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["once"]


def test_config_checks() -> None:
    with pytest.raises(InputError, match="views"):
        dataclasses.replace(CONF, views=0)
    with pytest.raises(InputError, match="preset"):
        synth.preset("nope")


def test_cli(inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for module in ("data_download", "data_groups", "demo", "evaluate"):
        pytest.importorskip(f"delfx.cli.{module}")
    from delfx.cli import main

    photos, distractors = inputs
    argv = [
        "data",
        "synth",
        str(photos),
        "--out",
        str(tmp_path),
        "--name",
        "cli",
        "--seed",
        "3",
        "--distractors",
        str(distractors),
        "--views",
        "2",
        "--size",
        "96",
        "--preset",
        "small",
    ]
    assert main(argv) == 0
    assert "8 queries, 19 database images" in capsys.readouterr().out
    assert (
        main(["data", "synth", str(tmp_path / "missing"), "--out", str(tmp_path), "--name", "x"])
        == 2
    )
    assert "missing" in capsys.readouterr().err

"""SIFT extraction, the HDF5 feature store and the ``extract`` stage."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image

from delfx import extract
from delfx.cli import main as cli_main
from delfx.datasets.gnd_io import write_gnd
from delfx.errors import InputError
from delfx.features.sift import PRESETS, SiftConfig, extract_sift, root_sift
from delfx.features.types import LocalFeatures
from delfx.io.descriptor_sample import load_descriptors
from delfx.io.featurestore import FeatureReader, FeatureWriter

FULL = SiftConfig(max_side=4096)  # no resizing, all keypoints


def blob_image(w: int, h: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    """A bright Gaussian blob centred at continuous pixel coordinates ``(cx, cy)``."""
    y, x = np.mgrid[0:h, 0:w] + 0.5
    g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    grey = (30 + 200 * g).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def shapes_image(seed: int, w: int = 256, h: int = 192) -> np.ndarray:
    """Many small random filled shapes on a plain background: plenty of SIFT keypoints."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(60, 190, size=3)
    for _ in range(w * h // 300):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(2, 16))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + r, y + int(rng.integers(2, 16))), color, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), r, color, -1)
        else:
            pts = rng.integers(-r, r, size=(3, 2)) + [x, y]
            cv2.fillPoly(img, [pts.astype(np.int32)], color)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def save_jpeg(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)
    return path


def random_feats(rng: np.random.Generator, n: int, dim: int = 128) -> LocalFeatures:
    return LocalFeatures(
        keypoints=rng.random((n, 2), dtype=np.float32) * 100,
        scales=rng.random(n, dtype=np.float32) * 10,
        orientations=rng.random(n, dtype=np.float32) * 360,
        descriptors=rng.random((n, dim), dtype=np.float32),
        scores=rng.random(n, dtype=np.float32),
        image_size=(640, 480),
    )


def assert_feats_equal(a: LocalFeatures, b: LocalFeatures, atol: float = 0.0) -> None:
    assert a.image_size == b.image_size
    for f in ("keypoints", "scales", "orientations", "scores", "descriptors"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == np.float32 and y.dtype == np.float32
        np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=f)


# -- SIFT ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cx, cy", [(90.5, 70.5), (91.0, 69.0)])
def test_keypoint_lands_on_blob_at_full_size(cx: float, cy: float) -> None:
    feats = extract_sift(blob_image(200, 150, cx, cy, 4.0), FULL)
    dist = np.hypot(feats.keypoints[:, 0] - cx, feats.keypoints[:, 1] - cy)
    assert dist.min() < 0.25
    assert feats.image_size == (200, 150)


def test_keypoint_mapped_back_after_downscale() -> None:
    # an 8x shrink: forgetting OpenCV's half-pixel shift would put the keypoint 4 px off
    cx, cy = 1500.5, 201.0
    conf = SiftConfig(max_side=400)
    feats = extract_sift(blob_image(3200, 400, cx, cy, 32.0), conf)
    i = np.argmin(np.hypot(feats.keypoints[:, 0] - cx, feats.keypoints[:, 1] - cy))
    assert np.hypot(*(feats.keypoints[i] - [cx, cy])) < 1.0
    assert feats.scales[i] > 30  # scale in original pixels, not in the shrunk image's
    assert feats.image_size == (3200, 400)


def test_crop_with_offset_matches_full_image() -> None:
    image = shapes_image(3, 320, 256)
    full = extract_sift(image, FULL)
    x0, y0, cw, ch = 64, 32, 192, 160  # even offsets keep the octave sampling grids aligned
    crop = extract_sift(image[y0 : y0 + ch, x0 : x0 + cw], FULL, offset=(x0, y0))
    kp = crop.keypoints
    inside = (
        (kp[:, 0] > x0 + 24)
        & (kp[:, 0] < x0 + cw - 24)
        & (kp[:, 1] > y0 + 24)
        & (kp[:, 1] < y0 + ch - 24)
        & (crop.scales < 12)
    )
    assert inside.sum() >= 30
    dist = np.linalg.norm(kp[inside][:, None, :] - full.keypoints[None, :, :], axis=2).min(axis=1)
    assert np.mean(dist < 0.05) > 0.9


def test_rootsift_properties() -> None:
    image = shapes_image(1)
    plain = extract_sift(image, FULL)
    root = extract_sift(image, dataclasses.replace(FULL, root=True))
    assert len(plain) > 20 and root.dim == 128
    np.testing.assert_array_equal(plain.keypoints, root.keypoints)
    assert np.all(root.descriptors >= 0)
    np.testing.assert_allclose(np.linalg.norm(root.descriptors, axis=1), 1.0, atol=1e-5)
    expected = np.sqrt(plain.descriptors / plain.descriptors.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(root.descriptors, expected, atol=1e-6)
    np.testing.assert_allclose(root_sift(plain.descriptors), expected, atol=1e-6)


def test_presets_and_empty_image() -> None:
    seed = PRESETS["seed"]
    assert (seed.n_features, seed.contrast_threshold, seed.edge_threshold) == (500, 0.01, 30)
    assert seed.max_side == 1024 and not seed.root and PRESETS["rootsift"].root
    feats = extract_sift(np.full((40, 60, 3), 128, np.uint8), PRESETS["rootsift"])
    assert len(feats) == 0 and feats.dim == 128 and feats.image_size == (60, 40)
    capped = extract_sift(shapes_image(2, 512, 384), dataclasses.replace(FULL, n_features=30))
    assert 0 < len(capped) <= 40  # OpenCV may add a few orientation duplicates
    assert np.all(np.diff(capped.scores) <= 0)  # strongest first
    upright = extract_sift(shapes_image(2), dataclasses.replace(FULL, upright=True))
    assert len(upright) > 0 and np.all(upright.orientations == 0)


# -- feature store ---------------------------------------------------------------------------
@pytest.mark.parametrize("half", [False, True])
def test_store_round_trip(tmp_path: Path, half: bool) -> None:
    rng = np.random.default_rng(0)
    names = ["db/all_souls_000001", "query/all_souls_1", "50%/a/b", ".hidden", "plain"]
    feats = {n: random_feats(rng, int(rng.integers(1, 50))) for n in names}
    path = tmp_path / "f.h5"
    with FeatureWriter(path, {"extractor": "test", "n": 1}, half=half) as w:
        for n in names:
            w.write(n, feats[n], {"bbox": [1.5, 2.0, 30.0, 40.0]} if n.startswith("q") else None)
    with FeatureReader(path) as r:
        assert sorted(names) == r.names() and len(r) == len(names)
        assert r.names("db/") == ["db/all_souls_000001"]
        assert r.config == {"extractor": "test", "n": 1} and r.dim == 128
        assert "query/all_souls_1" in r and "nope" not in r
        for n in names:
            assert_feats_equal(r.get(n), feats[n], atol=1e-3 if half else 0.0)
        assert r.attrs("query/all_souls_1") == {"bbox": [1.5, 2.0, 30.0, 40.0]}
        assert [n for n, _ in r.iter()] == sorted(names)
        with pytest.raises(InputError, match="nope"):
            r.get("nope")
    with h5py.File(path) as f:
        dtype = f["features/db%2Fall_souls_000001/descriptors"].dtype
        assert dtype == (np.float16 if half else np.float32)


def test_store_empty_features(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with FeatureWriter(path, {}) as w:
        w.write("db/empty", LocalFeatures.empty(128, (10, 20)))
    with FeatureReader(path) as r:
        got = r.get("db/empty")
        assert len(got) == 0 and got.dim == 128 and got.image_size == (10, 20)
        desc, index = load_descriptors(r, ["db/empty"])
        assert desc.shape == (0, 128) and index.shape == (0,)


def test_store_resume_and_config_mismatch(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "f.h5"
    with FeatureWriter(path, {"a": 1}) as w:
        w.write("db/x", random_feats(rng, 5))
    with FeatureWriter(path, {"a": 1}) as w:
        assert w.has("db/x") and not w.has("db/y") and len(w) == 1
        w.write("db/y", random_feats(rng, 3))
    with FeatureReader(path) as r:
        assert r.names() == ["db/x", "db/y"]
    with pytest.raises(InputError, match=str(path)):
        FeatureWriter(path, {"a": 2})
    with pytest.raises(InputError, match="float16"):
        FeatureWriter(path, {"a": 1}, half=True)
    with FeatureWriter(path, {"a": 2}, resume=False) as w:  # a fresh file
        assert len(w) == 0


def test_store_drops_interrupted_groups(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "f.h5"
    with FeatureWriter(path, {"a": 1}) as w:
        w.write("db/done", random_feats(rng, 4))
    with h5py.File(path, "a") as f:  # what a killed writer leaves behind, and a stray group
        f["staging"].create_group("db%2Fhalf").create_dataset("keypoints", data=np.zeros((1, 2)))
        f["features"].create_group("db%2Fstray")
    with FeatureReader(path) as r:
        with pytest.raises(InputError, match="incomplete"):
            r.get("db/stray")
    with FeatureWriter(path, {"a": 1}) as w:
        assert w.has("db/done") and not w.has("db/half") and not w.has("db/stray")
    with FeatureReader(path) as r:
        assert r.names() == ["db/done"]
    with h5py.File(path) as f:
        assert len(f["staging"]) == 0


def test_store_survives_kill(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from delfx.features.types import LocalFeatures
        from delfx.io.featurestore import FeatureWriter
        w = FeatureWriter({str(path)!r}, {{"a": 1}}, flush_every=4)
        for i in range(9):
            w.write(f"db/{{i}}", LocalFeatures.empty(8, (1, 1)))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode != 0
    with FeatureWriter(path, {"a": 1}) as w:
        assert all(w.has(f"db/{i}") for i in range(8))
    with FeatureReader(path) as r:
        assert len(r) >= 8 and r.dim == 8


def test_store_dimension_mismatch(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with FeatureWriter(tmp_path / "f.h5", {}) as w:
        w.write("db/a", random_feats(rng, 3, dim=128))
        with pytest.raises(InputError, match="db/b"):
            w.write("db/b", random_feats(rng, 3, dim=64))
        assert not w.has("db/b")


def test_reader_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.h5"):
        FeatureReader(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(InputError, match="other.h5"):
        FeatureReader(other)
    with pytest.raises(InputError, match="other.h5"):
        FeatureWriter(other, {})
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(InputError, match="text.h5"):
        FeatureReader(text)


def test_load_descriptors(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    feats = {f"db/{i}": random_feats(rng, n) for i, n in enumerate([10, 3, 0, 7])}
    with FeatureWriter(tmp_path / "f.h5", {}) as w:
        for n, f in feats.items():
            w.write(n, f)
    with FeatureReader(tmp_path / "f.h5") as r:
        names = ["db/3", "db/0", "db/1", "db/2"]
        desc, index = load_descriptors(r, names)
        assert desc.shape == (20, 128) and desc.dtype == np.float32
        np.testing.assert_array_equal(np.bincount(index, minlength=4), [7, 10, 3, 0])
        np.testing.assert_array_equal(desc[:7], feats["db/3"].descriptors)
        sub, sub_index = load_descriptors(r, names, max_per_image=4, rng=0)
        np.testing.assert_array_equal(np.bincount(sub_index, minlength=4), [4, 4, 3, 0])
        rows = {tuple(x) for x in feats["db/0"].descriptors}
        assert all(tuple(x) in rows for x in sub[4:8])
        again, _ = load_descriptors(r, names, max_per_image=4, rng=0)
        np.testing.assert_array_equal(sub, again)


# -- extract stage ---------------------------------------------------------------------------
@pytest.fixture
def shapes_dataset(tmp_path: Path) -> tuple[Path, str]:
    """A 4-image, 2-query dataset of textured photos in the revisited layout."""
    root, name = tmp_path / "data", "shapes"
    imlist, qimlist = [f"db{i}" for i in range(4)], ["q0", "q1"]
    for i, n in enumerate(imlist + qimlist):
        save_jpeg(root / name / "jpg" / f"{n}.jpg", shapes_image(10 + i))
    gnd = {
        "imlist": imlist,
        "qimlist": qimlist,
        "gnd": [
            {"bbx": [33.3, 20.6, 180.2, 140.9], "easy": [0], "hard": [1], "junk": []},
            {"bbx": [0, 0, 256, 192], "easy": [2], "hard": [], "junk": [3]},
        ],
    }
    write_gnd(root / name, name, gnd)
    return root, name


def test_extract_dataset_parallel_equals_serial(
    tmp_path: Path, shapes_dataset: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, name = shapes_dataset
    conf = extract.ExtractConfig(sift=PRESETS["rootsift"])
    one = extract.main(conf, tmp_path / "w1.h5", root=root, dataset=name, workers=1)
    two = extract.main(conf, tmp_path / "w2.h5", root=root, dataset=name, workers=2)
    expected = ["db/db0", "db/db1", "db/db2", "db/db3", "query/q0", "query/q1"]
    with FeatureReader(one) as r1, FeatureReader(two) as r2:
        assert r1.names() == r2.names() == expected
        assert r1.config == conf.store_config()
        for n in expected:
            assert len(r1.get(n)) > 10
            assert_feats_equal(r1.get(n), r2.get(n))
            assert r1.attrs(n) == r2.attrs(n)
        q0 = r1.get("query/q0")
        assert q0.image_size == (256, 192)
        assert r1.attrs("query/q0") == {
            "bbox": [33.3, 20.6, 180.2, 140.9],
            "crop": [33, 21, 180, 141],
        }
        assert np.all((q0.keypoints >= [33, 21]) & (q0.keypoints <= [180, 141]))
    # resume: everything is stored already, so nothing is extracted again
    monkeypatch.setattr(extract, "extract_job", lambda *a: pytest.fail("re-extracted"))
    extract.main(conf, one, root=root, dataset=name, workers=1)
    with FeatureReader(one) as r1:
        assert len(r1) == 6
    with pytest.raises(InputError, match="w1.h5"):
        extract.main(extract.ExtractConfig(sift=PRESETS["seed"]), one, root=root, dataset=name)


def test_extract_folder_and_truncated_image(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    save_jpeg(photos / "a.jpg", shapes_image(20))
    save_jpeg(photos / "sub" / "b.jpg", shapes_image(21))
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "f.h5"
    conf = extract.ExtractConfig(sift=PRESETS["seed"])
    extract.main(conf, out, images_dir=photos, workers=1, progress=False)
    with FeatureReader(out) as r:
        assert r.names() == ["db/a", "db/sub/b"]
    data = save_jpeg(photos / "sub" / "c.jpg", shapes_image(22)).read_bytes()
    (photos / "sub" / "c.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="c.jpg"):
        extract.main(conf, out, images_dir=photos, workers=1, progress=False)
    with FeatureReader(out) as r:
        assert r.names() == ["db/a", "db/sub/b"]
    with pytest.raises(InputError, match="either"):
        extract.main(conf, out, images_dir=photos, root=tmp_path, dataset="x")


def test_cli_extract_sift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    save_jpeg(photos / "a.jpg", shapes_image(30))
    out = tmp_path / "f.h5"
    args = ["extract", "sift", "--images", str(photos), "--out", str(out), "--workers", "1"]
    assert cli_main([*args, "--preset", "seed", "--half", "-q"]) == 0
    assert str(out) in capsys.readouterr().out
    with FeatureReader(out) as r:
        assert r.names() == ["db/a"] and r.config["sift"]["n_features"] == 500
    assert cli_main([*args, "--preset", "rootsift", "-q"]) == 2  # config differs from the file
    assert "config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*args, "--root", str(tmp_path), "--dataset", "x"])

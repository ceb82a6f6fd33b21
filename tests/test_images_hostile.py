"""Hostile and unusual photos: decompression bombs under PIL's limit, 16-bit and float images.

Issue 15, defects 3 (a pixel cap checked from the header, before decoding; downscale on load)
and 4 (high bit-depth images scaled into 0..255, not clipped to white).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from delfx.errors import InputError
from delfx.features.sift import SiftConfig, extract_sift
from delfx.io import images
from delfx.io.images import image_size, jpeg_bytes_for, read_image, resize_max

SAMPLES = Path(images.__file__).resolve().parents[1] / "samples" / "groups"
PHOTO = SAMPLES / "berlin_cathedral" / "01.jpg"
BOMB_SIDE = 13000
ENV = "DELFX_MAX_PIXELS"  # the documented setting


class Decoded(Exception):
    """Raised by a patched ``load``: the loader got past its checks and began decoding."""


@pytest.fixture(autouse=True)
def _no_cap_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 13000 x 13000 all-black 1-bit PNG: about 20 KB on disk, 169 megapixels decoded."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(path)
    assert path.stat().st_size < 100_000
    return path


@pytest.fixture
def no_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any decode raise :class:`Decoded`, so a test sees whether the loader got that far."""

    def load(self: Image.Image) -> None:
        raise Decoded

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(Image.Image, "load", load)


def grey_photo() -> np.ndarray:
    """The sample photo as ``H x W`` ``uint8`` grey."""
    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("L"))


def white_fraction(image: np.ndarray) -> float:
    return float((image >= 250).all(axis=-1).mean())


def n_sift(image: np.ndarray) -> int:
    return len(extract_sift(image, SiftConfig(max_side=4096)).keypoints)


# --- defect 3: the pixel cap ---------------------------------------------------------------


@pytest.mark.parametrize("reader", [read_image, image_size, jpeg_bytes_for])
def test_bomb_refused_from_header_without_decoding(bomb: Path, no_decode: None, reader) -> None:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError) as err:
            reader(bomb)
    assert time.perf_counter() - start < 5.0
    msg = str(err.value)
    assert "\n" not in msg
    assert str(bomb) in msg
    assert f"{BOMB_SIDE}x{BOMB_SIDE}" in msg
    assert "169" in msg and "40" in msg  # its megapixels and the cap's
    assert ENV in msg  # how to raise the cap
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_bomb_with_raised_cap_gets_to_decoding(
    bomb: Path, no_decode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "200000000")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Decoded):
            read_image(bomb)
        with pytest.raises(Decoded):
            read_image(bomb, max_pixels=170_000_000)
        with pytest.raises(InputError, match="bomb.png"):
            read_image(bomb, max_pixels=100_000_000)  # the keyword wins over the variable
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_cap_from_env_var_and_module_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "big.png"
    Image.new("L", (2000, 2000), 128).save(path)
    assert read_image(path).shape == (2000, 2000, 3)  # 4 megapixels: under the default cap
    assert image_size(path) == (2000, 2000)

    monkeypatch.setenv(ENV, "1000000")
    with pytest.raises(InputError, match=r"big\.png: 2000x2000 .*1 megapixels"):
        read_image(path)
    with pytest.raises(InputError, match="big.png"):
        image_size(path)
    assert read_image(path, max_pixels=4_000_000).shape == (2000, 2000, 3)

    monkeypatch.setenv(ENV, "4e6")
    assert read_image(path).shape == (2000, 2000, 3)

    monkeypatch.delenv(ENV)
    monkeypatch.setattr(images, "MAX_PIXELS", 3_999_999)
    with pytest.raises(InputError, match="big.png"):
        read_image(path)


@pytest.mark.parametrize("value", ["lots", "0", "-5", "2.5"])
def test_bad_cap_setting_is_one_line(tmp_path: Path, monkeypatch, value: str) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    monkeypatch.setenv(ENV, value)
    with pytest.raises(InputError, match=ENV) as err:
        read_image(path)
    assert "\n" not in str(err.value)


# --- defect 3: downscale on load -----------------------------------------------------------


@pytest.mark.parametrize("max_side", [150, 333, 640, 2000])
def test_max_side_jpeg_close_to_resize_of_full_decode(max_side: int) -> None:
    small = read_image(PHOTO, max_side=max_side)
    ref = resize_max(read_image(PHOTO), max_side)
    assert small.shape == ref.shape and small.dtype == np.uint8
    assert max(small.shape[:2]) <= max_side
    diff = np.abs(small.astype(np.int16) - ref.astype(np.int16))
    assert diff.mean() < 3.0


def test_max_side_jpeg_decodes_at_reduced_scale() -> None:
    w, h = image_size(PHOTO)
    cap = w * h // 3  # the full decode is over it, a half-scale decode under
    with pytest.raises(InputError, match="01.jpg"):
        read_image(PHOTO, max_pixels=cap)
    assert max(read_image(PHOTO, max_side=150, max_pixels=cap).shape) <= 150


def test_max_side_png_equals_resize_max(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.open(PHOTO).save(path)
    np.testing.assert_array_equal(read_image(path, max_side=200), resize_max(read_image(path), 200))


def test_max_side_rotated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    with Image.open(PHOTO) as im:
        exif = im.getexif()
        exif[0x0112] = 6  # stored sideways: turn 90 degrees on reading
        im.save(path, quality=95, exif=exif)
    full = read_image(path)
    w, h = Image.open(PHOTO).size
    assert full.shape == (w, h, 3) and image_size(path) == (h, w)
    small = read_image(path, max_side=160)
    ref = resize_max(full, 160)
    assert small.shape == ref.shape
    assert np.abs(small.astype(np.int16) - ref.astype(np.int16)).mean() < 3.0


def test_bad_max_side() -> None:
    with pytest.raises(InputError, match="01.jpg"):
        read_image(PHOTO, max_side=0)


# --- defect 4: high bit-depth and float images ---------------------------------------------


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    grey = grey_photo()
    p8, p16 = tmp_path / "grey8.png", tmp_path / "grey16.png"
    Image.fromarray(grey).save(p8)
    img16 = Image.fromarray(grey.astype(np.uint16) * 257)
    assert img16.mode == "I;16"
    img16.save(p16)
    a8, a16 = read_image(p8), read_image(p16)
    assert a16.shape == a8.shape and a16.dtype == np.uint8
    assert np.abs(a16.astype(np.int16) - a8.astype(np.int16)).max() <= 1
    assert white_fraction(a16) < 0.5
    assert white_fraction(a16) <= white_fraction(a8) + 0.01
    n8, n16 = n_sift(a8), n_sift(a16)
    assert n8 > 100
    assert abs(n16 - n8) <= 0.1 * n8
    # the other readers see the same pixels
    assert image_size(p16) == image_size(p8)
    with Image.open(__import__("io").BytesIO(jpeg_bytes_for(p16))) as im:
        assert white_fraction(np.asarray(im.convert("RGB"))) < 0.5


def test_16bit_full_range_and_other_layouts(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    want = np.rint(ramp / 257.0).astype(np.uint8)
    paths = {
        "I;16": tmp_path / "le.png",
        "I;16B": tmp_path / "be.tif",
        "I": tmp_path / "pgm16.pgm",  # PIL reads a 16-bit PGM as 32-bit "I"
    }
    Image.fromarray(ramp).save(paths["I;16"])
    Image.frombytes("I;16B", (64, 48), ramp.astype(">u2").tobytes()).save(paths["I;16B"])
    cv2.imwrite(str(paths["I"]), ramp)
    for mode, path in paths.items():
        with Image.open(path) as im:
            assert im.mode == mode
        got = read_image(path)
        assert got.shape == (48, 64, 3)
        np.testing.assert_array_equal(got[:, :, 0], want, err_msg=mode)
        assert got[0, 0, 0] == 0 and got[-1, -1, 0] == 255


def test_32bit_int_outside_16bit_range_uses_data_range(tmp_path: Path) -> None:
    path = tmp_path / "wide.tif"
    values = (np.arange(48 * 64).reshape(48, 64) * 1000 - 100_000).astype(np.int32)
    Image.fromarray(values).save(path)
    got = read_image(path)[:, :, 0]
    assert got.min() == 0 and got.max() == 255
    assert (np.diff(got.astype(int).ravel()) >= 0).all()  # order kept


def test_float_tiff(tmp_path: Path) -> None:
    grey = grey_photo()
    p8, unit, wide = tmp_path / "grey8.png", tmp_path / "unit.tif", tmp_path / "wide.tif"
    Image.fromarray(grey).save(p8)
    Image.fromarray(grey.astype(np.float32) / 255.0).save(unit)
    Image.fromarray(grey.astype(np.float32) * 4.0 + 10.0).save(wide)
    with Image.open(unit) as im:
        assert im.mode == "F"
    a8 = read_image(p8)
    got = read_image(unit)
    assert np.abs(got.astype(np.int16) - a8.astype(np.int16)).max() <= 1
    # outside [0, 1]: its min..max onto 0..255
    lo, hi = int(grey.min()), int(grey.max())
    expect = np.rint((grey.astype(np.float64) - lo) * 255.0 / (hi - lo))
    assert np.abs(read_image(wide)[:, :, 0].astype(np.int16) - expect).max() <= 1
    assert white_fraction(read_image(wide)) < 0.5


def test_float_with_nan(tmp_path: Path) -> None:
    path = tmp_path / "nan.tif"
    values = np.linspace(0.0, 1.0, 100, dtype=np.float32).reshape(10, 10)
    values[0, 0] = np.nan
    Image.fromarray(values).save(path)
    got = read_image(path)
    assert got[0, 0, 0] == 0 and got[-1, -1, 0] == 255


def test_48bit_png_keeps_high_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, size=(24, 32, 3), dtype=np.uint16)
    path = tmp_path / "rgb48.png"
    cv2.imwrite(str(path), rgb16[:, :, ::-1])  # OpenCV writes BGR
    got = read_image(path).astype(np.int16)
    assert np.abs(got - (rgb16 >> 8)).max() <= 1


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK"])
def test_other_modes_keep_working(tmp_path: Path, mode: str) -> None:
    rgb = np.asarray(Image.open(PHOTO).convert("RGB").resize((64, 48)))
    img = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("a.tif" if mode == "CMYK" else "a.png")
    if mode == "P":
        img.info["transparency"] = 0
    img.save(path)
    got = read_image(path)
    assert got.shape == (48, 64, 3) and got.dtype == np.uint8
    with Image.open(path) as im:
        np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))


def test_palette_with_alpha_in_memory(tmp_path: Path) -> None:
    img = Image.open(PHOTO).convert("RGB").resize((64, 48)).convert("PA")  # no file format has PA
    got = images._to_rgb(img, tmp_path / "pa")
    assert got.shape == (48, 64, 3)
    np.testing.assert_array_equal(got, np.asarray(img.convert("RGB")))

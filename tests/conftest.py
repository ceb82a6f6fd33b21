"""Shared fixtures: tiny datasets in the revisited layout, made on the fly, and datasets built
from the real photos shipped in the package (``delfx/samples``, see its ``ATTRIBUTION.md``), so
a clone alone runs every test."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from delfx import build_groups, build_training, synth
from delfx.datasets.gnd_io import write_gnd
from delfx.demo import samples_dir

#: The package's sample photos: ``groups/<place>/NN.jpg`` (2-4 views of 19 places) and
#: ``distractors/*.jpg`` (13 unrelated photos), at most 640 px on the longer side.
SAMPLES = samples_dir()
#: Training places of :func:`data_root` and its benchmark's places: disjoint, 2 views each.
TRAIN_GROUPS = (
    "admiralty_arch",
    "aerial_city",
    "campus_building",
    "framed_drawing",
    "gendarmenmarkt_dom",
    "grand_canyon_river",
)
TEST_GROUPS = ("leuven_street", "pasta_box", "rooftops", "sacre_coeur")
#: The places of :func:`synth_root`: one photo each becomes a query and 4 synthetic views.
SYNTH_PLACES = (
    "admiralty_arch",
    "berlin_cathedral",
    "campus_building",
    "maupertuis_house",
    "sagrada_familia",
    "st_pauls_cathedral",
)


@pytest.fixture(autouse=True)
def _fresh_delfx_logging():
    """Drop the handler a ``delfx.cli.main`` call installs: it writes to the stderr that pytest
    captured for that test, which is closed once the test ends."""
    yield
    logging.getLogger("delfx").handlers.clear()


def make_photo(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """Write a small textured JPEG and return its path."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90)
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, str]:
    """A 6-image, 2-query revisited dataset under ``tmp_path/data/tiny``."""
    root = tmp_path / "data"
    name = "tiny"
    imlist = [f"db{i}" for i in range(6)]
    qimlist = ["q0", "q1"]
    for i, n in enumerate(imlist + qimlist):
        make_photo(root / name / "jpg" / f"{n}.jpg", seed=i)
    gnd = {
        "imlist": imlist,
        "qimlist": qimlist,
        "gnd": [
            {"bbx": [4, 4, 40, 30], "easy": [0, 2], "hard": [4], "junk": [1]},
            {"bbx": [0, 0, 64, 48], "easy": [3], "hard": [], "junk": [5]},
        ],
    }
    write_gnd(root / name, name, gnd)
    return root, name


def copy_small(names: tuple[str, ...], dst: Path, side: int = 96) -> Path:
    """Copy groups' photos shrunk to a longer side of ``side`` px."""
    for name in names:
        for src in sorted((SAMPLES / "groups" / name).glob("*.jpg")):
            (dst / name).mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                im = im.convert("RGB")
                im.thumbnail((side, side))
                im.save(dst / name / src.name, quality=90)
    return dst


def training_root(base: Path) -> Path:
    """``base/data``: training set ``views`` (6 places) and benchmark ``tinytest`` (4), from
    the shipped sample photos at 96 px."""
    root = base / "data"
    build_training.main(copy_small(TRAIN_GROUPS, base / "g_train"), root, "views", val_fraction=0)
    groups = copy_small(TEST_GROUPS, base / "g_test")
    build_groups.main(build_groups.GroupsConfig(progress=False), groups, root, "tinytest")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A datasets root of :func:`training_root`."""
    return training_root(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Benchmark ``tiny``: the first view of each of :data:`SYNTH_PLACES` becomes a query and 4
    synthetic views, and the first 6 shipped distractors one view each: 30 database images, 6
    queries. Built once per session (the tests only read it)."""
    tmp = tmp_path_factory.mktemp("e2e")
    photos, distractors = tmp / "photos", tmp / "distractors"
    photos.mkdir()
    distractors.mkdir()
    for place in SYNTH_PLACES:
        first = sorted((SAMPLES / "groups" / place).glob("*.jpg"))[0]
        shutil.copyfile(first, photos / f"{place}.jpg")
    for f in sorted((SAMPLES / "distractors").glob("*.jpg"))[:6]:
        shutil.copyfile(f, distractors / f.name)
    conf = synth.SynthConfig(size=320, views=4)
    synth.main(conf, photos, tmp / "root", "tiny", seed=0, distractors_dir=distractors)
    return tmp / "root"


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster of 2 CPUs, started once per test session (``delfx[cluster]``)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A mount point whose tmpfs is sized by the test (``mount(size_bytes)``); unmounted after.
    Skipped unless the tests run as root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip() or proc.returncode}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounted:
            if subprocess.run(["umount", str(point)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture(scope="session")
def kill_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inputs of ``tests/kill_scenarios.py``, built once per session; returns their base."""
    from tests.kill_scenarios import build_inputs

    base = tmp_path_factory.mktemp("kills")
    build_inputs(base)
    return base


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int, token: str) -> tuple[subprocess.Popen[bytes], dict]:
    """Start ``delfx serve folder`` on 127.0.0.1:``port``; returns the process and its first
    ``/healthz`` answer once it serves (within 120 s)."""
    import httpx

    cmd = [sys.executable, "-m", "delfx", "serve", str(folder), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--token", token], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            return proc, httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise AssertionError("the server exited") from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start in 120 s")

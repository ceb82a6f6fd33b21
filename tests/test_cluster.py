"""Sharded extraction: plans, the sequential, slice and Ray distributors, and killed workers.

Every sharded run is checked against a single-process extraction of the shipped samples,
image for image (keypoints, scales, orientations, scores, descriptors, sizes, attributes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from delfx import extract
from delfx.cli import main as cli_main
from delfx.cluster import plan as shard_plan
from delfx.cluster.distributor import Distributor, from_flags, parse_ray
from delfx.errors import DelfxError, InputError
from delfx.extract import Job
from delfx.extract_sharded import shard_folder
from delfx.features.sift import PRESETS
from delfx.io.featurestore import FeatureReader
from tests.conftest import SAMPLES

CONF = extract.ExtractConfig(sift=PRESETS["rootsift"], workers=1)
ARRAYS = ("keypoints", "scales", "orientations", "scores", "descriptors")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The samples extracted by one process, in one file."""
    out = tmp_path_factory.mktemp("single") / "features.h5"
    return extract.main(CONF, out, images_dir=SAMPLES, workers=1, progress=False)


def assert_same_features(a: Path, b: Path) -> None:
    with FeatureReader(a) as ra, FeatureReader(b) as rb:
        assert ra.names() == rb.names()
        assert ra.config == rb.config
        for name in ra.names():
            fa, fb = ra.get(name), rb.get(name)
            for key in ARRAYS:
                assert np.array_equal(getattr(fa, key), getattr(fb, key)), (name, key)
            assert tuple(fa.image_size) == tuple(fb.image_size), name
            assert ra.attrs(name) == rb.attrs(name), name


def _sharded(out: Path, dist: Distributor, **kw) -> Path:
    return extract.main(
        CONF, out, images_dir=SAMPLES, workers=1, progress=False, distributor=dist, **kw
    )


def test_split_is_contiguous_deterministic_and_covers_every_image() -> None:
    assert shard_plan.split(10, 3) == [range(0, 3), range(3, 6), range(6, 10)]
    for n, k in [(57, 3), (57, 4), (5, 5), (1000, 7)]:
        spans = shard_plan.split(n, k)
        assert [i for s in spans for i in s] == list(range(n))
        assert max(map(len, spans)) - min(map(len, spans)) <= 1
    with pytest.raises(InputError, match="6 shards for 5 images"):
        shard_plan.split(5, 6)
    jobs = [Job(f"db/{c}", Path(c)) for c in "dacbe"]
    first = shard_plan.shards(jobs, 2, lambda i: (Path(f"f{i}.h5"), None), first_id=10)
    again = shard_plan.shards(reversed(jobs), 2, lambda i: (Path(f"f{i}.h5"), None), first_id=10)
    assert first == again
    assert [s.names for s in first] == [["db/a", "db/b"], ["db/c", "db/d", "db/e"]]
    assert [s.first_id for s in first] == [10, 12]


def test_flags_parse_and_refuse_bad_combinations() -> None:
    assert parse_ray("local[3]") == (None, 3)
    assert parse_ray("local") == (None, None)
    assert parse_ray("auto") == ("auto", None)
    assert parse_ray("10.0.0.1:6379") == ("10.0.0.1:6379", None)
    assert shard_plan.parse_slice("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError):
            shard_plan.parse_slice(bad)
    assert from_flags(shard=(1, 3)) == Distributor(shards=3, only=1)
    assert from_flags(ray="local[2]", shards=5).kind == "ray"
    with pytest.raises(InputError, match="--shard and --ray"):
        from_flags(ray="auto", shard=(0, 2))
    with pytest.raises(InputError, match="disagrees"):
        from_flags(shard=(0, 2), shards=3)
    with pytest.raises(InputError, match="local\\[0\\]"):
        parse_ray("local[0]")


def test_sequential_shards_equal_one_process(tmp_path: Path, single: Path) -> None:
    out = _sharded(tmp_path / "f.h5", Distributor(shards=3))
    assert out == tmp_path / "f.h5"
    assert not shard_folder(out).exists()  # merged, then removed
    assert_same_features(single, out)


def test_ray_shards_equal_one_process(ray_session, tmp_path: Path, single: Path) -> None:
    out = _sharded(tmp_path / "f.h5", Distributor("ray", shards=3))
    assert_same_features(single, out)


def test_slices_then_one_run_finishes(tmp_path: Path, single: Path) -> None:
    out = tmp_path / "f.h5"
    folder = shard_folder(out)
    for i in (2, 0):  # an array job's tasks, in any order
        assert _sharded(out, Distributor(shards=3, only=i)) == folder
    assert not out.exists()
    done = sorted(p.name for p in folder.glob("*.done"))
    assert done == ["features-00000.done", "features-00002.done"]
    marker = json.loads((folder / "features-00000.done").read_text())
    assert marker["n_images"] == 19 and marker["shard"] == 0
    stamp = (folder / "features-00000.h5").stat().st_mtime_ns
    with pytest.raises(InputError, match="shard count"):  # another split of the same run
        _sharded(out, Distributor(shards=2))
    _sharded(out, Distributor(shards=3, only=1))
    assert (folder / "features-00000.h5").stat().st_mtime_ns == stamp  # done: not redone
    extract.main(CONF, out, images_dir=SAMPLES, workers=1, progress=False)  # finds the plan
    assert not folder.exists()
    assert_same_features(single, out)


def test_a_marker_of_another_plan_is_not_done(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    _sharded(out, Distributor(shards=2, only=0))
    folder = shard_folder(out)
    plan = shard_plan.read_plan(folder)
    jobs = extract.folder_jobs(SAMPLES)
    shards = shard_plan.shards(jobs, 2, lambda i: (folder / f"features-{i:05d}.h5", None))
    assert shard_plan.is_done(shards[0], plan) and not shard_plan.is_done(shards[1], plan)
    other = {**plan, "settings": "0" * 16}
    assert not shard_plan.is_done(shards[0], other)
    (folder / "features-00000.h5").unlink()
    assert not shard_plan.is_done(shards[0], plan)  # a marker without its file


def _wait_mid_shard(folder: Path, timeout: float = 120.0) -> None:
    """Until shard 0 is done and shard 1 has started, not finished."""
    stop = time.monotonic() + timeout
    while time.monotonic() < stop:
        if (folder / "features-00000.done").exists() and (folder / "features-00001.h5").exists():
            return
        time.sleep(0.01)
    raise AssertionError(f"{folder}: shard 1 never started")


@pytest.mark.parametrize("delay", [0.0, 0.6], ids=["as-shard-1-is-created", "within-shard-1"])
def test_killed_run_resumes_and_equals_one_process(
    delay: float, tmp_path: Path, single: Path
) -> None:
    out = tmp_path / "f.h5"
    cmd = [sys.executable, "-m", "delfx", "-q", "extract", "sift", "--images", str(SAMPLES),
           "--out", str(out), "--shards", "3", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_mid_shard(shard_folder(out))
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    folder = shard_folder(out)
    assert proc.returncode == -signal.SIGKILL
    assert not (folder / "features-00001.done").exists()  # killed during shard 1
    assert not out.exists()
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert_same_features(single, out)


def _actor_pids() -> list[int]:
    """Processes of the Ray shard actors (Ray titles them after the actor class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"_ShardActor" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_ray_worker_killed_during_a_shard_is_replaced(
    ray_session, tmp_path: Path, single: Path
) -> None:
    out = tmp_path / "f.h5"
    errors: list[BaseException] = []

    def driver() -> None:
        try:
            _sharded(out, Distributor("ray", shards=3, workers=1))
        except BaseException as exc:  # noqa: BLE001 (reported by the test thread)
            errors.append(exc)

    thread = threading.Thread(target=driver)
    thread.start()
    _wait_mid_shard(shard_folder(out))
    victims = _actor_pids()
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    assert not (shard_folder(out) / "features-00001.done").exists()  # it died during shard 1
    thread.join(300)
    assert not thread.is_alive() and not errors, errors
    assert victims[0] not in _actor_pids()
    assert_same_features(single, out)


def test_ray_missing_is_one_line(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if delfx[cluster] were not installed
    with pytest.raises(DelfxError, match=r"pip install 'delfx\[cluster\]'"):
        _sharded(tmp_path / "f.h5", Distributor("ray"))
    out = tmp_path / "g.h5"
    args = ["-q", "extract", "sift", "--images", str(SAMPLES), "--out", str(out)]
    rc = cli_main([*args, "--ray", "local[2]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "delfx[cluster]" in err[0], err
    assert not out.exists()


def test_a_ray_address_nobody_answers_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "f.h5"
    cmd = [sys.executable, "-m", "delfx", "-q", "extract", "sift", "--images", str(SAMPLES),
           "--out", str(out), "--ray", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert f"127.0.0.1:{port}: no Ray head answers there" in err[0]
    assert not out.exists() and not shard_folder(out).exists()

"""Feature files: a truncated file is not "open in another writer", a real lock conflict is; links
and external storage that would read other files are refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.io.featurestore import FeatureReader, FeatureWriter

CONFIG = {"extractor": "test"}


def _feats(seed: int, n: int = 40, dim: int = 16) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures(
        keypoints=rng.random((n, 2), dtype=np.float32) * 100,
        scales=rng.random(n, dtype=np.float32),
        orientations=rng.random(n, dtype=np.float32),
        descriptors=rng.random((n, dim), dtype=np.float32),
        scores=rng.random(n, dtype=np.float32),
        image_size=(100, 80),
    )


def _store(path: Path, names: tuple[str, ...] = ("db/a", "db/b")) -> Path:
    with FeatureWriter(path, CONFIG) as w:
        for i, name in enumerate(names):
            w.write(name, _feats(i, n=400))
    return path


def _one_line(exc: pytest.ExceptionInfo[InputError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# -- truncated files and locks -----------------------------------------------------------------
def test_truncated_file_is_reported_as_such(tmp_path: Path) -> None:
    path = _store(tmp_path / "f.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for open_it in (lambda: FeatureReader(path), lambda: FeatureWriter(path, CONFIG)):
        with pytest.raises(InputError) as exc:
            open_it()
        msg = _one_line(exc)
        assert str(path) in msg and "truncated or corrupt" in msg
        assert "another writer" not in msg


def test_lock_conflict_says_another_writer(tmp_path: Path) -> None:
    path = _store(tmp_path / "f.h5")
    script = textwrap.dedent(f"""
        from delfx.errors import InputError
        from delfx.io.featurestore import FeatureWriter
        try:
            FeatureWriter({str(path)!r}, {CONFIG!r})
        except InputError as exc:
            print(exc)
        else:
            print("opened")
    """)
    with FeatureWriter(path, CONFIG):
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
    if "opened" in proc.stdout:
        pytest.skip("HDF5 file locking is off here (HDF5_USE_FILE_LOCKING)")
    assert proc.returncode == 0, proc.stderr
    assert str(path) in proc.stdout and "another writer" in proc.stdout
    with FeatureReader(path) as r:  # the file is fine once the writer is gone
        assert r.names() == ["db/a", "db/b"]


# -- links and external storage ----------------------------------------------------------------
@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A local file that a feature file must not pull in."""
    path = tmp_path / "hostname"
    path.write_bytes(b"secret-host\n" * 1000)
    return path


def _add_external_storage(path: Path, secret: Path) -> None:
    with h5py.File(path, "a") as f:
        g = f["features"].create_group("db%2Fext")
        for field, shape in (("keypoints", (4, 2)), ("scales", (4,)), ("orientations", (4,))):
            g.create_dataset(field, data=np.zeros(shape, np.float32))
        g.create_dataset("scores", data=np.zeros(4, np.float32))
        g.create_dataset("image_size", data=np.array([10, 10], np.int32))
        size = secret.stat().st_size
        g.create_dataset(
            "descriptors", shape=(size // 4 // 4, 4), dtype=np.float32, external=[(secret, 0, size)]
        )
        g.attrs["complete"] = True


def _add_external_link(path: Path, secret_h5: Path) -> None:
    with h5py.File(path, "a") as f:
        f["features"]["db%2Fext"] = h5py.ExternalLink(str(secret_h5), "/features/db%2Fa")


def _add_soft_link(path: Path, _: Path) -> None:
    with h5py.File(path, "a") as f:
        f["features"]["db%2Fext"] = h5py.SoftLink("/features/db%2Fa")


ATTACKS = {
    "external-storage": _add_external_storage,
    "external-link": _add_external_link,
    "soft-link": _add_soft_link,
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_links_and_external_storage_are_refused(tmp_path: Path, secret: Path, attack: str) -> None:
    path = _store(tmp_path / "f.h5")
    other = _store(tmp_path / "other.h5")
    ATTACKS[attack](path, secret if attack == "external-storage" else other)
    with FeatureReader(path) as r:
        assert "db/ext" in r.names() and "db/ext" in r
        np.testing.assert_array_equal(r.get("db/a").descriptors, _feats(0, n=400).descriptors)
        for read in (r.get, r.descriptors, r.num_features, r.attrs):
            if read == r.attrs and attack == "external-storage":
                continue  # attributes live in the file itself
            with pytest.raises(InputError) as exc:
                read("db/ext")
            msg = _one_line(exc)
            assert str(path) in msg and "'db/ext'" in msg and "refusing" in msg
    if attack == "external-storage":  # a writer never reads stored data: it may resume
        with FeatureWriter(path, CONFIG) as w:
            assert w.has("db/a")
        return
    with pytest.raises(InputError) as exc:  # a writer does not follow links either
        FeatureWriter(path, CONFIG)
    msg = _one_line(exc)
    assert str(path) in msg and "'db/ext'" in msg and "refusing" in msg


def test_linked_array_inside_a_group_is_refused(tmp_path: Path) -> None:
    path = _store(tmp_path / "f.h5")
    with h5py.File(path, "a") as f:
        g = f["features"]["db%2Fa"]
        del g["descriptors"]
        g["descriptors"] = h5py.SoftLink("/features/db%2Fb/descriptors")
    with FeatureReader(path) as r:
        with pytest.raises(InputError) as exc:
            r.descriptors("db/a")
        msg = _one_line(exc)
        assert str(path) in msg and "'db/a'" in msg and "'descriptors' is a soft link" in msg
        assert len(r.get("db/b")) == 400


def test_linked_features_group_is_refused_on_open(tmp_path: Path) -> None:
    path = _store(tmp_path / "f.h5")
    other = _store(tmp_path / "other.h5")
    with h5py.File(path, "a") as f:
        del f["features"]
        f["features"] = h5py.ExternalLink(str(other), "/features")
    with pytest.raises(InputError) as exc:
        FeatureReader(path)
    msg = _one_line(exc)
    assert str(path) in msg and "'/features' is an external link" in msg

"""Dataset loading and ground-truth validation, and bad-input errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from delfx.datasets.gnd_io import load_pickle_safely, write_gnd
from delfx.datasets.revisited import RetrievalDataset
from delfx.errors import InputError
from tests.conftest import make_photo


def test_dataset_api(tiny_dataset):
    root, name = tiny_dataset
    ds = RetrievalDataset(root, name)
    assert ds.images == [f"db{i}" for i in range(6)] and ds.queries == ["q0", "q1"]
    assert ds.db_paths[0] == root / name / "jpg" / "db0.jpg"
    assert ds.query_bbox(0) == (4.0, 4.0, 40.0, 30.0)
    q = ds.load_query(0)
    assert q.shape == (26, 36, 3) and q.dtype == np.uint8
    full = ds.load_image(0)
    assert full.shape == (48, 64, 3)
    assert ds.protocols == ("easy", "medium", "hard")


def test_query_crop_matches_box(tiny_dataset):
    root, name = tiny_dataset
    ds = RetrievalDataset(root, name)
    from delfx.io.images import read_image

    whole = read_image(ds.image_path("q0"))
    np.testing.assert_array_equal(ds.load_query(0), whole[4:30, 4:40])


def test_reads_field_pickle_with_numpy_arrays(tmp_path):
    """Real gnd files may hold numpy arrays; the safe unpickler rebuilds them."""
    root, name = tmp_path, "roxford5k"
    for n in ["a", "b", "q"]:
        make_photo(root / name / "jpg" / f"{n}.jpg", seed=2)
    gnd = {
        "imlist": ["a", "b"],
        "qimlist": ["q"],
        "gnd": [
            {
                "bbx": np.array([1.5, 2.0, 30.2, 40.0]),
                "easy": np.array([0]),
                "hard": [],
                "junk": np.array([1], dtype=np.int32),
            }
        ],
    }
    (root / name / f"gnd_{name}.pkl").write_bytes(pickle.dumps(gnd))
    ds = RetrievalDataset(root, name)
    assert ds.truth[0].easy.tolist() == [0] and ds.truth[0].junk.tolist() == [1]


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "gnd_x.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [Evil()]}))
    with pytest.raises(InputError, match="gnd_x.pkl: malformed pickle.*refusing"):
        load_pickle_safely(path)


def _write(root, name, gnd, images=("a", "b", "q")):
    for n in images:
        make_photo(root / name / "jpg" / f"{n}.jpg", seed=3)
    (root / name / f"gnd_{name}.pkl").write_bytes(pickle.dumps(gnd))


GOOD = {
    "imlist": ["a", "b"],
    "qimlist": ["q"],
    "gnd": [{"bbx": [0, 0, 10, 10], "easy": [0], "hard": [], "junk": [1]}],
}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: g["gnd"][0].update(easy=[5]), "field 'easy' index 5 out of range"),
        (lambda g: g["gnd"][0].update(junk=[-1]), "field 'junk' index -1 out of range"),
        (lambda g: g["gnd"][0].update(easy=[0, 0]), "field 'easy' repeats index 0"),
        (lambda g: g.pop("imlist"), "missing key 'imlist'"),
        (lambda g: g["gnd"].append(dict(g["gnd"][0])), "2 entries but qimlist has 1"),
        (lambda g: g["gnd"][0].update(bbx=[5, 5, 1, 1]), "field 'bbx'"),
        (lambda g: g.update(qimlist=["missing"]), "missing.jpg: query image"),
    ],
)
def test_bad_ground_truth(tmp_path, mutate, message):
    import copy

    gnd = copy.deepcopy(GOOD)
    mutate(gnd)
    _write(tmp_path, "ds", gnd)
    with pytest.raises(InputError, match=message) as info:
        RetrievalDataset(tmp_path, "ds")
    assert "gnd_ds.pkl" in str(info.value) or "missing.jpg" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_gnd(tmp_path):
    (tmp_path / "ds" / "jpg").mkdir(parents=True)
    with pytest.raises(InputError, match=r"gnd_ds.pkl: ground-truth file not found"):
        RetrievalDataset(tmp_path, "ds")
    (tmp_path / "ds" / "gnd_ds.pkl").write_bytes(pickle.dumps(GOOD)[:20])
    with pytest.raises(InputError, match=r"gnd_ds.pkl: malformed pickle"):
        RetrievalDataset(tmp_path, "ds")
    (tmp_path / "ds" / "gnd_ds.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match=r"gnd_ds.pkl: malformed pickle"):
        RetrievalDataset(tmp_path, "ds")
    with pytest.raises(InputError, match="dataset folder not found"):
        RetrievalDataset(tmp_path, "nope")


def test_write_gnd_round_trip(tmp_path):
    write_gnd(tmp_path, "x", GOOD)
    assert (tmp_path / "gnd_x.json").exists() and not (tmp_path / "gnd_x.pkl").exists()
    write_gnd(tmp_path, "x", GOOD, export_pkl=True)  # the field's format, on request
    assert load_pickle_safely(tmp_path / "gnd_x.pkl")["gnd"][0]["easy"] == [0]


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    from delfx.io import atomic

    mask = os.umask(0o022)
    try:
        with atomic.staging_dir(tmp_path / "ds") as tmp:
            atomic.write_text(tmp / "a.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "ds").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "ds" / "a.txt").stat().st_mode) == 0o644


def test_staging_dir_removes_partial_output_on_error(tmp_path):
    from delfx.io import atomic

    with pytest.raises(RuntimeError), atomic.staging_dir(tmp_path / "ds") as tmp:
        atomic.write_text(tmp / "a.txt", "x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

"""Operating-system errors on input and output paths are one line, exit 2, nothing half-written;
rerank refuses ids outside the index; dataset image names stay inside the dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from delfx.cli import main as cli_main
from delfx.datasets.gnd_io import write_gnd
from delfx.datasets.revisited import RetrievalDataset
from delfx.errors import InputError
from delfx.io.featurestore import FeatureReader

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "src/delfx/samples/groups").glob("*/*.jpg"))
SMALL_INDEX = ["--codebook-size", "16", "--tree-branch", "4", "--tree-height", "2", "-q"]
UNCREATABLE = "/proc/nonexistent/x"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-image, 2-query dataset of shrunk sample photos, its features, index and ranks."""
    base = tmp_path_factory.mktemp("oserr")
    names = [f"im{i}" for i in range(6)]
    for name, src in zip(names, SAMPLES[::7], strict=False):
        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((160, 160))
            (base / "data/tiny/jpg").mkdir(parents=True, exist_ok=True)
            im.save(base / "data/tiny/jpg" / f"{name}.jpg")
    gnd = [{"easy": [0], "hard": [], "junk": [1]}, {"easy": [2], "hard": [], "junk": [3]}]
    write_gnd(base / "data/tiny", "tiny", {"imlist": names[:4], "qimlist": names[4:], "gnd": gnd})
    feats, idx, ranks = base / "f.h5", base / "idx", base / "r.npz"
    data = ["--root", str(base / "data"), "--dataset", "tiny"]
    assert cli_main(["extract", "sift", *data, "--out", str(feats), "--workers", "1", "-q"]) == 0
    build = ["index", "build", "--features", str(feats), "--codebook-from", str(feats)]
    assert cli_main([*build, "--out", str(idx), *SMALL_INDEX]) == 0
    search = ["search", "--index", str(idx), "--features", str(feats), "-q"]
    assert cli_main([*search, "--output", str(ranks)]) == 0
    (base / "a_file").write_text("not a folder\n")
    (base / "a_folder").mkdir()
    return base


def _command(work: Path, which: str, out: str) -> list[str]:
    feats, idx = str(work / "f.h5"), str(work / "idx")
    if which == "extract":
        photos = str(work / "data/tiny/jpg")
        return ["extract", "sift", "--images", photos, "--out", out, "--workers", "1", "-q"]
    if which == "index":
        build = ["index", "build", "--features", feats, "--codebook-from", feats]
        return [*build, "--out", out, *SMALL_INDEX]
    if which == "search":
        return ["search", "--index", idx, "--features", feats, "--output", out, "-q"]
    data = ["--root", str(work / "data"), "--dataset", "tiny"]
    return ["evaluate", *data, "--ranks", str(work / "r.npz"), "--output", out, "-q"]


def _one_error_line(capsys: pytest.CaptureFixture[str], *must: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("delfx: error: "), err
    for text in must:
        assert text in lines[0], err
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


COMMANDS = ["extract", "index", "search", "evaluate"]


@pytest.mark.parametrize("which", COMMANDS)
def test_output_under_a_file(work: Path, which: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "a_file" / "out"
    assert cli_main(_command(work, which, str(out))) == 2
    _one_error_line(capsys, str(work / "a_file"))
    assert (work / "a_file").read_text() == "not a folder\n"


@pytest.mark.parametrize("which", COMMANDS)
def test_output_under_an_uncreatable_folder(
    work: Path, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(_command(work, which, UNCREATABLE)) == 2
    _one_error_line(capsys, "/proc/nonexistent")


@pytest.mark.parametrize("which", ["extract", "search", "evaluate"])
def test_output_is_a_folder(work: Path, which: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "a_folder"
    assert cli_main(_command(work, which, str(out))) == 2
    _one_error_line(capsys, str(out), "directory")
    assert out.is_dir() and not list(out.iterdir())
    assert _leftovers(work) == []


def test_index_output_is_a_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An index is a folder: a file in its place is refused and kept."""
    assert cli_main(_command(work, "index", str(work / "a_file"))) == 2
    _one_error_line(capsys, str(work / "a_file"))
    assert (work / "a_file").read_text() == "not a folder\n"


def test_extract_overwrite_of_a_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Starting afresh over a folder fails before extracting, leaving no temporary file."""
    out = work / "a_folder"
    assert cli_main([*_command(work, "extract", str(out)), "--overwrite"]) == 2
    _one_error_line(capsys, str(out), "Is a directory")
    assert _leftovers(work) == []


def test_os_error_without_a_file_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from delfx import evaluate

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "main", full)
    args = ["evaluate", "--root", "r", "--dataset", "d", "--ranks", "x", "--output", "y"]
    assert cli_main(args) == 2
    assert _one_error_line(capsys) == "delfx: error: No space left on device"
    with pytest.raises(OSError):
        cli_main([*args, "--debug"])


def test_overwrite_keeps_the_old_file_on_failure(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--overwrite builds the new file under a temporary name: a failed run keeps the old."""
    out = tmp_path / "f.h5"
    shutil.copyfile(work / "f.h5", out)
    photos = tmp_path / "photos"
    shutil.copytree(work / "data/tiny/jpg", photos)
    (photos / "zz_broken.jpg").write_bytes(b"not a jpeg")
    args = ["extract", "sift", "--images", str(photos), "--out", str(out), "--workers", "1"]
    assert cli_main([*args, "--overwrite", "-q"]) == 2
    _one_error_line(capsys, "zz_broken.jpg")
    assert out.read_bytes() == (work / "f.h5").read_bytes()
    assert _leftovers(tmp_path) == []


# -- a full disk -------------------------------------------------------------------------------
def _photos(tmp_path: Path) -> tuple[Path, Path]:
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    shutil.copyfile(SAMPLES[0], one / "p00.jpg")
    for i, src in enumerate(SAMPLES):
        shutil.copyfile(src, many / f"p{i:02d}.jpg")
    return one, many


def _extract(photos: Path, out: Path) -> list[str]:
    return ["extract", "sift", "--images", str(photos), "--out", str(out), "--workers", "1", "-q"]


@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "hdf5-enospc"])
def test_full_disk(
    small_disk,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    precheck: bool,
) -> None:
    """Extraction onto a full disk: one line naming the output and ENOSPC, exit 2; the file
    resumed still opens with its image, a new file is not left behind. Without the free-space
    check HDF5 itself meets ENOSPC mid-write; the result must be the same."""
    one, many = _photos(tmp_path)
    ref = tmp_path / "ref.h5"
    assert cli_main(_extract(one, ref)) == 0
    with FeatureReader(ref) as r:
        n_ref = len(r.get("db/p00"))
    disk = small_disk((ref.stat().st_blocks * 512 + 192 * 1024 + 4095) // 4096 * 4096)
    if not precheck:
        import delfx.io.featurestore as fs

        monkeypatch.setattr(fs, "check_space", lambda path, nbytes: None, raising=False)
    a = disk / "a.h5"
    assert cli_main(_extract(one, a)) == 0
    capsys.readouterr()
    assert cli_main(_extract(many, a)) == 2
    _one_error_line(capsys, f"{a}: No space left on device")
    with FeatureReader(a) as r:
        assert "db/p00" in r and len(r.get("db/p00")) == n_ref
        for name in r.names():  # whatever else is listed is complete
            r.get(name)
    assert cli_main(_extract(many, disk / "b.h5")) == 2
    _one_error_line(capsys, str(disk / "b.h5"), "No space left on device")
    assert sorted(p.name for p in disk.iterdir()) == ["a.h5"]
    with FeatureReader(a) as r:
        assert len(r.get("db/p00")) == n_ref


# -- rerank ids --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [4, 99, -1])
def test_rerank_refuses_ids_outside_the_index(
    work: Path, tmp_path: Path, bad: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with np.load(work / "r.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["ranks"] = arrays["ranks"].copy()
    arrays["ranks"][1, 0] = bad
    ranks = tmp_path / "bad.npz"
    np.savez(ranks, **arrays)
    out = tmp_path / "out.npz"
    args = ["rerank", "--index", str(work / "idx"), "--features", str(work / "f.h5")]
    assert cli_main([*args, "--ranks", str(ranks), "--output", str(out), "-q"]) == 2
    query = str(arrays["queries"][1])
    _one_error_line(capsys, str(ranks), f"'{query}'", f"id {bad}")
    assert not out.exists()


def test_rerank_all_checks_ids_too(work: Path) -> None:
    from delfx.rerank import RerankConfig, rerank_all

    with FeatureReader(work / "f.h5") as reader:
        with pytest.raises(InputError, match=r"mine: query 'query/q' ranks image id -2"):
            rerank_all(
                RerankConfig(rerank_num=2, workers=1),
                np.array([[0, -2, 1]]),
                np.zeros((1, 3)),
                reader,
                ["query/q"],
                ["db/a", "db/b", "db/c"],
                source="mine",
                progress=False,
            )


# -- dataset image names -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("imlist", "../../../../etc/passwd"),
        ("imlist", "/etc/passwd"),
        ("qimlist", "sub/../../outside"),
        ("imlist", ".."),
        ("imlist", ""),
        ("qimlist", "a\\..\\..\\b"),
    ],
)
def test_dataset_names_stay_inside(tmp_path: Path, field: str, name: str) -> None:
    folder = tmp_path / "data" / "bad"
    (folder / "jpg").mkdir(parents=True)
    gnd = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [{"easy": [0], "junk": [1]}]}
    gnd[field] = [*gnd[field], name] if field == "imlist" else [name]
    write_gnd(folder, "bad", gnd)
    with pytest.raises(InputError) as info:
        RetrievalDataset(tmp_path / "data", "bad")
    msg = str(info.value)
    assert "\n" not in msg and "gnd_bad.json" in msg and f"'{field}'" in msg and repr(name) in msg


def test_dataset_names_in_sub_folders_are_fine(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "ok"
    for n in ("g1/a", "g1/./b", "q"):
        (folder / "jpg" / f"{n}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (folder / "jpg" / f"{n}.jpg").write_bytes(b"")
    gnd = {"imlist": ["g1/a", "g1/./b"], "qimlist": ["q"], "gnd": [{"easy": [0], "junk": [1]}]}
    write_gnd(folder, "ok", gnd)
    ds = RetrievalDataset(tmp_path / "data", "ok")
    assert ds.db_paths[0] == folder / "jpg" / "g1/a.jpg"
    with pytest.raises(InputError, match="outside"):
        ds.image_path("../x")
    assert json.loads((folder / "gnd_ok.json").read_text())["imlist"][1] == "g1/./b"

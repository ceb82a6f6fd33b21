"""The index and collection writers on a full disk (a small tmpfs, mounted as root).

Each writer runs on a disk with only a part of the space it needs left free: it must fail
with one line naming a file and "No space left on device", exit 2, and leave the previous
state as it was (a collection still searches as before; an index folder or collection that
was being created does not appear). With the space freed, the same command must then give
what it gives on a roomy disk. Extraction onto a full disk is ``test_os_errors.py``'s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from delfx.cli import main as cli_main
from tests.kill_scenarios import collection_state

#: the part of the space each command needs (measured on a roomy disk) that is left free
FREE = (0.1, 0.5, 0.9)
MB = 1 << 20


def _used(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def _commands(inputs: Path, disk: Path) -> dict[str, tuple[list[str], str]]:
    """Each writer: its command line and the folder whose state it changes."""
    return {
        "index add": (["index", "add", str(disk / "c"), "--images", str(inputs / "more"),
                       "--workers", "1", "--no-progress"], "c"),
        "index compact": (["index", "compact", str(disk / "c"), "--no-progress"], "c"),
        "index create": (["index", "create", str(disk / "new"), "--images",
                          str(inputs / "photos"), "--pipeline", "sift-asmk",
                          "--codebook-size", "64", "--workers", "1", "--no-progress"], "new"),
        "index build": (["index", "build", "--features", str(inputs / "photos.h5"),
                         "--codebook-from", str(inputs / "photos.h5"), "--out",
                         str(disk / "idx"), "--kind", "asmk", "--codebook-size", "64"], "idx"),
    }  # fmt: skip


def _prepare(inputs: Path, disk: Path, command: str) -> None:
    if command in ("index add", "index compact"):
        src = inputs / ("collection" if command == "index add" else "removed")
        shutil.copytree(src, disk / "c")


def _state(inputs: Path, folder: Path) -> dict:
    if (folder / "index.json").exists() and not (folder / "collection.json").exists():
        # file names are fresh per build: compare the manifest without them, and the contents
        manifest = json.loads((folder / "index.json").read_text())
        model, segments = manifest.pop("model"), manifest.pop("segments")
        for key in ("timings", "stats"):
            manifest.pop(key)
        read = lambda name: (folder / name).read_bytes()  # noqa: E731
        return {"manifest": manifest, "model": read(model), "segments": [read(s) for s in segments]}
    return dict(collection_state(folder, inputs / "queries.h5"))


def _fill(disk: Path, free: int) -> Path:
    """Leave about ``free`` bytes free on ``disk``."""
    filler = disk / "filler"
    left = shutil.disk_usage(disk).free - free
    with filler.open("wb") as f:
        while left > 0:
            n = min(left, 4 * MB)
            f.write(b"\0" * n)
            left -= n
    return filler


@pytest.fixture(scope="module")
def roomy(kill_inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each command on a roomy disk: the state it gives and the space it took at most."""
    inputs = kill_inputs / "inputs"
    out = {}
    for command in _commands(inputs, Path("/")):
        disk = tmp_path_factory.mktemp(command.replace(" ", "-"))
        _prepare(inputs, disk, command)
        before = _used(disk)
        argv, target = _commands(inputs, disk)[command]
        assert cli_main([*argv, "-q"]) == 0
        out[command] = (_state(inputs, disk / target), max(_used(disk) - before, 64 * 1024))
    return out


@pytest.mark.parametrize("fraction", FREE)
@pytest.mark.parametrize("command", ["index add", "index compact", "index create", "index build"])
def test_writer_on_a_full_disk_fails_in_one_line_and_loses_nothing(
    small_disk, kill_inputs: Path, roomy: dict, command: str, fraction: float,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    inputs = kill_inputs / "inputs"
    final, needed = roomy[command]
    disk = small_disk(_used(inputs / "collection") + needed + 8 * MB)
    _prepare(inputs, disk, command)
    argv, target = _commands(inputs, disk)[command]
    before = _state(inputs, disk / target) if (disk / target).exists() else {}
    filler = _fill(disk, int(fraction * needed))
    capsys.readouterr()
    assert cli_main([*argv, "-q"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("delfx: error: ") and "No space left on device" in lines[0], err
    assert str(disk) in lines[0], err  # names the file it could not write
    assert (_state(inputs, disk / target) if (disk / target).exists() else {}) == before
    leftovers = [p.name for p in disk.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
    filler.unlink()
    assert cli_main([*argv, "-q"]) == 0  # with room again: what a roomy disk gives
    assert _state(inputs, disk / target) == final

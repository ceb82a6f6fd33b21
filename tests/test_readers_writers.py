"""Readers beside writers, two writers, and a writer killed while it holds the lock.

A reader process searches a collection in a loop (as the service holds it: reopened after each
commit) while this process adds and removes photos one at a time. Every search must succeed,
search exactly one committed state (its live names equal those of some commit) and return only
images of that state.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from delfx import engine, extract
from delfx.cli import main as cli_main
from delfx.engine import manifest as mf
from delfx.engine.folder import locked
from delfx.features.sift import PRESETS
from tests.concurrency_reader import live_digest
from tests.conftest import SAMPLES

ROOT = Path(__file__).resolve().parents[1]
#: The targets of the issue: searches beside adds and removes.
SEARCHES, ADDS, REMOVES = 1000, 60, 50


def _live(folder: Path) -> list[str]:
    with engine.Searcher.open(folder) as s:
        return [n for n, ok in zip(s.names, s.live, strict=True) if ok]


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    return engine.create(engine.named("sift-asmk"), tmp_path / "c", SAMPLES / "groups",
                         workers=1, progress=False)  # fmt: skip


def _new_photos(tmp_path: Path, n: int) -> list[Path]:
    """``n`` photos of new names (copies of the distractors)."""
    src = sorted((SAMPLES / "distractors").glob("*.jpg"))
    out = tmp_path / "new"
    out.mkdir()
    return [Path(shutil.copy(src[i % len(src)], out / f"new-{i:03d}.jpg")) for i in range(n)]


def test_searches_beside_adds_and_removes(collection: Path, tmp_path: Path) -> None:
    conf = extract.ExtractConfig(sift=PRESETS["rootsift"])
    queries = extract.main(
        conf, tmp_path / "q.h5", images_dir=SAMPLES / "distractors", workers=1, progress=False
    )
    stop, out = tmp_path / "stop", tmp_path / "reader.json"
    reader = subprocess.Popen(
        [sys.executable, "-m", "tests.concurrency_reader", str(collection), str(queries),
         str(out), "--searches", str(SEARCHES), "--stop", str(stop)],
        cwd=ROOT,
    )  # fmt: skip
    states = {live_digest(_live(collection))}
    added: list[str] = []
    try:
        photos = _new_photos(tmp_path, ADDS)
        for k, photo in enumerate(photos):
            added += engine.add(collection, [photo], workers=1, progress=False)
            states.add(live_digest(_live(collection)))
            if k % 6 != 5:  # five removes in every six steps: 60 adds, 50 removes
                engine.remove(collection, [added.pop(0)])
                states.add(live_digest(_live(collection)))
    finally:
        stop.touch()
        reader.wait(600)
    assert reader.returncode == 0
    seen = json.loads(out.read_text())
    assert seen["errors"] == []
    assert seen["searches"] >= SEARCHES and len(seen["records"]) == seen["searches"]
    assert all(r["ok"] for r in seen["records"])  # hits belong to the commit searched
    assert {r["live"] for r in seen["records"]} <= states  # every commit searched is a real one
    assert seen["reopened"] > 10  # the reader followed the writer
    assert len(_live(collection)) == 57 - 13 + ADDS - REMOVES  # the groups, plus the adds kept


def test_a_second_writer_is_refused_in_one_line(collection: Path, tmp_path: Path, capsys) -> None:
    before = mf.read(collection)
    photo = _new_photos(tmp_path, 1)[0]
    with locked(collection):
        rc = cli_main(["-q", "index", "add", str(collection), "--images", str(photo)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "another process is writing" in err[0], err
    assert mf.read(collection) == before  # nothing changed


def test_a_killed_writer_leaves_the_last_commit_and_no_lock(collection: Path, tmp_path: Path):
    before = _live(collection)
    photos = _new_photos(tmp_path, 13)
    cmd = [sys.executable, "-m", "delfx", "-q", "index", "add", str(collection), "--images",
           str(photos[0].parent), "--workers", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = collection / mf.shard_names(mf.read(collection)["next_shard"])[0]
    stop = time.monotonic() + 120
    while not shard.exists() and time.monotonic() < stop:  # killed while it writes the shard
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert _live(collection) == before  # the previous commit opens, unchanged
    # the lock died with its process: the next writer gets it, and cleans the dead one's files
    added = engine.add(collection, [photos[0].parent], workers=1, progress=False)
    assert len(added) == 13 and len(_live(collection)) == len(before) + 13
    m = mf.read(collection)
    assert sorted(p.name for p in mf.unused_files(collection, m)) == []

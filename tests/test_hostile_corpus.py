"""The hostile-input corpus (``tests/hostile_corpus.py``): every case fails with one line that
names the file or field, exit status 2, no traceback and no partial output; every readable odd
photo is extracted and indexed."""

from __future__ import annotations

from pathlib import Path

import pytest

from delfx import engine
from delfx.cli import main as cli_main
from tests import hostile_corpus

CASES = hostile_corpus.cases()


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) + len(hostile_corpus.READABLE) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_no_partial_output(build, tmp_path: Path, capsys) -> None:
    argv, names, outputs = build(tmp_path)
    capsys.readouterr()
    rc = cli_main(["-q", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert any(n in err[0] for n in names), (names, err[0])
    for out in outputs:
        assert not out.exists(), out


def test_every_readable_odd_photo_is_indexed(tmp_path: Path) -> None:
    photos = tmp_path / "odd"
    photos.mkdir()
    for name, make in hostile_corpus.READABLE:
        (photos / name).write_bytes(make())
    import shutil

    from tests.conftest import SAMPLES

    ordinary = sorted((SAMPLES / "distractors").glob("*.jpg"))  # enough to train a codebook
    for p in ordinary:
        shutil.copy(p, photos / p.name)
    folder = engine.create(engine.named("sift-asmk"), tmp_path / "c", photos, workers=1,
                           progress=False)  # fmt: skip
    with engine.Searcher.open(folder) as s:
        assert len(s) == len(hostile_corpus.READABLE) + len(ordinary), sorted(s.names)
        for name, _ in hostile_corpus.READABLE:  # each one under its own name
            assert name in s.names, name

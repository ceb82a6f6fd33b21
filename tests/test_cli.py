"""The command line: help on every subcommand, one-line errors, python -m delfx."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys

import pytest

from delfx.cli import build_parser
from delfx.cli import main as cli_main


def _subcommand_paths(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(sub, (*prefix, name))


PATHS = list(_subcommand_paths(build_parser()))


def test_expected_subcommands_exist():
    assert {
        ("data", "download"),
        ("data", "list"),
        ("data", "build-groups"),
        ("data", "synth"),
        ("evaluate",),
        ("demo",),
    } <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_help_on_every_subcommand(path, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main([*path, "--help"])
    assert info.value.code == 0
    assert "usage: delfx" in capsys.readouterr().out


def test_python_dash_m():
    out = subprocess.run(
        [sys.executable, "-m", "delfx", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("delfx ")


def test_malformed_gnd_is_one_line_naming_the_file(tmp_path, capsys):
    (tmp_path / "ds" / "jpg").mkdir(parents=True)
    (tmp_path / "ds" / "gnd_ds.pkl").write_bytes(pickle.dumps({"imlist": []})[:-3])
    (tmp_path / "r.txt").write_text("0\n")
    rc = cli_main(
        [
            "evaluate",
            "--root",
            str(tmp_path),
            "--dataset",
            "ds",
            "--ranks",
            str(tmp_path / "r.txt"),
            "--output",
            str(tmp_path / "o.json"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "gnd_ds.pkl" in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


def test_debug_shows_traceback(tmp_path):
    from delfx.errors import DelfxError

    with pytest.raises(DelfxError):
        cli_main(
            [
                "evaluate",
                "--debug",
                "--root",
                str(tmp_path),
                "--dataset",
                "none",
                "--ranks",
                "x.npy",
                "--output",
                str(tmp_path / "o.json"),
            ]
        )

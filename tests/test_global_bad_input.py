"""Global-descriptor commands: bad input fails early with one clear line."""

from __future__ import annotations

import pytest

from delfx.cli import main as cli_main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("[")]  # drop log lines
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_corrupted_checkpoint(tiny_dataset, tmp_path, capsys, content):
    root, name = tiny_dataset
    ckpt = tmp_path / "model_best.pth"
    ckpt.write_bytes(content)
    rc = cli_main(
        [
            "extract",
            "global",
            "--root",
            str(root),
            "--dataset",
            name,
            "--model",
            str(ckpt),
            "--out",
            str(tmp_path / "g.h5"),
        ]
    )
    assert rc == 2
    assert "model_best.pth" in _one_line(capsys)
    assert not (tmp_path / "g.h5").exists()


def test_unknown_architecture(tiny_dataset, tmp_path, capsys):
    root, name = tiny_dataset
    rc = cli_main(
        [
            "extract",
            "global",
            "--root",
            str(root),
            "--dataset",
            name,
            "--model",
            "alexnet",
            "--out",
            str(tmp_path / "g.h5"),
        ]
    )
    assert rc == 2
    assert "alexnet" in _one_line(capsys)
    rc = cli_main(
        [
            "train",
            "global",
            str(tmp_path / "exp"),
            "--root",
            str(root),
            "--training-dataset",
            name,
            "--arch",
            "alexnet",
            "--pretrained",
            "none",
        ]
    )
    assert rc == 2
    assert "alexnet" in _one_line(capsys)

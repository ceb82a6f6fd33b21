"""``delfx pipeline configs/tiny-cpu.yaml`` end to end on the shipped sample photos, then again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from delfx.cli import main as cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-cpu.yaml"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _relocated(tmp_path: Path) -> Path:
    """The shipped tiny config with its outputs under ``tmp_path`` (everything else as shipped)."""
    conf = yaml.safe_load(CONFIG.read_text())
    conf["root"] = str(tmp_path / "data")
    conf["work"] = str(tmp_path / "run")
    conf["evaluate"]["codebook-from"] = f"{tmp_path / 'data'}:tiny-indep"
    path = tmp_path / "tiny-cpu.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def test_tiny_config_runs_end_to_end_and_skips_what_is_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _relocated(tmp_path)
    assert cli_main(["pipeline", str(path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "# finetune epoch 0" in out and "# attention epoch 1" in out
    assert ">> tiny-test: mAP E:" in out

    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    methods = [r["method"] for r in summary["results"]]
    assert methods == [
        "global-gem",
        "delf-voctree-seed",
        "delf-voctree-seed+sv20",
        "delf-asmk",
        "delf-asmk+sv20",
        "global+local+sv20",
        "global+asmk",
    ]
    for res in summary["results"]:
        assert res["dataset"] == "tiny-test" and res["n_queries"] == 9
    asmk = next(r for r in summary["results"] if r["method"] == "delf-asmk")
    assert "tiny-indep" in asmk["codebook"]  # independent images, not the test database
    assert asmk["pipeline"]["delf"]["pca_dim"] == 64

    models = sorted((tmp_path / "run").glob("*models/*/model_*.pth"))
    stamps = {p: p.stat().st_mtime_ns for p in models}
    assert len(models) >= 4
    assert cli_main(["pipeline", str(path)]) == 0
    err = capsys.readouterr().err
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["protocols"] for r in again["results"]] == [
        r["protocols"] for r in summary["results"]
    ]
    assert {p: p.stat().st_mtime_ns for p in models} == stamps  # nothing retrained
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert any("finetune" in m for m in skipped) and any("attention" in m for m in skipped)
    assert any("dataset tiny-test: present" in m for m in skipped)

    # the same pipeline through `delfx run` with the config's settings as flags: same result
    attention = sorted((tmp_path / "run" / "attention_models").glob("*/model_best.pth"))[0]
    flags = ["--scales", "1,0.707,0.5", "--delf-image-size", "320", "--feature-num", "300"]
    flags += ["--pca-dim", "64", "--codebook-size", "256", "--pretrained", "none", "--no-progress"]
    out = tmp_path / "cli-asmk.json"
    code = cli_main(
        ["run", "delf-asmk", "--root", str(tmp_path / "data"), "--dataset", "tiny-test"]
        + ["--work", str(tmp_path / "run" / "cache"), "--output", str(out)]
        + ["--model", str(attention), "--codebook-from", f"{tmp_path / 'data'}:tiny-indep"]
        + flags
    )
    assert code == 0
    assert json.loads(out.read_text())["protocols"] == asmk["protocols"]

"""``delfx pipeline``: the experiment file is checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from delfx.cli import main as cli_main
from delfx.errors import InputError
from delfx.pipeline_config import PipelineRun, load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

MINIMAL = """
root: data
work: runs/x
evaluate:
  datasets: [a]
  pipelines: [delf-asmk]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["seed-ex1", "seed-ex2", "seed-ex3", "tiny-cpu"])
def test_shipped_configs_load(name: str) -> None:
    exp = load(CONFIGS / f"{name}.yaml")
    assert exp.pipelines and exp.datasets
    assert exp.root.is_absolute() and exp.work.is_absolute()


def test_seed_ex_flags_match_the_seed() -> None:
    ex1, ex2, ex3 = (load(CONFIGS / f"seed-ex{i}.yaml") for i in (1, 2, 3))
    assert ex1.finetune is not None and ex2.finetune is not None and ex3.finetune is not None
    assert (ex1.finetune["arch"], ex1.finetune["pool"], ex1.finetune["neg_num"]) == (
        "resnet18",
        "gem",
        3,
    )
    assert (ex2.finetune["pool"], ex2.finetune["neg_num"], ex2.finetune["batch_size"]) == (
        "spoc",
        5,
        3,
    )
    assert (ex3.finetune["arch"], ex3.extract["feature_num"]) == ("resnet34", 1000)
    assert ex1.finetune["test_datasets"] == ("roxford5k", "rparis6k")
    assert PipelineRun("delf-voctree-seed", 150) in ex1.pipelines


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    exp = load(_write(tmp_path, MINIMAL))
    assert exp.root == (tmp_path / "data").resolve()
    assert exp.work == (tmp_path / "runs" / "x").resolve()
    assert exp.pipelines == (PipelineRun("delf-asmk"),)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (MINIMAL + "bogus: 1\n", "unknown key 'top level.bogus'"),
        (MINIMAL.replace("[delf-asmk]", "[nope]"), "evaluate.pipelines[0] 'nope'"),
        (MINIMAL + "finetune: {arch: resnet18, colour: red}\n", "unknown key 'finetune.colour'"),
        (MINIMAL + "data: [{kind: groups}]\n", "data[0] needs 'name'"),
        (MINIMAL + "data: [{kind: zip, name: a}]\n", "data[0].kind"),
        (MINIMAL.replace("root: data\n", ""), "missing 'root'"),
        ("root: [unclosed\n", "not valid YAML"),
        (MINIMAL + "  codebook-size: [1, 2]\n", "'evaluate.codebook-size' must be a whole number"),
        (MINIMAL + "  codebook-size: '64'\n", "'evaluate.codebook-size' must be a whole number"),
        (MINIMAL + "  codebook-size: -5\n", "codebook-size must be at least 2"),
        (MINIMAL + "  tree-height: 0\n", "tree-height"),
        (
            MINIMAL.replace("[delf-asmk]", "[{name: delf-asmk, rerank-num: x}]"),
            "'evaluate.pipelines[0].rerank-num' must be a whole number",
        ),
        (
            MINIMAL.replace("[delf-asmk]", "[{name: delf-asmk, rerank-num: -1}]"),
            "'evaluate.pipelines[0].rerank-num' must be >= 0",
        ),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match=None) as err:
        load(path)
    msg = str(err.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_cli_reports_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, MINIMAL + "bogus: 1\n")
    assert cli_main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus" in err[0]

"""Alias bombs ("billion laughs") in YAML files are refused at once, wherever they sit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from delfx.cli import main as cli_main
from delfx.errors import InputError
from delfx.io.yaml_safe import MAX_NODES, expanded_size, load_yaml, loads_yaml
from delfx.pipeline_config import load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _bomb(indent: str = "", *, keys: bool = True) -> str:
    """Nine levels of nine aliases: 9**9 (387 million) strings once expanded.

    ``keys``: anchors as mapping entries ``lN: &lN [...]``; else as list items ``- &lN [...]``.
    """
    lead = (lambda n: f"l{n}: ") if keys else (lambda n: "- ")
    lines = [f"{indent}{lead(0)}&l0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"{indent}{lead(level)}&l{level} [{refs}]")
    return "\n".join(lines) + "\n"


HEAD = "root: data\nwork: runs/x\n"
BOMBS = {
    # the hang of issue 15: nothing walked evaluate.datasets before turning it into strings
    "evaluate.datasets": HEAD
    + "evaluate:\n  pipelines: [delf-asmk]\n  datasets:\n"
    + _bomb("    ", keys=False),
    "top level": _bomb() + HEAD + "evaluate:\n  datasets: [a]\n  pipelines: [delf-asmk]\n",
    "nested list": HEAD
    + "evaluate:\n  datasets: [a]\n  pipelines: [delf-asmk]\n"
    + "data:\n  - kind: groups\n    name: t\n    extra:\n      - - defs:\n"
    + _bomb("            ")
    + "      - - [*l8, *l8]\n",
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", sorted(BOMBS))
def test_bomb_is_refused_through_the_cli(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, BOMBS[where])
    t0 = time.perf_counter()
    assert cli_main(["pipeline", str(path)]) == 2
    assert time.perf_counter() - t0 < 5
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert str(path) in err[0]
    assert f"more than {MAX_NODES} nodes (alias bomb?)" in err[0]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.timeout(20)
def test_bomb_is_refused_by_the_loader(tmp_path: Path) -> None:
    path = _write(tmp_path, _bomb())
    with pytest.raises(InputError, match="alias bomb") as err:
        load_yaml(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_legitimate_aliases_still_parse(tmp_path: Path) -> None:
    text = (
        "root: data\nwork: runs/x\n"
        "data:\n"
        "  - &common {kind: groups, name: a, groups: samples, size: 160}\n"
        "  - {<<: *common, name: b, places: odd}\n"
        "finetune: &ft {arch: resnet18, epochs: 2, pretrained: none}\n"
        "attention: *ft\n"
        "evaluate:\n"
        "  datasets: &sets [b]\n"
        "  pipelines: [delf-asmk, {name: delf-asmk, rerank-num: 20}]\n"
    )
    exp = load(_write(tmp_path, text))
    assert exp.datasets == ("b",)
    assert [s.name for s in exp.data] == ["a", "b"]
    assert exp.data[1].size == 160 and exp.data[1].places == "odd"
    assert exp.finetune == exp.attention == {"arch": "resnet18", "epochs": 2, "pretrained": "none"}


@pytest.mark.parametrize("name", ["tiny-cpu", "seed-ex1", "seed-ex2", "seed-ex3"])
def test_shipped_configs_are_small(name: str) -> None:
    path = CONFIGS / f"{name}.yaml"
    assert load_yaml(path) == loads_yaml(path.read_text(), path)
    assert load(path).pipelines


def test_size_counts_aliases_as_copies() -> None:
    import yaml

    node = yaml.compose("a: &a [1, 2, 3]\nb: [*a, *a]\n", Loader=yaml.SafeLoader)
    # mapping 1 + keys 2 + [1,2,3] (4) + [*a, *a] (1 + 2 * 4)
    assert expanded_size(node) == 1 + 2 + 4 + 9
    assert loads_yaml("x: [1, 2, 3]\n", "s.yaml", max_nodes=6) == {"x": [1, 2, 3]}
    with pytest.raises(InputError, match="s.yaml: YAML expands to more than 5 nodes"):
        loads_yaml("x: [1, 2, 3]\n", "s.yaml", max_nodes=5)


def test_self_reference_and_bad_text_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="r.yaml: YAML alias refers to itself"):
        loads_yaml("a: &a [1, *a]\n", "r.yaml")
    with pytest.raises(InputError, match="r.yaml: not valid YAML"):
        loads_yaml("a: [unclosed\n", "r.yaml")
    with pytest.raises(InputError, match="r.yaml: YAML nested too deeply"):
        loads_yaml("[" * 20000 + "]" * 20000, "r.yaml")
    bad = tmp_path / "latin.yaml"
    bad.write_bytes(b"root: caf\xe9\n")
    with pytest.raises(InputError, match="latin.yaml: not valid YAML"):
        load_yaml(bad)
    assert loads_yaml("", "e.yaml") is None

"""``delfx demo`` on the shipped photos: it runs and its best pipeline beats the baselines."""

from __future__ import annotations

import json

import pytest

from delfx.cli import main as cli_main
from delfx.demo import pretrained_available


def test_demo_prints_seed_lines_and_table(tmp_path, capsys):
    if not pretrained_available():
        pytest.skip("the pretrained extra is not installed (make test installs it)")
    assert cli_main(["demo", "--work", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ">> demo-groups: mAP E: " in out and ">> demo-synth: mAP E: " in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pretrained"] is True
    by = {(r["dataset"], r["method"]): r["protocols"]["medium"]["mAP"] for r in summary["results"]}
    for ds in ("demo-groups", "demo-synth"):
        for method in ("global+sift-asmk+sv20", "sift-asmk+sv20"):
            assert by[(ds, method)] > by[(ds, "baseline:colour-histogram")]
            assert by[(ds, method)] > by[(ds, "chance")] + 40
    # on real views the ImageNet hybrid is the demo's best pipeline
    assert by[("demo-groups", "global+sift-asmk+sv20")] > by[("demo-groups", "sift-asmk+sv20")]


def test_demo_without_the_extra_runs_the_network_free_pipelines(tmp_path, capsys):
    from delfx import demo

    summary = json.loads(demo.main(tmp_path, pretrained=False, progress=False).read_text())
    methods = {r["method"] for r in summary["results"]}
    assert "sift-asmk+sv20" in methods and not any(m.startswith("global") for m in methods)

"""``delfx demo`` on the shipped photos: it runs and its best pipeline beats the baselines."""

from __future__ import annotations

import json

from delfx.cli import main as cli_main


def test_demo_prints_seed_lines_and_table(tmp_path, capsys):
    assert cli_main(["demo", "--work", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ">> demo-groups: mAP E: " in out and ">> demo-synth: mAP E: " in out
    results = json.loads((tmp_path / "summary.json").read_text())["results"]
    by = {(r["dataset"], r["method"]): r["protocols"]["medium"]["mAP"] for r in results}
    for ds in ("demo-groups", "demo-synth"):
        best = by[(ds, "sift-asmk+sv20")]
        assert best > by[(ds, "baseline:colour-histogram")]
        assert best > by[(ds, "chance")] + 40

"""SIGKILL each writing command at a sample of its commit steps and times (``make test``).

Each scenario of ``tests/kill_scenarios.py`` is run once uninterrupted, then killed at a few
points: by the hook before a commit step (always the last step, where the final commit is one
rename away; for most commands also the first) and by time. What the kill left must be
the previous state, the final one, or a part of the final one, and the rerun must equal the
uninterrupted run. ``benchmarks/kill_points.py`` runs every point.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from delfx.io import crashpoints
from tests.kill_scenarios import scenarios
from tests.killpoints import collapsed, hook_points, run_scenario

#: (hook points, time points) per command here; the benchmark runs them all.
SAMPLE = {
    "extract sift": (2, 1),
    "index create": (2, 1),
    "index add": (2, 1),
    "index remove": (1, 1),
    "index compact": (2, 1),
    "train global": (2, 0),
    "pipeline": (1, 0),
    "serve add": (2, 1),
    "serve remove": (1, 0),
}


@pytest.fixture(scope="module")
def all_scenarios(kill_inputs: Path) -> dict:
    return {sc.name: (sc, kill_inputs) for sc in scenarios(kill_inputs)}


@pytest.mark.parametrize("name", list(SAMPLE))
def test_killed_command_recovers_and_reruns_equal(all_scenarios: dict, name: str) -> None:
    scenario, base = all_scenarios[name]
    hooks, times = SAMPLE[name]
    ref, outcomes = run_scenario(scenario, base, hooks=hooks, times=times)
    assert ref.targets, f"{name}: no commit step was reached"
    assert len(outcomes) == min(hooks, len(ref.targets)) + times
    failed = [f"{o.point} ({o.target}): {'; '.join(o.problems)}" for o in outcomes if not o.ok]
    assert not failed, "\n".join(failed)
    # the hook kills happened where asked, and at least one left work for the rerun
    assert all(o.killed for o in outcomes if o.point.startswith("hook"))
    assert any(o.rerun_equal for o in outcomes)


def test_hook_counts_and_kills_only_when_told(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "steps"
    monkeypatch.setattr(crashpoints, "_count", 0)
    crashpoints.before_commit("a")  # no variable: nothing counted
    monkeypatch.setenv(crashpoints.KILL_AT, "0")
    monkeypatch.setenv(crashpoints.KILL_LOG, str(log))
    crashpoints.before_commit(tmp_path / "b")
    crashpoints.before_commit("c.h5:key")
    assert log.read_text().splitlines() == [f"1\t{tmp_path / 'b'}", "2\tc.h5:key"]
    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setenv(crashpoints.KILL_AT, "4")
    crashpoints.before_commit("d")
    assert killed == []
    crashpoints.before_commit("e")
    assert killed == [(os.getpid(), 9)]


def test_point_selection() -> None:
    assert hook_points(5, None) == [1, 2, 3, 4, 5]
    assert hook_points(5, 1) == [5]
    assert hook_points(5, 2) == [1, 5]
    assert hook_points(9, 3) == [1, 5, 9]
    assert hook_points(2, 5) == [1, 2]
    steps = ["d/.x.ab.tmp/1.jpg", "d/.x.ab.tmp/2.jpg", "d/.x.ab.tmp/3.jpg", "d/x",
             "f.h5:a", "f.h5:b", "f.h5:c", "r.json"]  # fmt: skip
    assert collapsed(steps) == [1, 3, 4, 5, 7, 8]

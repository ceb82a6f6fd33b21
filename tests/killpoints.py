"""Kill a writing command with SIGKILL at chosen points, then check what it left and rerun it.

A :class:`Scenario` is one command on prepared data (``tests/kill_scenarios.py`` holds them).
Its points are found by running it once uninterrupted with ``DELFX_KILL_AT=0``: every commit
step (``delfx.io.crashpoints.before_commit``) is one *hook point*. A *time point* kills the
process after a fraction of the uninterrupted run's wall time.

For each point the work folder is prepared afresh and the command killed there. Then:

1. **intact**: the committed state (``Scenario.state``: a mapping of item to digest, read the
   way a user's next command reads it) must be the previous state, the final state, or a
   part of the final state where the command commits item by item (a feature file holds
   some of its images, a training run some of its epochs);
2. **rerun**: unless the state is already final, the command is run again without a kill, and
   its state must equal the uninterrupted run's, item for item.

``tests/test_kill_points.py`` runs a few points of each scenario in ``make test``;
``benchmarks/kill_points.py`` runs all of them and prints the table.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

State = Mapping[str, str]


def delfx_command(*args: str) -> list[str]:
    """The command line of ``delfx -q ARGS`` run by this Python."""
    return [sys.executable, "-m", "delfx", "-q", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without kill settings, plus ``extra``; one torch thread
    (results must not depend on the thread count between runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELFX_KILL_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def run_command(
    cmd: list[str], cwd: Path, env: dict[str, str], kill_after: float | None, log: Path
) -> int:
    """Run ``cmd``; SIGKILL it after ``kill_after`` seconds when given. Returns its status
    (``-9`` when killed); stdout and stderr go to ``log``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=out)
        try:
            return proc.wait(kill_after) if kill_after is not None else proc.wait(900)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            return proc.wait(60)


@dataclass
class Scenario:
    """One writing command on prepared data.

    Attributes:
        name: shown in the table (the command, e.g. ``index add``).
        prepare: fills the (empty) work folder with the state before the command.
        run: runs the command in the work folder with an environment and an optional kill
            time; returns its exit status.
        state: the committed state of the work folder (``{}`` where nothing is committed).
        partial: whether a killed run may leave a part of the final state.
        time_fractions: fractions of the uninterrupted wall time to kill at.
        collapse: kill only at the first and last of consecutive steps inside one staging
            folder or feature file (for a long command whose steps repeat).
    """

    name: str
    prepare: Callable[[Path], None]
    run: Callable[[Path, dict[str, str], float | None], int]
    state: Callable[[Path], State]
    partial: bool = False
    time_fractions: tuple[float, ...] = (0.5, 0.7, 0.85, 0.95)
    collapse: bool = False


@dataclass
class Reference:
    """An uninterrupted run: the states before and after, its commit steps and wall time."""

    previous: dict[str, str]
    final: dict[str, str]
    targets: list[str]
    seconds: float


@dataclass
class Outcome:
    """What one kill left and whether the rerun matched."""

    scenario: str
    point: str  # "hook 3/12" or "time 0.50"
    target: str
    killed: bool
    left: str  # previous, partial, final, or what was wrong
    rerun_equal: bool | None  # None: no rerun needed (the state was final)
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _fresh(work: Path) -> Path:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


def reference(scenario: Scenario, work: Path) -> Reference:
    """Run ``scenario`` once uninterrupted, counting its commit steps."""
    _fresh(work)
    scenario.prepare(work)
    previous = dict(scenario.state(work))
    steps = work.parent / f"{work.name}.steps"
    steps.unlink(missing_ok=True)
    t = time.perf_counter()
    rc = scenario.run(work, clean_env(DELFX_KILL_AT="0", DELFX_KILL_LOG=str(steps)), None)
    seconds = time.perf_counter() - t
    if rc != 0:
        raise AssertionError(f"{scenario.name}: the uninterrupted run failed ({rc}); see logs")
    lines = steps.read_text().splitlines() if steps.exists() else []
    final = dict(scenario.state(work))
    if final == previous:
        raise AssertionError(f"{scenario.name}: the command changed nothing")
    return Reference(previous, final, [ln.split("\t", 1)[1] for ln in lines], seconds)


def _judge(scenario: Scenario, left: State, ref: Reference) -> str:
    if dict(left) == ref.previous:
        return "previous"
    if dict(left) == ref.final:
        return "final"
    if scenario.partial and all(ref.final.get(k) == v for k, v in left.items()):
        return "partial"
    wrong = sorted(k for k, v in left.items() if ref.final.get(k) != v and ref.previous.get(k) != v)
    return f"neither previous nor final ({', '.join(wrong[:3]) or 'items missing'})"


def kill_once(
    scenario: Scenario, work: Path, ref: Reference, *, at: int | None = None,
    fraction: float | None = None,
) -> Outcome:  # fmt: skip
    """Kill ``scenario`` at hook point ``at`` (1-based) or after ``fraction`` of its time."""
    t = time.perf_counter()
    _fresh(work)
    scenario.prepare(work)
    if at is not None:
        point, target = f"hook {at}/{len(ref.targets)}", ref.targets[at - 1]
        rc = scenario.run(work, clean_env(DELFX_KILL_AT=str(at)), None)
    else:
        assert fraction is not None
        point, target = f"time {fraction:.2f}", f"{fraction * ref.seconds:.2f} s"
        rc = scenario.run(work, clean_env(), fraction * ref.seconds)
    problems = []
    killed = rc == -signal.SIGKILL
    if at is not None and not killed:
        problems.append(f"not killed at the hook (exit {rc})")
    try:
        left = _judge(scenario, scenario.state(work), ref)
    except Exception as exc:  # noqa: BLE001 (reported, not raised: the table shows it)
        left = f"does not open: {type(exc).__name__}: {exc}"
    if left not in ("previous", "final", "partial"):
        problems.append(f"left {left}")
    rerun_equal = None
    if left != "final":
        rc = scenario.run(work, clean_env(), None)
        try:
            after = dict(scenario.state(work))
        except Exception as exc:  # noqa: BLE001
            after = {"error": f"{type(exc).__name__}: {exc}"}
        rerun_equal = rc == 0 and after == ref.final
        if not rerun_equal:
            diff = sorted(set(after.items()) ^ set(ref.final.items()))[:3]
            problems.append(f"rerun exit {rc}, differs from the uninterrupted run: {diff}")
    return Outcome(scenario.name, point, target, killed, left, rerun_equal,
                   time.perf_counter() - t, problems)  # fmt: skip


def _group(target: str) -> str:
    """The staging folder (``.name.XXXX.tmp``) or feature file a commit step is inside."""
    parts = target.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.startswith(".") and part.endswith(".tmp"):
            return "/".join(parts[: i + 1])
    return target.split(":", 1)[0] if ".h5:" in target else target


def collapsed(targets: list[str]) -> list[int]:
    """The 1-based steps that start or end a run of steps in one :func:`_group`."""
    keep = []
    for i, t in enumerate(targets):
        first = i == 0 or _group(targets[i - 1]) != _group(t)
        last = i == len(targets) - 1 or _group(targets[i + 1]) != _group(t)
        if first or last:
            keep.append(i + 1)
    return keep


def hook_points(n: int, sample: int | None) -> list[int]:
    """All points ``1..n``, or ``sample`` of them spread evenly (always the last)."""
    if sample is None or sample >= n:
        return list(range(1, n + 1))
    if sample <= 1:
        return [n]
    step = (n - 1) / (sample - 1)
    return sorted({round(1 + i * step) for i in range(sample)})


def run_scenario(
    scenario: Scenario, base: Path, *, hooks: int | None = None, times: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> tuple[Reference, list[Outcome]]:  # fmt: skip
    """The reference run, then kills at ``hooks`` hook points (None: all) and ``times`` time
    points (None: all of ``scenario.time_fractions``)."""
    work = base / scenario.name.replace(" ", "-")
    ref = reference(scenario, work)
    outcomes = []
    steps = collapsed(ref.targets) if scenario.collapse else list(range(1, len(ref.targets) + 1))
    for i in hook_points(len(steps), hooks):
        at = steps[i - 1]
        outcomes.append(kill_once(scenario, work, ref, at=at))
        if on_outcome:
            on_outcome(outcomes[-1])
    fractions = scenario.time_fractions if times is None else scenario.time_fractions[:times]
    for f in fractions:
        outcomes.append(kill_once(scenario, work, ref, fraction=f))
        if on_outcome:
            on_outcome(outcomes[-1])
    return ref, outcomes


__all__ = [
    "Outcome",
    "Reference",
    "Scenario",
    "clean_env",
    "collapsed",
    "delfx_command",
    "hook_points",
    "kill_once",
    "reference",
    "run_command",
    "run_scenario",
]

"""Kill every writing command at every commit step (and at times), then check and rerun.

For each command of ``tests/kill_scenarios.py`` (``extract sift``, ``index create|add|remove|
compact``, ``train global``, ``pipeline``, the service's add and remove) this runs the
command once uninterrupted to count its commit steps, then for every step (a SIGKILL from the
hook ``delfx.io.crashpoints`` just before a rename or a feature-file commit) and for a few
kill times: prepares the data afresh, kills the command there, checks that what it left is the
previous state (or the final one, or a part of it where the command commits item by item), and
reruns it to compare with the uninterrupted run. Prints a markdown table per command and the
totals.

    .venv/bin/python benchmarks/kill_points.py                 # every point (about 18 min)
    .venv/bin/python benchmarks/kill_points.py --hooks 3 --only "index add"

``make test`` runs a sample of the same points (``tests/test_kill_points.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kill_scenarios import scenarios  # noqa: E402
from tests.killpoints import Outcome, run_scenario  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hooks", type=int, help="hook points per command, spread (default: all)")
    p.add_argument("--times", type=int, help="time points per command (default: all)")
    p.add_argument("--only", action="append", help="a command's name (repeatable)")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per point")
    args = p.parse_args()

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="delfx-kill-")
    base = args.work or Path(tmp.name)  # type: ignore[union-attr]
    t0 = time.perf_counter()
    rows, failures = [], []
    for sc in scenarios(base):
        if args.only and sc.name not in args.only:
            continue

        def show(o: Outcome) -> None:
            if args.verbose or not o.ok:
                mark = "ok" if o.ok else "FAIL " + "; ".join(o.problems)
                print(f"  {o.scenario:14} {o.point:12} {o.left:9} {o.seconds:5.1f} s  {mark}",
                      f"({o.target})" if args.verbose else "", flush=True)  # fmt: skip

        ref, outs = run_scenario(sc, base, hooks=args.hooks, times=args.times, on_outcome=show)
        hooks = [o for o in outs if o.point.startswith("hook")]
        left = Counter(o.left for o in outs)
        rows.append(
            (
                sc.name,
                len(ref.targets),
                len(hooks),
                len(outs) - len(hooks),
                sum(o.ok for o in outs),
                len(outs),
                left["previous"],
                left["partial"],
                left["final"],
                sum(o.rerun_equal is True for o in outs),
                sum(o.rerun_equal is not None for o in outs),
                ref.seconds,
                sum(o.seconds for o in outs),
            )  # fmt: skip
        )
        failures += [o for o in outs if not o.ok]
        print(f"# {sc.name}: {rows[-1][4]}/{rows[-1][5]} points recovered", flush=True)

    print()
    print(
        "| command | commit steps | hook kills | time kills | recovered | left previous / "
        "partial / final | reruns equal | uninterrupted | all kills |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| `{r[0]}` | {r[1]} | {r[2]} | {r[3]} | {r[4]}/{r[5]} | {r[6]} / {r[7]} / "
            f"{r[8]} | {r[9]}/{r[10]} | {r[11]:.1f} s | {r[12]:.0f} s |"
        )
    total = sum(r[5] for r in rows)
    ok = sum(r[4] for r in rows)
    reruns = sum(r[9] for r in rows), sum(r[10] for r in rows)
    print(
        f"| **all** | {sum(r[1] for r in rows)} | {sum(r[2] for r in rows)} | "
        f"{sum(r[3] for r in rows)} | **{ok}/{total}** | | {reruns[0]}/{reruns[1]} | | "
        f"{time.perf_counter() - t0:.0f} s in all |"
    )
    for o in failures:
        print(f"FAIL {o.scenario} {o.point} ({o.target}): {'; '.join(o.problems)}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

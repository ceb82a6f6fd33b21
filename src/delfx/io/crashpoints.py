"""A test hook before each commit step, for killing a writer at an exact point.

Every place that makes a write visible (an ``os.replace`` of a finished temporary file or
folder, or the move of a finished image group in a feature file) first calls
:func:`before_commit`. Normally it returns at once. Two environment variables make it useful to
a test that kills writers (``tests/killpoints.py``):

- ``DELFX_KILL_AT=K`` sends this process SIGKILL at its K-th commit step (K >= 1); ``0`` only
  counts.
- ``DELFX_KILL_LOG=FILE`` appends one line per step, ``<count>\\t<target>``, so a first run
  with ``DELFX_KILL_AT=0`` tells the test how many points a command has.

The count is per process, so only the process the variables are given to is killed.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "DELFX_KILL_AT"
KILL_LOG = "DELFX_KILL_LOG"

_count = 0


def before_commit(target: str | os.PathLike[str]) -> None:
    """Called just before ``target`` is made visible; kills the process when told to."""
    at = os.environ.get(KILL_AT)
    if at is None:
        return
    global _count
    _count += 1
    log = os.environ.get(KILL_LOG)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{_count}\t{os.fspath(target)}\n")
    if at.strip() == str(_count):
        os.kill(os.getpid(), signal.SIGKILL)

"""Argparse ``type=`` functions for the numeric flags that are not fields of a config.

Flags that set a config field (``--codebook-size``, ``--threshold``, ``--lr``, ...) are checked by
that config's own ``__post_init__`` when the handler builds it, before any file is touched. The
values here (result counts, worker counts, seeds, fractions) belong to no config, so argparse
checks them: a bad value exits with status 2 and one line such as
``delfx search: error: argument --top-k: must be >= 1, got 0``.
"""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1 (counts: results, workers, images per batch)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer of at least 0 (seeds, counts where 0 means off)."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = float(_number(text, float))
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number of at least 0 (weights where 0 means off)."""
    value = float(_number(text, float))
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """A number in ``[0, 1]``."""
    value = float(_number(text, float))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def fraction(text: str) -> float:
    """A share of a whole that leaves some over: a number in ``[0, 1)``."""
    value = float(_number(text, float))
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def float_list(text: str) -> tuple[float, ...]:
    """Comma-separated numbers, e.g. ``2,1.414,1``; their range is the config's to check."""
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None

"""The seed's printed lines and the results JSON that every evaluating command writes.

JSON layout (mAP and mP@k in percent, as the seed prints them; NaN becomes null)::

    {"dataset": NAME, "method": "...",
     "protocols": {"easy": {"mAP": x, "mP@k": [p1, p5, p10], "n_queries": n}, ...},
     "kappas": [1, 5, 10], "timings": {"stage": seconds, ...}, ...extra}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from delfx.evaluation.revisited import ProtocolScore

_SHORT = {"easy": "E", "medium": "M", "hard": "H"}


def _round(x: float | None) -> float:
    return float("nan") if x is None else float(np.around(x, decimals=2))


def _round_list(xs: list[float | None]) -> np.ndarray:
    return np.around(np.array([np.nan if x is None else x for x in xs], dtype=float), decimals=2)


def format_lines(results: Mapping[str, Any]) -> list[str]:
    """The seed's two output lines, from a results JSON object (see :func:`results_dict`).

    Revisited protocols give ``>> NAME: mAP E: 69.74, M: 52.38, H: 26.21`` and
    ``>> NAME: mP@k[1, 5, 10] E: [86.76 79.63 74.93], M: [...], H: [...]``; the old protocol
    gives ``>> NAME: mAP 81.2`` and ``>> NAME: mP@k[1, 5, 10] [...]``.
    """
    name, kappas, protos = results["dataset"], list(results["kappas"]), results["protocols"]
    if not protos:
        return []
    if set(protos) == {"old"}:
        old = protos["old"]
        return [
            f">> {name}: mAP {_round(old['mAP'])}",
            f">> {name}: mP@k{kappas} {_round_list(old['mP@k'])}",
        ]
    maps = ", ".join(f"{_SHORT.get(p, p)}: {_round(v['mAP'])}" for p, v in protos.items())
    mps = ", ".join(f"{_SHORT.get(p, p)}: {_round_list(v['mP@k'])}" for p, v in protos.items())
    return [f">> {name}: mAP {maps}", f">> {name}: mP@k{kappas} {mps}"]


def _json_number(x: float) -> float | None:
    return None if math.isnan(x) else x * 100.0


def results_dict(
    dataset: str,
    method: str,
    scores: Mapping[str, ProtocolScore],
    timings: Mapping[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build the results JSON object (see the module docstring); scores become percentages."""
    kappas = list(next(iter(scores.values())).kappas) if scores else []
    protocols = {
        p: {
            "mAP": _json_number(s.mAP),
            "mP@k": [_json_number(float(v)) for v in s.mP],
            "n_queries": s.n_evaluated,
        }
        for p, s in scores.items()
    }
    out: dict[str, Any] = {
        "dataset": dataset,
        "method": method,
        "protocols": protocols,
        "kappas": kappas,
        "timings": {k: float(v) for k, v in (timings or {}).items()},
    }
    out.update(extra)
    return out

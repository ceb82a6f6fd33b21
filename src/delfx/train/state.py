"""Training state on disk: checkpoints that resume exactly, RNG states and the CSV log.

A training checkpoint is a :func:`~delfx.models.global_net.load_checkpoint`-compatible file
``{"meta", "state_dict", "extra"}`` whose ``extra`` holds the epoch, optimizer and scheduler
states, the best metric, the RNG states (torch as a ``uint8`` tensor, numpy's bit generator as a
JSON string) and the config. Everything is a plain value or a tensor, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delfx.errors import InputError
from delfx.io import atomic
from delfx.models.global_net import GlobalNet

_PROTOCOLS = (("E", "easy"), ("M", "medium"), ("H", "hard"))


def to_cpu(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor detached and moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def rng_state(rng: np.random.Generator, device: torch.device) -> dict[str, Any]:
    """The torch (and CUDA, on a CUDA device) and numpy RNG states as plain values."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": json.dumps(rng.bit_generator.state),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], rng: np.random.Generator, device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (``rng`` is updated in place)."""
    torch.set_rng_state(state["torch"])
    rng.bit_generator.state = json.loads(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_bytes(net: GlobalNet, extra: Mapping[str, Any]) -> bytes:
    """Serialise ``{"meta", "state_dict", "extra"}`` (tensors moved to the CPU)."""
    payload = {"meta": net.meta, "state_dict": to_cpu(net.state_dict()), "extra": to_cpu(extra)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``.

    Raises:
        InputError: missing or unreadable file, or one without training state; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable checkpoint ({exc})") from None
    keys = ("epoch", "optimizer", "scheduler", "rng")
    if (
        not isinstance(ckpt, dict)
        or "state_dict" not in ckpt
        or not isinstance(ckpt.get("extra"), dict)
        or any(k not in ckpt["extra"] for k in keys)
    ):
        raise InputError(f"{path}: not a training checkpoint (needs extra {', '.join(keys)})")
    return ckpt


def medium_map(results: Mapping[str, Any]) -> float:
    """Medium-protocol mAP (percent) of a results dict; the old protocol's mAP; NaN if missing."""
    protos = results.get("protocols", {})
    entry = protos.get("medium") or protos.get("old") or {}
    value = entry.get("mAP")
    return float("nan") if value is None else float(value)


def log_fields(test_datasets: Sequence[str]) -> list[str]:
    """Columns of ``log.csv``: epoch, loss, lr, then ``<dataset>_mAP_{E,M,H}`` per dataset."""
    return ["epoch", "loss", "lr"] + [f"{d}_mAP_{s}" for d in test_datasets for s, _ in _PROTOCOLS]


def log_row(
    epoch: int, loss: float, lr: float, results: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    """One ``log.csv`` row; datasets not evaluated this epoch stay empty.

    An old-protocol dataset's single mAP is written in its ``M`` column.
    """
    row = {"epoch": str(epoch), "loss": f"{loss:.6g}", "lr": f"{lr:.6g}"}
    for name, res in results.items():
        protos = res.get("protocols", {})
        for short, proto in _PROTOCOLS:
            entry = protos.get(proto) or (protos.get("old") if proto == "medium" else None)
            value = None if entry is None else entry.get("mAP")
            row[f"{name}_mAP_{short}"] = "" if value is None else f"{value:.2f}"
    return row


def read_log(path: Path) -> list[dict[str, str]]:
    """Rows of an existing ``log.csv`` (empty when there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_log(path: Path, fields: Sequence[str], rows: Sequence[Mapping[str, str]]) -> Path:
    """Rewrite ``log.csv`` atomically with ``rows`` (unknown keys dropped, missing ones empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return atomic.write_text(path, buf.getvalue())

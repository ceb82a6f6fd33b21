"""Reading and writing ground-truth files (``gnd_<name>.pkl`` and ``gnd_<name>.json``).

The field's ground truth is a pickled dict (field-facts §2)::

    {"imlist": [db names], "qimlist": [query names],
     "gnd": [{"bbx": [x1, y1, x2, y2], "easy": [...], "hard": [...], "junk": [...]}, ...]}

The old Oxford/Paris protocol has ``ok`` and ``junk`` instead of ``easy``/``hard``/``junk``.

Downloaded pickles are read with a restricted unpickler that only rebuilds plain containers,
numbers, strings and numpy arrays: a pickle that asks for anything else is refused, so opening a
dataset never runs foreign code. Datasets that delfx builds store their ground truth as JSON
(``gnd_<name>.json``), which delfx reads first. Only when asked (``--export-pkl``) is a
protocol-2 pickle of the same plain lists written beside it, for the field's own evaluation
scripts, which read nothing else; delfx never reads that copy back.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

from delfx.errors import InputError
from delfx.io import atomic

_ALLOWED_GLOBALS = {
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "tuple"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_pickle_safely(path: str | os.PathLike[str]) -> Any:
    """Load a data-only pickle (plain containers and numpy arrays), refusing anything else.

    Raises:
        InputError: the file is missing, truncated, or asks for a non-data class.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: malformed pickle ({exc})") from None


def load_json(path: str | os.PathLike[str]) -> Any:
    """Load a JSON file, naming the file in any error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: malformed JSON ({exc})") from None


def read_gnd(folder: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """Read ``gnd_<name>`` from a dataset folder, preferring the JSON copy when present.

    Returns:
        The raw dict (``imlist``, ``qimlist``, ``gnd``); see :mod:`delfx.datasets.revisited` for
        validation.
    """
    folder = Path(folder)
    json_path = folder / f"gnd_{name}.json"
    pkl_path = folder / f"gnd_{name}.pkl"
    if json_path.exists():
        return load_json(json_path)
    if pkl_path.exists():
        return load_pickle_safely(pkl_path)
    raise InputError(f"{pkl_path}: ground-truth file not found")


def to_plain(gnd: dict[str, Any]) -> dict[str, Any]:
    """Convert a ground-truth dict to plain Python lists, ints and floats (JSON-ready)."""
    out: dict[str, Any] = {
        "imlist": [str(x) for x in gnd["imlist"]],
        "qimlist": [str(x) for x in gnd["qimlist"]],
        "gnd": [],
    }
    for entry in gnd["gnd"]:
        plain: dict[str, Any] = {}
        for key, value in entry.items():
            if key == "bbx":
                plain[key] = None if value is None else [float(v) for v in value]
            else:
                plain[key] = [int(v) for v in value]
        out["gnd"].append(plain)
    return out


def write_gnd(
    folder: str | os.PathLike[str], name: str, gnd: dict[str, Any], *, export_pkl: bool = False
) -> Path:
    """Write ``gnd_<name>.json`` (and, with ``export_pkl``, ``gnd_<name>.pkl``) atomically.

    Args:
        folder: the dataset folder (``<root>/<name>``).
        name: the dataset name.
        gnd: dict with ``imlist``, ``qimlist`` and ``gnd`` (see the module docstring).
        export_pkl: also write the field's pickle format, for tools outside delfx.

    Returns:
        The path of the JSON file.
    """
    plain = to_plain(gnd)
    folder = Path(folder)
    json_path = atomic.write_json(folder / f"gnd_{name}.json", plain)
    if export_pkl:  # an export for the field's scripts; delfx itself reads the JSON
        atomic.write_bytes(folder / f"gnd_{name}.pkl", pickle.dumps(plain, protocol=2))
    return json_path

"""Names of cached stage outputs, derived from everything that changes them.

A cached output (descriptors, features, an index) is reused only when its key matches, so the
key must change whenever its inputs do. A model given as a file is keyed on the file's content,
not its path: a checkpoint retrained or resumed in place (``model_best.pth``) gets a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
# content hashes of files already read in this process, by (path, size, mtime, inode)
_seen: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (hex), read once per process while the file is unchanged."""
    p = Path(path).resolve()
    st = p.stat()
    stamp = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if stamp not in _seen:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        _seen[stamp] = h.hexdigest()
    return _seen[stamp]


def model_id(model: str | None) -> str | None:
    """A model as a cache key: ``sha256:<hex>`` of its content for a file, else its name."""
    if model is not None and Path(model).is_file():
        return f"sha256:{file_digest(model)}"
    return model


def digest(obj: Any, length: int = 10) -> str:
    """A short stable hash of a JSON-serialisable value (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:length]

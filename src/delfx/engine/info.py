"""What a collection holds: ``delfx index info``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from delfx.engine import manifest as mf
from delfx.engine.searcher import Searcher


def _disk_bytes(folder: Path, manifest: dict[str, Any]) -> int:
    top, idx = mf.referenced(manifest)
    paths = [folder / n for n in top] + [folder / mf.INDEX / n for n in idx]
    return sum(p.stat().st_size for p in paths if p.is_file())


def info(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A summary of a collection (JSON-able).

    Keys: ``folder``, ``pipeline``, ``combine``, ``images`` (searchable), ``removed`` (hidden,
    still on disk until compact), ``features`` (local features stored), ``index_kind``,
    ``codebook_words``, ``codebook``, ``shards``, ``disk_bytes``, ``index_memory_bytes``,
    ``global_memory_bytes``, ``photos``, ``created``, ``updated``.
    """
    folder = Path(folder)
    with Searcher.open(folder) as s:
        m = s.info
        names = [n for i, n in enumerate(s.names) if s.live[i]]
        n_feats = sum(s.features.num_features(n) for n in names)
        index_bytes = 0 if s.index is None else int(s.index.nbytes())
        global_bytes = 0 if s.global_matrix is None else int(s.global_matrix.nbytes)
        return {
            "folder": str(folder),
            "pipeline": s.spec.name,
            "combine": s.spec.combine,
            "images": len(names),
            "removed": len(m["removed"]),
            "features": int(n_feats),
            "index_kind": m["index"]["kind"],
            "codebook_words": m["index"]["config"].get("n_words"),
            "codebook": m["index"].get("codebook"),
            "shards": len(m["shards"]),
            "disk_bytes": _disk_bytes(folder, m),
            "index_memory_bytes": index_bytes,
            "global_memory_bytes": global_bytes,
            "photos": m.get("photos"),
            "created": m.get("created"),
            "updated": m.get("updated"),
        }


def format_info(d: dict[str, Any]) -> str:
    """The summary as aligned lines."""
    mib = 1024 * 1024
    rows = [
        ("collection", d["folder"]),
        ("pipeline", f"{d['pipeline']} ({d['combine']})"),
        ("images", f"{d['images']} searchable, {d['removed']} removed (until compact)"),
        ("features", f"{d['features']} local features"),
        ("index", f"{d['index_kind']}, {d['codebook_words']} words, from {d['codebook']}"),
        ("memory", f"index {d['index_memory_bytes'] / mib:.1f} MiB, "
                   f"global {d['global_memory_bytes'] / mib:.1f} MiB"),
        ("disk", f"{d['disk_bytes'] / mib:.1f} MiB in {d['shards']} shard(s)"),
        ("photos", d["photos"]),
        ("built", f"{d['created']} (updated {d['updated']})"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

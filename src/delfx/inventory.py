"""What is present under a datasets root: catalogue datasets and datasets built locally.

Directory walks use entry types from ``os.scandir``, so counting a million images needs no
``stat`` per file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from delfx.datasets.catalog import CATALOG
from delfx.datasets.gnd_io import load_json

#: Written last into ``<root>/<name>/`` when a download is complete.
MARKER_NAME = ".delfx-complete.json"


def _file_entries(folder: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
    """Non-folder entries under ``folder``, recursively; only a symlinked top folder is followed."""
    stack = [os.fspath(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        yield entry
        except (FileNotFoundError, NotADirectoryError):
            continue


def count_files(folder: str | os.PathLike[str]) -> int:
    """Number of files under ``folder``, from directory entry types (no stat per file)."""
    return sum(1 for entry in _file_entries(folder) if entry.is_file())


def disk_usage(folder: str | os.PathLike[str]) -> int:
    """Total size in bytes of the files under ``folder``, not following symlinks inside it."""
    return sum(entry.stat(follow_symlinks=False).st_size for entry in _file_entries(folder))


def list_datasets(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """What each catalogue dataset looks like under ``root``.

    Returns:
        One dict per catalogue name with ``name``, ``description``, ``status`` (``complete``,
        ``partial`` or ``absent``), ``images`` (files in the image folder, or in its staging
        folder while partial), ``gnd`` (bool, or None for sets without ground truth),
        ``size_bytes`` (from the completion marker when complete) and ``path``.
    """
    root = Path(root)
    rows = []
    for spec in CATALOG.values():
        folder = root / spec.name
        marker_path = folder / MARKER_NAME
        marker = load_json(marker_path) if marker_path.exists() else None
        if marker is not None:
            status = "complete"
        elif folder.is_dir() and any(folder.iterdir()):
            status = "partial"
        else:
            status = "absent"
        images = folder / spec.image_dir
        if not images.is_dir():
            images = folder / f".{spec.image_dir}.partial"
        size = marker.get("size_bytes") if isinstance(marker, dict) else None
        rows.append(
            {
                "name": spec.name,
                "description": spec.description,
                "status": status,
                "images": count_files(images) if status != "absent" else 0,
                "gnd": (folder / spec.gnd_file).is_file() if spec.gnd_file else None,
                "size_bytes": size if isinstance(size, int) else disk_usage(folder),
                "path": str(folder),
            }
        )
    rows.extend(_built_datasets(root))
    return rows


def _built_datasets(root: Path) -> list[dict[str, Any]]:
    """Datasets under ``root`` that are not in the catalogue (built with ``delfx data ...``)."""
    rows = []
    if not root.is_dir():
        return rows
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in CATALOG):
        name = folder.name
        if name.startswith(".") or not any(
            (folder / f"gnd_{name}{ext}").is_file() for ext in (".json", ".pkl")
        ):
            continue
        rows.append(
            {
                "name": name,
                "description": "built locally",
                "status": "built",
                "images": count_files(folder / "jpg"),
                "gnd": True,
                "size_bytes": disk_usage(folder),
                "path": str(folder),
            }
        )
    return rows

"""Shard plans: which images each shard of a run holds, and which shards are done.

A run over ``n`` images in ``N`` shards sorts the images by name and gives shard ``i`` the
contiguous range ``[i * n // N, (i + 1) * n // N)``, so every process that plans the same images
in the same number of shards gets the same shards, and image ids stay in sorted order across
shards. The plan (``shards.json``) records the shard count and digests of the image list and of
the settings; a shard is done when its marker (``<features file stem>.done``) names the same
plan, images and settings. A rerun skips done shards and resumes the others.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delfx.errors import InputError
from delfx.extract import Job
from delfx.io import atomic

PLAN = "shards.json"
DONE_SUFFIX = ".done"
#: Images per shard when the number of shards is not given (at least four shards per worker,
#: so that the last shards of a run keep every worker busy).
IMAGES_PER_SHARD = 1000


def digest(obj: Any) -> str:
    """A short, stable digest of a JSON-able value (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Shard:
    """One shard of a plan.

    Attributes:
        index: ``0 .. N - 1`` within the plan.
        jobs: its images, in sorted order.
        first_id: the id of its first image in the whole run (ids follow the sorted list).
        features: the feature file it writes.
        vectors: the global-descriptor file it writes (None when the run has none).
    """

    index: int
    jobs: tuple[Job, ...]
    first_id: int
    features: Path
    vectors: Path | None = None

    @property
    def names(self) -> list[str]:
        """Its image names, in id order."""
        return [j.name for j in self.jobs]

    @property
    def done_marker(self) -> Path:
        """The file that says this shard is complete."""
        return self.features.with_suffix(DONE_SUFFIX)


def split(n_images: int, n_shards: int) -> list[range]:
    """The contiguous ranges of ``n_images`` sorted images in ``n_shards`` shards.

    Raises:
        InputError: fewer than one shard, or more shards than images.
    """
    if n_shards < 1:
        raise InputError(f"shards: must be >= 1, got {n_shards}")
    if n_shards > max(n_images, 1):
        raise InputError(f"shards: {n_shards} shards for {n_images} images")
    return [
        range(i * n_images // n_shards, (i + 1) * n_images // n_shards) for i in range(n_shards)
    ]


def default_shards(n_images: int, n_workers: int) -> int:
    """Shards of a run when none is given: four per worker, or :data:`IMAGES_PER_SHARD` each."""
    want = max(4 * n_workers, -(-n_images // IMAGES_PER_SHARD))
    return max(1, min(want, n_images))


def parse_slice(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (this process's shard of an array job).

    Raises:
        ValueError: not of that form (argparse turns it into a one-line error).
    """
    head, sep, tail = text.partition("/")
    try:
        i, n = int(head), int(tail)
    except ValueError:
        raise ValueError(f"expected I/N such as 0/4, got {text!r}") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"expected I/N with 0 <= I < N, got {text!r}")
    return i, n


def plan_record(names: Sequence[str], settings: Mapping[str, Any], n_shards: int) -> dict[str, Any]:
    """What ``shards.json`` holds: the shard count and digests of the images and settings."""
    return {
        "format": "delfx-shards",
        "n_shards": n_shards,
        "n_images": len(names),
        "images": digest(list(names)),
        "settings": digest(dict(settings)),
    }


def read_plan(folder: Path) -> dict[str, Any] | None:
    """The plan in ``folder``, or None when there is none.

    Raises:
        InputError: a plan file that is not one.
    """
    path = folder / PLAN
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a shard plan ({exc})") from None
    if not isinstance(plan, dict) or plan.get("format") != "delfx-shards":
        raise InputError(f"{path}: not a delfx shard plan")
    n = plan.get("n_shards")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{path}: field 'n_shards' must be an int >= 1, got {n!r}")
    return plan


def settle(
    folder: Path,
    names: Sequence[str],
    settings: Mapping[str, Any],
    requested: int | None,
    default: int,
    *,
    overwrite: bool = False,
) -> tuple[dict[str, Any], bool]:
    """The plan of a run in ``folder``: the one on disk when it is for these images and settings,
    else a new one (written atomically).

    Args:
        folder: where the plan and the shards live.
        names: the run's image names, sorted.
        settings: what determines the shards' content (the feature config...).
        requested: the shard count asked for (None: the plan's, else ``default``).
        default: the shard count of a new plan when none is requested.
        overwrite: replace a plan of other images or settings instead of refusing it.

    Returns:
        ``(plan, fresh)``; ``fresh`` is True when the plan was just written (any shard files
        under its names belong to another run and must not be resumed).

    Raises:
        InputError: a plan for other images, settings or shard count, without ``overwrite``.
    """
    old = read_plan(folder)
    if old is not None:
        n = requested if requested is not None else old["n_shards"]
        new = plan_record(names, settings, n)
        if old == new:
            return old, False
        if not overwrite:
            what = (
                "shard count"
                if old["images"] == new["images"] and old["settings"] == new["settings"]
                else "images or settings"
            )
            raise InputError(
                f"{folder / PLAN}: a sharded run of other {what} ({old['n_shards']} shards of "
                f"{old['n_images']} images) is unfinished here; pass --overwrite to start anew"
            )
    n = requested if requested is not None else default
    split(len(names), n)  # refuses a bad count before anything is written
    plan = plan_record(names, settings, n)
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(folder / PLAN, plan)
    return plan, True


def shards(
    jobs: Iterable[Job],
    n_shards: int,
    files: Any,
    *,
    first_id: int = 0,
) -> list[Shard]:
    """The shards of ``jobs`` (sorted by name here).

    Args:
        jobs: the run's images.
        n_shards: how many shards.
        files: ``files(i) -> (features path, vectors path or None)`` of shard ``i``.
        first_id: the id of the first image (a collection's add continues its ids).
    """
    ordered = sorted(jobs, key=lambda j: j.name)
    out = []
    for i, span in enumerate(split(len(ordered), n_shards)):
        feats, vecs = files(i)
        out.append(
            Shard(i, tuple(ordered[span.start : span.stop]), first_id + span.start, feats, vecs)
        )
    return out


def _marker(shard: Shard, plan: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "format": "delfx-shard-done",
        "shard": shard.index,
        "n_shards": plan["n_shards"],
        "plan_images": plan["images"],
        "settings": plan["settings"],
        "images": digest(shard.names),
        "n_images": len(shard.jobs),
    }


def is_done(shard: Shard, plan: Mapping[str, Any]) -> bool:
    """True when ``shard``'s marker is there and was written for this plan and its images,
    and its files exist."""
    try:
        found = json.loads(shard.done_marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(found, dict):
        return False
    found = {k: v for k, v in found.items() if k not in ("worker", "seconds")}
    if found != _marker(shard, plan):
        return False
    return shard.features.is_file() and (shard.vectors is None or shard.vectors.is_file())


def mark_done(shard: Shard, plan: Mapping[str, Any], worker: str, seconds: float) -> Path:
    """Write ``shard``'s done marker (atomically, after its files are complete)."""
    record = {**_marker(shard, plan), "worker": worker, "seconds": round(seconds, 3)}
    return atomic.write_json(shard.done_marker, record)


def clear(shard: Shard) -> None:
    """Delete a shard's files and marker (a fresh plan must not resume another run's files)."""
    for path in (shard.done_marker, shard.features, shard.vectors):
        if path is not None:
            path.unlink(missing_ok=True)


def worker_name() -> str:
    """``host:pid`` of this process (recorded in done markers)."""
    return f"{os.uname().nodename}:{os.getpid()}"

"""Which photos a collection command means, and the name each gets in the collection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from delfx.errors import InputError
from delfx.extract import Job, folder_jobs
from delfx.io.images import has_image_suffix


def _name(path: Path, base: Path | None, root: Path | None) -> str:
    """The path relative to the collection's photo folder when under it, else to ``base``
    (the folder given), else the file name."""
    resolved = path.resolve()
    for anchor in (root, base):
        if anchor is not None:
            try:
                return resolved.relative_to(anchor.resolve()).as_posix()
            except ValueError:
                continue
    return path.name


def photo_jobs(paths: Sequence[Path], *, root: Path | None = None) -> list[Job]:
    """One extraction job per photo of ``paths`` (folders are searched recursively).

    Args:
        paths: photo files and folders of photos.
        root: the collection's photo folder; photos under it are named relative to it.

    Returns:
        Jobs sorted by name; each job's ``name`` is the photo's name in the collection.

    Raises:
        InputError: a path that is missing or not a photo, no photo at all, or two photos that
            would get one name.
    """
    jobs: dict[str, Job] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = [(j.path, path) for j in folder_jobs(path)]
        elif path.is_file():
            if not has_image_suffix(path):
                raise InputError(f"{path}: not a photo (no image suffix)")
            found = [(path, None)]
        else:
            raise InputError(f"{path}: no such photo or folder")
        for file, base in found:
            name = _name(file, base, root)
            if name in jobs and jobs[name].path.resolve() != file.resolve():
                raise InputError(f"{file}: same name '{name}' as {jobs[name].path}")
            jobs[name] = Job(name, file)
    if not jobs:
        raise InputError(f"{', '.join(str(p) for p in paths) or 'no path'}: no photos given")
    return sorted(jobs.values(), key=lambda j: j.name)

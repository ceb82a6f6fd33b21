"""Safe extraction of ``.tar``, ``.tgz`` and ``.tar.gz`` archives.

Only regular files are written. An archive is refused as a whole when a member has an absolute
path or a ``..`` component, or when a link points outside the archive. Where each file lands is
decided by a *member map*: a function from the member's path inside the archive to a relative
destination path, or None to skip the member (e.g. flatten ``paris/defense/x.jpg`` to ``x.jpg``).

Files are first written into a staging folder next to the destination, then renamed into place one
by one, so a destination never holds a half-written file under its final name.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from delfx.errors import DelfxError

logger = logging.getLogger(__name__)

#: Maps a member path inside the archive to a destination path relative to the output folder.
MemberMap = Callable[[str], "str | None"]


def flatten_images(suffixes: tuple[str, ...] = (".jpg",)) -> MemberMap:
    """A member map that keeps files ending in ``suffixes`` and drops their folders.

    ``paris/defense/paris_defense_000000.jpg`` maps to ``paris_defense_000000.jpg``. AppleDouble
    files (``._name``) and other suffixes are skipped.
    """
    wanted = tuple(s.lower() for s in suffixes)

    def member_map(member: str) -> str | None:
        base = posixpath.basename(member)
        if not base or base.startswith("._") or not base.lower().endswith(wanted):
            return None
        return base

    return member_map


def keep_last_components(n: int) -> MemberMap:
    """A member map that keeps the last ``n`` path components and skips shallower members.

    ``ims/ab/cd/ef/<cid>`` maps to ``ab/cd/ef/<cid>`` with ``n=4``.
    """

    def member_map(member: str) -> str | None:
        parts = [p for p in PurePosixPath(member).parts if p not in ("", ".")]
        if len(parts) < n:
            return None
        return "/".join(parts[-n:])

    return member_map


def _check_relative(name: str, what: str, archive: Path) -> None:
    """Refuse an absolute path or one with a ``..`` component."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise DelfxError(f"{archive}: {what} '{name}' has an absolute path; refusing the archive")
    if ".." in normalized.split("/"):
        raise DelfxError(f"{archive}: {what} '{name}' contains '..'; refusing the archive")


def _check_link(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse a symbolic or hard link whose target lies outside the archive."""
    target = member.linkname.replace("\\", "/")
    if member.issym():
        if target.startswith("/"):
            raise DelfxError(
                f"{archive}: link '{member.name}' points outside the archive; refusing the archive"
            )
        target = posixpath.join(posixpath.dirname(member.name), target)
    resolved = posixpath.normpath(target)
    if resolved.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise DelfxError(
            f"{archive}: link '{member.name}' points outside the archive; refusing the archive"
        )


def extract(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    member_map: MemberMap,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Extract the regular files of ``archive`` into ``dest`` as ``member_map`` says.

    ``dest`` may already hold files (several archives can fill one folder); a file with the same
    destination path is replaced. Links are never created: links that stay inside the archive are
    skipped, links that point outside make the whole archive be refused.

    Args:
        archive: a ``.tar``, ``.tgz`` or ``.tar.gz`` file.
        dest: the output folder; created if missing.
        member_map: member path -> destination path relative to ``dest``, or None to skip.
        progress: optional callback with the number of files written so far.

    Returns:
        The destination paths written, relative to ``dest``, in archive order.

    Raises:
        DelfxError: the archive is unsafe, corrupt or truncated (one line naming it).
    """
    archive = Path(archive)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extract", dir=dest.parent))
    try:
        written = _extract_to(archive, staging, member_map, progress)
        for rel in written:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.debug("%s: extracted %d files into %s", archive, len(written), dest)
    return written


def _extract_to(
    archive: Path, staging: Path, member_map: MemberMap, progress: Callable[[int], None] | None
) -> list[str]:
    written: dict[str, None] = {}
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                _check_relative(member.name, "member", archive)
                if member.issym() or member.islnk():
                    _check_link(member, archive)
                    logger.debug("%s: skipping link %s", archive, member.name)
                    continue
                if not member.isfile():
                    continue
                rel = member_map(member.name)
                if rel is None:
                    continue
                _check_relative(rel, "destination of member", archive)
                rel = posixpath.normpath(rel.replace("\\", "/"))
                if rel in (".", ""):
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                if rel in written:
                    logger.debug("%s: %s appears twice; keeping the last copy", archive, rel)
                written[rel] = None
                if progress:
                    progress(len(written))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise DelfxError(f"{archive}: cannot extract ({exc.strerror})") from None
        raise DelfxError(f"{archive}: corrupt or truncated archive ({exc})") from None
    return list(written)

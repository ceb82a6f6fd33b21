"""Streamed, resumable HTTP downloads with the standard library.

A download goes to ``<dest>.part``. When a ``.part`` file is already there, the request asks for
the rest with ``Range: bytes=N-``; a ``206 Partial Content`` reply is appended, a plain ``200``
restarts from zero. A connection that is cut (short read, reset, timeout) is retried from the bytes
already on disk, a bounded number of times with a small backoff. The ``.part`` file is renamed to
``dest`` only once its size matches what the server announced.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from delfx import __version__
from delfx.errors import DelfxError

logger = logging.getLogger(__name__)

#: ``progress(bytes_done, total_or_None)``, called as bytes arrive.
ProgressFn = Callable[[int, "int | None"], None]

_CHUNK = 1 << 20
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class _Retry(Exception):
    """An attempt failed in a way that another attempt may fix."""


def part_path(dest: str | os.PathLike[str]) -> Path:
    """The temporary file a download of ``dest`` is written to until it is complete."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    *,
    progress: ProgressFn | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 0.5,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download when possible.

    Args:
        url: an ``http://`` or ``https://`` address.
        dest: the final file; parent folders are created.
        progress: optional callback ``(bytes_done, total_or_None)``.
        retries: how many failed attempts in a row are retried before giving up. The count is
            reset whenever an attempt brings new bytes.
        timeout: socket timeout in seconds for connecting and for each read.
        backoff: seconds to wait before the first retry; doubled on each further retry.

    Returns:
        ``dest``.

    Raises:
        DelfxError: one line naming the URL (HTTP error, network failure, size mismatch).
    """
    if not url.lower().startswith(("http://", "https://")):
        raise DelfxError(f"{url}: only http:// and https:// URLs can be downloaded")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _attempt(url, part, progress, timeout)
            break
        except _Retry as exc:
            after = part.stat().st_size if part.exists() else 0
            failures = 0 if after > before else failures + 1
            if failures > retries:
                raise DelfxError(f"{url}: failed after {retries} retries ({exc})") from None
            wait = backoff * (2 ** max(failures - 1, 0))
            logger.info("%s: %s; retrying from byte %d in %.1fs", url, exc, after, wait)
            if wait > 0:
                time.sleep(wait)
    os.replace(part, dest)
    return dest


def _attempt(url: str, part: Path, progress: ProgressFn | None, timeout: float) -> None:
    """One request: append to (or restart) ``part``; returns when the file is complete."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"delfx/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 416 and have:
                _handle_unsatisfied_range(url, part, have, exc.headers.get("Content-Range", ""))
                return
            if exc.code in _RETRY_STATUSES:
                raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
            raise DelfxError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Retry(f"cannot connect: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Retry(f"cannot connect: {exc}") from None

    with contextlib.closing(response):
        total, start = _expected(url, response)
        if start not in (0, have):
            part.unlink()
            raise _Retry(f"asked for bytes from {have}, the server sent from {start}")
        if start == 0 and have:
            logger.info("%s: server does not resume; restarting from zero", url)
        mode = "ab" if start else "wb"
        done = start
        if progress:
            progress(done, total)
        with open(part, mode) as out:
            if start == 0:
                out.truncate(0)
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (http.client.HTTPException, OSError) as exc:
                    out.flush()
                    raise _Retry(f"connection cut at byte {done} ({type(exc).__name__})") from None
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
    if total is not None:
        if done < total:
            raise _Retry(f"connection cut at byte {done} of {total}")
        if done > total:
            part.unlink()
            raise DelfxError(f"{url}: received {done} bytes, more than the announced {total}")


def _expected(url: str, response: http.client.HTTPResponse) -> tuple[int | None, int]:
    """``(total size or None, offset the body starts at)`` from a response's headers."""
    status = response.status
    if status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match:
            raise DelfxError(f"{url}: HTTP 206 reply without a valid Content-Range")
        start = int(match.group(1))
        total = None if match.group(3) == "*" else int(match.group(3))
        return total, start
    if status != 200:
        raise DelfxError(f"{url}: unexpected HTTP {status} {response.reason}")
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    return total, 0


def _handle_unsatisfied_range(url: str, part: Path, have: int, content_range: str) -> None:
    """A 416 reply: the ``.part`` file is already complete, or it is larger than the file."""
    match = _UNSATISFIED_RANGE.match(content_range)
    if match and int(match.group(1)) == have:
        logger.debug("%s: partial file already holds all %d bytes", url, have)
        return
    logger.info("%s: partial file does not match the remote file; restarting", url)
    part.unlink()
    raise _Retry("HTTP 416 Range Not Satisfiable")

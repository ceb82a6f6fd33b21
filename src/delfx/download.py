"""The download stage: fetch catalogue datasets into a datasets root, and list what is there.

Layout under the root::

    <root>/.downloads/<url path>              downloaded archives (a cache; reused, never refetched)
    <root>/.downloads/manifest.json           sha256 of every file downloaded, keyed by URL path
    <root>/<name>/jpg/ (or ims/)              images, filled from the archives
    <root>/<name>/<gnd or other files>
    <root>/<name>/.delfx-complete.json        written last: the dataset is complete

No checksums are published for these files, so the first download of a file records its sha256
and later downloads of the same URL path are checked against it. A dataset whose marker exists is
left alone. Oxford images are shared by ``oxford5k`` and ``roxford5k`` (Paris by ``paris6k`` and
``rparis6k``): when the sibling's image folder is complete, a relative symlink is made instead of
extracting again. A ``mirror`` base URL replaces the scheme and host of every catalogue URL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from delfx.datasets.catalog import PARTS, DatasetSpec, Resource, get_spec
from delfx.errors import DelfxError
from delfx.inventory import MARKER_NAME, count_files, disk_usage
from delfx.io import atomic
from delfx.io.archives import extract
from delfx.io.http import fetch

logger = logging.getLogger(__name__)

MIRROR_ENV = "DELFX_DATA_MIRROR"
DOWNLOADS_DIR = ".downloads"
MANIFEST_NAME = "manifest.json"


def apply_mirror(url: str, mirror: str | None) -> str:
    """Replace the scheme and host of ``url`` with the ``mirror`` base URL, keeping the path.

    ``apply_mirror("http://cmp.felk.cvut.cz/revisitop/x.pkl", "http://127.0.0.1:8123")`` gives
    ``http://127.0.0.1:8123/revisitop/x.pkl``. A path in the mirror is kept as a prefix.
    """
    if not mirror:
        return url
    base = urlsplit(mirror)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise DelfxError(f"mirror '{mirror}': expected an http:// or https:// base URL")
    return mirror.rstrip("/") + urlsplit(url).path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DelfxError(f"{path}: unreadable ({exc})") from None


class _Manifest:
    """The sha256 record of downloaded files, saved atomically after each change."""

    def __init__(self, path: Path):
        self.path = path
        self.files: dict[str, dict[str, Any]] = {}
        if path.exists():
            data = _load_json(path)
            if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
                raise DelfxError(f"{path}: expected a JSON object with a 'files' object")
            self.files = data["files"]

    def expected(self, key: str) -> str | None:
        entry = self.files.get(key)
        return entry.get("sha256") if isinstance(entry, dict) else None

    def record(self, key: str, digest: str, size: int, url: str) -> None:
        self.files[key] = {"sha256": digest, "size": size, "url": url, "recorded": _now()}
        atomic.write_json(self.path, {"version": 1, "files": self.files})


class _Bars:
    """tqdm progress bars for bytes and extracted files (or nothing when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @contextlib.contextmanager
    def bar(self, desc: str, unit: str = "B"):
        if not self.enabled:
            yield None
            return
        from tqdm.auto import tqdm

        kw = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        bars: list[Any] = []

        def update(done: int, total: int | None = None) -> None:
            if not bars:  # created on the first call, once the total is known
                bars.append(tqdm(desc=desc, unit=unit, total=total, leave=False, **kw))
            bar = bars[0]
            if total is not None and bar.total != total:
                bar.total = total
            bar.n = done
            bar.refresh()

        try:
            yield update
        finally:
            if bars:
                bars[0].close()

    def redirect_logs(self) -> contextlib.AbstractContextManager[Any]:
        """Route delfx log lines through tqdm so they do not break a bar that is drawing."""
        if not self.enabled:
            return contextlib.nullcontext()
        from tqdm.contrib.logging import logging_redirect_tqdm

        return logging_redirect_tqdm(loggers=[logging.getLogger("delfx")])


class _Stage:
    """State shared while installing datasets into one root."""

    def __init__(self, root: Path, mirror: str | None, keep_archives: bool, progress: bool):
        self.root = root
        self.mirror = mirror
        self.keep_archives = keep_archives
        self.bars = _Bars(progress)
        self.downloads = root / DOWNLOADS_DIR
        self.manifest = _Manifest(self.downloads / MANIFEST_NAME)

    def cached_path(self, res: Resource) -> Path:
        return self.downloads / res.url_path.lstrip("/")

    def obtain(self, res: Resource) -> Path:
        """The verified local copy of ``res`` in the download cache, downloading it if needed."""
        key = res.url_path
        path = self.cached_path(res)
        expected = self.manifest.expected(key)
        if path.exists():
            if expected is None:
                self.manifest.record(key, sha256_file(path), path.stat().st_size, res.url)
                return path
            if sha256_file(path) == expected:
                logger.info("%s: using the downloaded copy", res.file_name)
                return path
            aside = _move_aside(path)
            logger.warning(
                "%s: cached copy does not match its sha256 (moved to %s); downloading again",
                path,
                aside.name,
            )
        url = apply_mirror(res.url, self.mirror)
        logger.info("downloading %s", url)
        with self.bars.bar(res.file_name) as update:
            fetch(url, path, progress=update)
        digest = sha256_file(path)
        if expected is None:
            self.manifest.record(key, digest, path.stat().st_size, res.url)
            logger.info("%s: recorded sha256 %s", res.file_name, digest)
        elif digest != expected:
            _move_aside(path)
            raise DelfxError(
                f"{path}: sha256 mismatch: expected {expected}, got {digest} "
                "(delete the manifest entry to accept the new file)"
            )
        return path


def _move_aside(path: Path) -> Path:
    aside = path.with_name(path.name + ".sha256-mismatch")
    os.replace(path, aside)
    return aside


def _place(src: Path, target: Path) -> None:
    """Move ``src`` to ``target`` atomically, copying through a temporary file across devices."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, target)
    except OSError:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        src.unlink()


def _install_file(res: Resource, folder: Path, stage: _Stage) -> None:
    target = folder / res.dest
    if target.exists():
        expected = stage.manifest.expected(res.url_path)
        if expected is None or sha256_file(target) == expected:
            logger.info("%s: already present", target)
            return
        logger.warning("%s: differs from the recorded sha256; downloading again", target)
    cached = stage.obtain(res)
    _place(cached, target)
    parent = cached.parent  # drop the cache folders the moved file leaves empty
    while parent != stage.downloads and stage.downloads in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def _install_images(spec: DatasetSpec, stage: _Stage) -> None:
    folder = stage.root / spec.name
    images = folder / spec.image_dir
    staging = folder / f".{spec.image_dir}.partial"
    done_path = folder / f".{spec.image_dir}.partial.json"
    if images.is_dir():
        logger.info("%s: already present", images)
        done_path.unlink(missing_ok=True)
        return
    if images.is_symlink():
        logger.warning("%s: broken link to %s; replacing it", images, os.readlink(images))
        images.unlink()
    sibling = None
    if spec.shares_images_with:
        sibling = stage.root / spec.shares_images_with / spec.image_dir
    if sibling is not None and sibling.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        link_tmp = folder / f".{spec.image_dir}.link-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            link_tmp.unlink()
        os.symlink(os.path.relpath(sibling, folder), link_tmp, target_is_directory=True)
        os.replace(link_tmp, images)
        logger.info("%s: linked to the images of %s", images, spec.shares_images_with)
        return
    done: set[str] = set()
    if staging.is_dir() and done_path.exists():
        done = set(_load_json(done_path).get("archives", []))
    for res in spec.archives:
        if res.url_path in done:
            logger.info("%s: already extracted", res.file_name)
            continue
        archive = stage.obtain(res)
        logger.info("extracting %s into %s", archive.name, images)
        with stage.bars.bar(f"extract {res.file_name}", unit="file") as update:
            written = extract(archive, staging, res.member_map, progress=update)
        logger.info("%s: %d files", archive.name, len(written))
        done.add(res.url_path)
        atomic.write_json(done_path, {"archives": sorted(done)})
        if not stage.keep_archives:
            archive.unlink()
    staging.mkdir(parents=True, exist_ok=True)
    os.replace(staging, images)
    done_path.unlink(missing_ok=True)


def _write_marker_if_complete(spec: DatasetSpec, stage: _Stage) -> bool:
    folder = stage.root / spec.name
    if spec.archives and not (folder / spec.image_dir).is_dir():
        return False
    if any(not (folder / r.dest).is_file() for r in spec.files):
        return False
    resources = []
    for res in spec.resources:
        digest = stage.manifest.expected(res.url_path)
        if digest is None and res.kind == "file":
            digest = sha256_file(folder / res.dest)
        resources.append(
            {"url": res.url, "kind": res.kind, "part": res.part, "dest": res.dest, "sha256": digest}
        )
    images = folder / spec.image_dir
    marker = {
        "name": spec.name,
        "completed": _now(),
        "images": count_files(images) if spec.archives else 0,
        "images_linked_to": os.readlink(images) if images.is_symlink() else None,
        "size_bytes": disk_usage(folder),
        "resources": resources,
    }
    atomic.write_json(folder / MARKER_NAME, marker)
    return True


def _check_parts(only: Collection[str] | None) -> set[str] | None:
    if not only:
        return None
    parts = set(only)
    unknown = sorted(parts - set(PARTS))
    if unknown:
        raise DelfxError(f"unknown part '{unknown[0]}'; choose from: {', '.join(PARTS)}")
    return parts


def main(
    names: Sequence[str],
    root: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    keep_archives: bool = True,
    progress: bool = True,
    only: Collection[str] | None = None,
) -> Path:
    """Download catalogue datasets into ``root``; datasets already complete are left alone.

    Args:
        names: dataset names from :data:`delfx.datasets.catalog.CATALOG`.
        root: the datasets root (created if missing).
        mirror: base URL replacing the scheme and host of every catalogue URL; defaults to the
            ``DELFX_DATA_MIRROR`` environment variable.
        keep_archives: keep downloaded archives in ``<root>/.downloads`` after extraction.
        progress: show tqdm progress bars.
        only: fetch only these parts (``images``, ``gnd``, ``list``, ``db``); the dataset is
            marked complete once all its parts are there.

    Returns:
        ``root``.

    Raises:
        DelfxError: unknown name or part, a failed download, an unsafe archive, or a sha256
            mismatch with the manifest.
    """
    specs = [get_spec(n) for n in dict.fromkeys(names)]
    parts = _check_parts(only)
    root = Path(root)
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    apply_mirror("/", mirror)  # rejects a malformed mirror before any work
    root.mkdir(parents=True, exist_ok=True)
    stage = _Stage(root, mirror, keep_archives, progress)
    with stage.bars.redirect_logs():
        for spec in specs:
            _install_dataset(spec, stage, parts)
    return root


def _install_dataset(spec: DatasetSpec, stage: _Stage, parts: set[str] | None) -> None:
    folder = stage.root / spec.name
    if (folder / MARKER_NAME).exists():
        logger.info("%s: already present in %s", spec.name, folder)
        return
    wanted = [r for r in spec.resources if parts is None or r.part in parts]
    if not wanted:
        logger.warning("%s: has none of the parts %s", spec.name, ", ".join(sorted(parts or ())))
        return
    # Small files first: a moved or changed ground truth shows up before hours of images.
    for res in wanted:
        if res.kind == "file":
            _install_file(res, folder, stage)
    if any(r.kind == "archive" for r in wanted):
        _install_images(spec, stage)
    if _write_marker_if_complete(spec, stage):
        logger.info("%s: complete in %s", spec.name, folder)
    else:
        done = ", ".join(sorted({r.part for r in wanted}))
        logger.info("%s: fetched %s; other parts still missing", spec.name, done)

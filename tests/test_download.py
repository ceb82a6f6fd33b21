"""The download stage against a local HTTP server serving small fake archives."""

from __future__ import annotations

import functools
import io
import json
import pickle
import shutil
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from delfx import download, inventory
from delfx.datasets.catalog import CATALOG, dataset_names
from delfx.datasets.revisited import RetrievalDataset
from delfx.errors import DelfxError
from delfx.io.http import fetch

OXFORD = "/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"
PARIS_1 = "/~vgg/data/parisbuildings/paris_1-v1.tgz"
PARIS_2 = "/~vgg/data/parisbuildings/paris_2-v1.tgz"
ROX_GND = "/revisitop/data/datasets/roxford5k/gnd_roxford5k.pkl"
RPA_GND = "/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl"
OX_GND = "/cnnimageretrieval/data/test/oxford5k/gnd_oxford5k.pkl"
SFM = "/cnnimageretrieval/data/train"


class FakeServer:
    """A threaded HTTP server on 127.0.0.1 serving ``files`` with Range support."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_first: dict[str, int] = {}
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start, status = 0, 200
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_first.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def jpeg(color: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (color, 255 - color, 40)).save(buf, format="JPEG")
    return buf.getvalue()


def tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gnd(imlist: list[str], qimlist: list[str], old: bool = False) -> bytes:
    entry = {"bbx": [1.0, 1.0, 10.0, 9.0], "junk": [2]}
    entry.update({"ok": [0, 1]} if old else {"easy": [0], "hard": [1]})
    return pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": [entry]}, protocol=2)


OX_NAMES = ["all_souls_000001", "all_souls_000002", "radcliffe_camera_000003"]


@pytest.fixture
def server():
    srv = FakeServer()
    ox_members = {f"oxbuild_images/{n}.jpg": jpeg(i * 60) for i, n in enumerate(OX_NAMES)}
    ox_members["oxbuild_images/README.txt"] = b"not an image"
    srv.files[OXFORD] = tgz(ox_members)
    srv.files[ROX_GND] = gnd(OX_NAMES, ["all_souls_000001"])
    srv.files[OX_GND] = gnd(OX_NAMES, ["all_souls_000001"], old=True)
    srv.files[PARIS_1] = tgz({"paris/defense/paris_defense_000000.jpg": jpeg(10)})
    srv.files[PARIS_2] = tgz(
        {
            "paris/eiffel/paris_eiffel_000001.jpg": jpeg(20),
            "paris/eiffel/paris_eiffel_000002.jpg": jpeg(30),
        }
    )
    srv.files[RPA_GND] = gnd(
        ["paris_defense_000000", "paris_eiffel_000001", "paris_eiffel_000002"],
        ["paris_defense_000000"],
    )
    yield srv
    srv.close()


def run(server: FakeServer, root: Path, *names: str, **kw) -> Path:
    return download.main(list(names), root, mirror=server.url, progress=False, **kw)


def test_roxford5k_full_download(server, tmp_path):
    root = run(server, tmp_path / "data", "roxford5k")
    folder = root / "roxford5k"
    assert sorted(p.name for p in (folder / "jpg").iterdir()) == [f"{n}.jpg" for n in OX_NAMES]
    assert (folder / "gnd_roxford5k.pkl").read_bytes() == server.files[ROX_GND]
    ds = RetrievalDataset(root, "roxford5k")
    assert len(ds) == 3 and ds.queries == ["all_souls_000001"]
    assert ds.load_query(0).shape == (8, 9, 3)
    manifest = json.loads((root / ".downloads" / "manifest.json").read_text())
    assert set(manifest["files"]) == {OXFORD, ROX_GND}
    marker = json.loads((folder / ".delfx-complete.json").read_text())
    assert marker["images"] == 3
    assert all(r["sha256"] for r in marker["resources"])
    assert not list(folder.glob(".*partial*"))
    assert (root / ".downloads" / OXFORD.lstrip("/")).read_bytes() == server.files[OXFORD]


def test_resume_after_cut_connection(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch", functools.partial(fetch, backoff=0))
    server.cut_first[OXFORD] = 200
    root = run(server, tmp_path, "roxford5k")
    ranges = [r for p, r in server.requests if p == OXFORD]
    assert ranges == [None, "bytes=200-"]
    assert (root / ".downloads" / OXFORD.lstrip("/")).read_bytes() == server.files[OXFORD]
    assert len(list((root / "roxford5k" / "jpg").iterdir())) == 3


def test_fetch_restarts_when_server_ignores_range(server, tmp_path):
    dest = tmp_path / "x.pkl"
    (tmp_path / "x.pkl.part").write_bytes(b"garbage-prefix")
    server.ignore_range = True
    fetch(server.url + ROX_GND, dest, backoff=0)
    assert dest.read_bytes() == server.files[ROX_GND]
    assert not (tmp_path / "x.pkl.part").exists()


def test_fetch_resumes_existing_part(server, tmp_path):
    data = server.files[OXFORD]
    (tmp_path / "a.tgz.part").write_bytes(data[:50])
    seen = []
    fetch(server.url + OXFORD, tmp_path / "a.tgz", progress=lambda d, t: seen.append((d, t)))
    assert (tmp_path / "a.tgz").read_bytes() == data
    assert server.requests[-1][1] == "bytes=50-"
    assert seen[0] == (50, len(data)) and seen[-1] == (len(data), len(data))


def test_fetch_complete_part_gets_416(server, tmp_path):
    (tmp_path / "g.pkl.part").write_bytes(server.files[ROX_GND])
    fetch(server.url + ROX_GND, tmp_path / "g.pkl")
    assert (tmp_path / "g.pkl").read_bytes() == server.files[ROX_GND]


def test_fetch_404_is_one_line(server, tmp_path):
    url = server.url + "/missing.tgz"
    with pytest.raises(DelfxError) as err:
        fetch(url, tmp_path / "m.tgz")
    assert str(err.value) == f"{url}: HTTP 404 Not Found"
    assert not (tmp_path / "m.tgz").exists()


def test_fetch_gives_up_after_retries(server, tmp_path):
    url = "http://127.0.0.1:9/nothing"  # discard port: connection refused
    with pytest.raises(DelfxError, match="failed after 1 retries"):
        fetch(url, tmp_path / "n", retries=1, backoff=0, timeout=2)


def test_checksum_mismatch_on_second_download(server, tmp_path):
    root = run(server, tmp_path, "roxford5k")
    folder = root / "roxford5k"
    manifest_before = (root / ".downloads" / "manifest.json").read_text()
    (folder / ".delfx-complete.json").unlink()
    (folder / "gnd_roxford5k.pkl").unlink()
    server.files[ROX_GND] = gnd(OX_NAMES[:2], ["all_souls_000002"])
    with pytest.raises(DelfxError) as err:
        run(server, root, "roxford5k")
    msg = str(err.value)
    assert "\n" not in msg and "gnd_roxford5k.pkl: sha256 mismatch: expected" in msg
    assert "delete the manifest entry" in msg
    cached = root / ".downloads" / ROX_GND.lstrip("/")
    assert not cached.exists() and not cached.with_name(cached.name + ".part").exists()
    assert cached.with_name(cached.name + ".sha256-mismatch").exists()
    assert not (folder / "gnd_roxford5k.pkl").exists()
    assert not (folder / ".delfx-complete.json").exists()
    assert (root / ".downloads" / "manifest.json").read_text() == manifest_before


def test_second_run_makes_no_requests(server, tmp_path, caplog):
    root = run(server, tmp_path, "roxford5k")
    n = len(server.requests)
    caplog.set_level("INFO", logger="delfx")
    run(server, root, "roxford5k")
    assert len(server.requests) == n
    assert "roxford5k: already present" in caplog.text


def test_sibling_reuses_images_by_symlink(server, tmp_path):
    root = run(server, tmp_path, "roxford5k")
    before = len(server.requests)
    run(server, root, "oxford5k")
    assert [p for p, _ in server.requests[before:]] == [OX_GND]
    jpg = root / "oxford5k" / "jpg"
    assert jpg.is_symlink() and str(jpg.readlink()) == "../roxford5k/jpg"
    ds = RetrievalDataset(root, "oxford5k")
    assert ds.protocols == ("old",) and len(ds) == 3


def test_cached_archive_is_not_downloaded_again(server, tmp_path):
    root = run(server, tmp_path, "roxford5k")
    (root / "roxford5k" / ".delfx-complete.json").unlink()
    shutil.rmtree(root / "roxford5k" / "jpg")
    before = len(server.requests)
    run(server, root, "roxford5k")
    assert len(server.requests) == before
    assert len(list((root / "roxford5k" / "jpg").iterdir())) == 3


def test_rparis6k_two_archives_and_no_keep(server, tmp_path):
    root = run(server, tmp_path, "rparis6k", keep_archives=False)
    names = sorted(p.name for p in (root / "rparis6k" / "jpg").iterdir())
    assert names == [
        "paris_defense_000000.jpg",
        "paris_eiffel_000001.jpg",
        "paris_eiffel_000002.jpg",
    ]
    assert not (root / ".downloads" / PARIS_1.lstrip("/")).exists()
    assert RetrievalDataset(root, "rparis6k").queries == ["paris_defense_000000"]


def test_only_gnd_then_rest(server, tmp_path):
    root = run(server, tmp_path, "roxford5k", only=["gnd"])
    folder = root / "roxford5k"
    assert (folder / "gnd_roxford5k.pkl").exists() and not (folder / "jpg").exists()
    assert not (folder / ".delfx-complete.json").exists()
    assert [p for p, _ in server.requests] == [ROX_GND]
    run(server, root, "roxford5k")
    assert (folder / ".delfx-complete.json").exists()
    assert [p for p, _ in server.requests] == [ROX_GND, OXFORD]


def test_retrieval_sfm_keeps_cid_tree(server, tmp_path):
    cid = "00000000efcdab"
    server.files[f"{SFM}/ims/ims.tar.gz"] = tgz({f"ims/ab/cd/ef/{cid}": b"img", "ims/README": b"x"})
    db = pickle.dumps({"train": {"cids": [cid]}, "val": {"cids": []}}, protocol=2)
    server.files[f"{SFM}/dbs/retrieval-SfM-120k.pkl"] = db
    server.files[f"{SFM}/dbs/retrieval-SfM-120k-whiten.pkl"] = pickle.dumps({"cids": [cid]})
    root = run(server, tmp_path, "retrieval-SfM-120k")
    folder = root / "retrieval-SfM-120k"
    assert (folder / "ims" / "ab" / "cd" / "ef" / cid).read_bytes() == b"img"
    assert (folder / "retrieval-SfM-120k.pkl").read_bytes() == db
    assert (folder / "retrieval-SfM-120k-whiten.pkl").exists()
    row = {r["name"]: r for r in inventory.list_datasets(root)}["retrieval-SfM-120k"]
    assert row["status"] == "complete" and row["images"] == 1 and row["gnd"] is None


def test_revisitop1m_hundred_archives(server, tmp_path):
    base = "/revisitop/revisitop1m"
    for i in range(1, 101):
        server.files[f"{base}/jpg/revisitop1m.{i}.tar.gz"] = tgz({f"jpg/r1m_{i:03d}.jpg": b"j"})
    server.files[f"{base}/revisitop1m.txt"] = b"jpg/r1m_001.jpg\n"
    root = run(server, tmp_path, "revisitop1m")
    assert len(list((root / "revisitop1m" / "jpg").iterdir())) == 100
    assert (root / "revisitop1m" / "revisitop1m.txt").exists()


def test_unsafe_archive_is_refused(server, tmp_path):
    server.files[OXFORD] = tgz({"oxbuild_images/a.jpg": b"a", "../../evil.jpg": b"x"})
    with pytest.raises(DelfxError, match="contains '..'"):
        run(server, tmp_path / "data", "roxford5k")
    assert not (tmp_path / "evil.jpg").exists()
    assert not (tmp_path / "data" / "roxford5k" / "jpg").exists()
    assert not (tmp_path / "data" / "roxford5k" / ".delfx-complete.json").exists()


def test_mirror_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, server.url)
    download.main(["roxford5k"], tmp_path, progress=False, only=["gnd"])
    assert (tmp_path / "roxford5k" / "gnd_roxford5k.pkl").exists()


def test_apply_mirror():
    url = "http://cmp.felk.cvut.cz/revisitop/data/x.pkl"
    assert (
        download.apply_mirror(url, "http://127.0.0.1:8123")
        == "http://127.0.0.1:8123/revisitop/data/x.pkl"
    )
    assert (
        download.apply_mirror(url, "https://m.org/pub/") == "https://m.org/pub/revisitop/data/x.pkl"
    )
    assert download.apply_mirror(url, None) == url
    with pytest.raises(DelfxError, match="mirror"):
        download.apply_mirror(url, "ftp://x")


def test_unknown_name_and_part(tmp_path):
    with pytest.raises(DelfxError, match="unknown dataset 'nope'; choose from: roxford5k"):
        download.main(["nope"], tmp_path, progress=False)
    with pytest.raises(DelfxError, match="unknown part"):
        download.main(["roxford5k"], tmp_path, progress=False, only=["pics"])
    assert not list(tmp_path.iterdir())


def test_list_datasets(server, tmp_path):
    root = run(server, tmp_path, "roxford5k")
    run(server, root, "rparis6k", only=["gnd"])
    rows = {r["name"]: r for r in inventory.list_datasets(root)}
    assert list(rows) == dataset_names() == list(CATALOG)
    assert rows["roxford5k"]["status"] == "complete"
    assert rows["roxford5k"]["images"] == 3 and rows["roxford5k"]["gnd"] is True
    assert rows["roxford5k"]["size_bytes"] > 0
    assert rows["rparis6k"]["status"] == "partial" and rows["rparis6k"]["images"] == 0
    assert rows["oxford5k"]["status"] == "absent" and rows["oxford5k"]["gnd"] is False
    assert rows["revisitop1m"]["gnd"] is None


def test_cli_handlers_without_full_parser(server, tmp_path, capsys):
    import argparse

    from delfx.cli import data_download

    parser = argparse.ArgumentParser()
    data_download.register(parser.add_subparsers())
    root = str(tmp_path)
    args = parser.parse_args(
        ["download", "roxford5k", "--root", root, "--mirror", server.url, "-q"]
    )
    assert args.func(args) == 0
    args = parser.parse_args(["list", "--root", root])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "roxford5k" in out and "complete" in out


def _cli_available() -> bool:
    try:
        from delfx.cli import data_groups, data_synth  # noqa: F401
    except ImportError:
        return False
    return True


cli = pytest.mark.skipif(not _cli_available(), reason="delfx data subcommands not all present yet")


@cli
def test_cli_download_and_list(server, tmp_path, capsys):
    from delfx.cli import main

    root = str(tmp_path / "data")
    assert (
        main(["data", "download", "roxford5k", "--root", root, "--mirror", server.url, "-q"]) == 0
    )
    assert (tmp_path / "data" / "roxford5k" / ".delfx-complete.json").exists()
    capsys.readouterr()
    assert main(["data", "list", "--root", root]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "STATUS", "IMAGES", "GND", "SIZE"]
    rox = next(line for line in out if line.startswith("roxford5k"))
    assert rox.split()[1:4] == ["complete", "3", "yes"]
    assert any(line.startswith("revisitop1m") and "absent" in line for line in out)


@cli
def test_cli_unknown_name(tmp_path, capsys):
    from delfx.cli import main

    assert main(["data", "download", "nope", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("delfx: error: unknown dataset 'nope'")

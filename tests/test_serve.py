"""The HTTP API over a collection, through FastAPI's TestClient (no socket, no internet)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import delfx
from delfx import engine

fastapi = pytest.importorskip("fastapi")  # the serve extra; part of the dev extra
from fastapi.testclient import TestClient  # noqa: E402

from delfx.serve.app import create_app  # noqa: E402
from tests.conftest import free_port, start_server  # noqa: E402

SAMPLES = Path(delfx.__file__).resolve().parent / "samples"
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _group(name: str) -> list[Path]:
    return sorted((SAMPLES / "groups" / name).glob("*.jpg"))


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    """A sift-asmk collection of 6 sample places (all views) and the distractors."""
    tmp = tmp_path_factory.mktemp("serve")
    photos = tmp / "photos"
    for g in sorted(p for p in (SAMPLES / "groups").iterdir() if p.is_dir())[:6]:
        shutil.copytree(g, photos / g.name, ignore=shutil.ignore_patterns("*.json", "*.txt"))
    shutil.copytree(SAMPLES / "distractors", photos / "distractors")
    spec = engine.named("sift-asmk", index={"n_words": 256})
    engine.create(spec, tmp / "c", photos, workers=1, progress=False)
    app = create_app(tmp / "c", token=TOKEN, max_upload=2_000_000)
    with TestClient(app) as c:
        c.folder = tmp / "c"  # type: ignore[attr-defined]
        c.n = len(list(photos.rglob("*.jpg")))  # type: ignore[attr-defined]
        yield c


def _jpeg(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/jpeg")


def test_health_stats_docs(client):
    assert client.get("/healthz").json() == {"status": "ok", "images": client.n}
    stats = client.get("/api/stats").json()
    assert stats["images"] == client.n and stats["pipeline"] == "sift-asmk"
    assert stats["index_memory_bytes"] > 0
    assert client.get("/docs").status_code == 200
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_search_by_upload_and_by_name(client):
    views = _group("berlin_cathedral")
    r = client.post("/api/search", files={"image": _jpeg(views[0])}, data={"k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    names = [x["name"] for x in body["results"]]
    assert names[0] == "berlin_cathedral/01.jpg" and len(names) == 3
    assert body["results"][0]["inliers"] >= 100
    assert {"extract", "search", "verify", "total"} <= set(body["timings_ms"])
    assert client.get(body["results"][1]["thumbnail"]).headers["content-type"] == "image/jpeg"
    # paging: offset 1 continues the same ranking
    r2 = client.post(
        "/api/search", files={"image": _jpeg(views[0])}, data={"k": "2", "offset": "1"}
    )
    assert [x["name"] for x in r2.json()["results"]] == names[1:3]
    assert r2.json()["results"][0]["rank"] == 2
    by_name = client.get("/api/search", params={"name": "berlin_cathedral/01.jpg", "k": 3}).json()
    assert [x["name"] for x in by_name["results"]] == names
    # a box: the query's left half still finds the photo
    w, h = Image.open(views[0]).size
    r3 = client.post(
        "/api/search", files={"image": _jpeg(views[0])}, data={"k": "1", "box": f"0,0,{w // 2},{h}"}
    )
    assert r3.json()["results"][0]["name"] == "berlin_cathedral/01.jpg"


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("files", "data", "status"),
    [
        ({"image": ("notes.jpg", b"this is not an image", "image/jpeg")}, {}, 415),
        ({"image": ("bomb.png", _bomb(), "image/png")}, {}, 413),
        ({"image": ("big.jpg", b"\xff" * 2_000_001, "image/jpeg")}, {}, 413),
        (None, {"k": "3"}, 400),  # no image: FastAPI's validation, as JSON
        ("photo", {"k": "0"}, 400),
        ("photo", {"k": "1001"}, 400),
        ("photo", {"box": "10,10,5,5"}, 400),
        ("photo", {"offset": "-1"}, 400),
    ],
)
def test_search_errors(client, files, data, status):
    if files == "photo":
        files = {"image": _jpeg(_group("berlin_cathedral")[1])}
    r = client.post("/api/search", files=files, data=data)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and "Traceback" not in r.text


def test_unknown_names_are_404(client):
    for url in (
        "/api/search?name=nope.jpg",
        "/api/images/nope.jpg",
        "/api/images/nope.jpg/thumbnail",
        "/api/matches?query=nope.jpg&name=berlin_cathedral/01.jpg",
    ):
        r = client.get(url)
        assert r.status_code == 404, url
        assert "error" in r.json()


def test_image_and_matches(client):
    r = client.get("/api/images/berlin_cathedral/02.jpg")
    assert r.status_code == 200
    assert r.content == (SAMPLES / "groups" / "berlin_cathedral" / "02.jpg").read_bytes()
    thumb = Image.open(
        io.BytesIO(client.get("/api/images/berlin_cathedral/02.jpg/thumbnail").content)
    )
    assert max(thumb.size) == 256
    m = client.get(
        "/api/matches",
        params={"query": "berlin_cathedral/01.jpg", "name": "berlin_cathedral/02.jpg"},
    ).json()
    assert m["inliers"] >= 12 and len(m["matches"]) >= m["inliers"]
    x0, y0, x1, y1 = np.asarray(m["matches"]).T
    qw, qh = m["query"]["size"]
    assert 0 <= x0.min() and x0.max() <= qw and 0 <= y0.min() and y0.max() <= qh


def test_traversal_names_are_refused(client, tmp_path):
    photo = _group("sacre_coeur")[0]
    outside = client.folder.parent / "evil.jpg"  # type: ignore[attr-defined]
    for name in ("../evil.jpg", "/tmp/evil.jpg", "a/../../evil.jpg", ".hidden.jpg", "x\\y.jpg"):
        r = client.post(
            "/api/images", files={"images": _jpeg(photo)}, data={"names": name}, headers=AUTH
        )
        assert r.status_code == 400, (name, r.text)
    assert not outside.exists() and not Path("/tmp/evil.jpg").exists()
    for url in ("/api/images/../../etc/passwd.jpg", "/api/images/%2e%2e/photos/x.jpg"):
        assert client.get(url).status_code in (400, 404)


def test_add_search_remove(client):
    photo = _group("sacre_coeur")[0]
    files = {"images": _jpeg(photo)}
    # a write without the token, or with a wrong one
    assert client.post("/api/images", files=files).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.post("/api/images", files=files, headers=bad).status_code == 401
    assert client.delete("/api/images/distractors/opencv_home.jpg").status_code == 401
    # a non-image upload is refused before anything is written
    r = client.post(
        "/api/images", files={"images": ("x.jpg", b"GIF89a nonsense", "image/jpeg")}, headers=AUTH
    )
    assert r.status_code == 415
    r = client.post("/api/images", files=files, data={"names": "new/sc.jpg"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"added": ["new/sc.jpg"]}
    assert client.get("/healthz").json()["images"] == client.n + 1
    hits = client.post("/api/search", files={"image": _jpeg(photo)}, data={"k": "1"}).json()
    assert hits["results"][0]["name"] == "new/sc.jpg"
    assert client.get("/api/images/new/sc.jpg").content == photo.read_bytes()
    # the same name again: 409; with replace: fine
    again = client.post("/api/images", files=files, data={"names": "new/sc.jpg"}, headers=AUTH)
    assert again.status_code == 409
    r = client.post(
        "/api/images", files=files, data={"names": "new/sc.jpg", "replace": "true"}, headers=AUTH
    )
    assert r.status_code == 200 and client.get("/healthz").json()["images"] == client.n + 1
    # removal: gone at once, a second removal is 404
    assert client.delete("/api/images/new/sc.jpg", headers=AUTH).status_code == 200
    assert client.delete("/api/images/new/sc.jpg", headers=AUTH).status_code == 404
    hits = client.post(
        "/api/search", files={"image": _jpeg(photo)}, data={"k": str(client.n)}
    ).json()
    assert "new/sc.jpg" not in [x["name"] for x in hits["results"]]
    assert client.get("/api/search", params={"name": "new/sc.jpg"}).status_code == 404


def test_sigkill_during_add_loses_nothing(client, tmp_path):
    """The real server on 127.0.0.1, killed with SIGKILL while an add of several photos is
    being written; restarted, it serves the collection as it was, and adds again."""
    import signal
    import threading
    import time

    import httpx

    folder = tmp_path / "c"
    shutil.copytree(client.folder, folder)  # type: ignore[attr-defined]
    port = free_port()
    proc, health = start_server(folder, port, TOKEN)
    try:
        before = (folder / "collection.json").read_bytes()
        photos = [p for g in ("sagrada_familia", "st_pauls_cathedral") for p in _group(g)]
        files = [
            ("images", (f"k{i}.jpg", p.read_bytes(), "image/jpeg")) for i, p in enumerate(photos)
        ]
        url = f"http://127.0.0.1:{port}/api/images"
        thread = threading.Thread(
            target=lambda: _quiet(lambda: httpx.post(url, files=files, headers=AUTH, timeout=60))
        )
        thread.start()
        present = {p.name for p in folder.iterdir()}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the add has started writing its new shard
            new = {p.name for p in folder.iterdir()} - present
            if any("features-" in n for n in new):
                break
            time.sleep(0.005)
        assert thread.is_alive(), "the add finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        thread.join()
        assert (folder / "collection.json").read_bytes() == before
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, again = start_server(folder, port, TOKEN)
    try:
        assert again == health
        r = httpx.post(url, files=files[:1], headers=AUTH, timeout=60)
        assert r.status_code == 200 and r.json() == {"added": ["k0.jpg"]}
        assert (
            httpx.get(f"http://127.0.0.1:{port}/healthz").json()["images"] == health["images"] + 1
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _quiet(fn) -> None:
    import httpx

    try:
        fn()
    except httpx.HTTPError:
        pass  # the server was killed under the request


def test_page_and_upload_matches(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # works offline: no script, style or image from another host
    assert "<script" in page.text and 'src="http' not in page.text and 'href="http' not in page.text
    views = _group("berlin_cathedral")
    m = client.post(
        "/api/matches", files={"image": _jpeg(views[0])}, data={"name": "berlin_cathedral/02.jpg"}
    ).json()
    by_name = client.get(
        "/api/matches",
        params={"query": "berlin_cathedral/01.jpg", "name": "berlin_cathedral/02.jpg"},
    ).json()
    assert m["inliers"] == by_name["inliers"] >= 12  # the upload is described as it was indexed
    r = client.post("/api/matches", files={"image": _jpeg(views[0])}, data={"name": "nope.jpg"})
    assert r.status_code == 404

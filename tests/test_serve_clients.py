"""The real server (``delfx serve`` on 127.0.0.1) beside a slow client and one that leaves
mid-upload: the others are served meanwhile, and nothing is added or left behind."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, start_server

httpx = pytest.importorskip("httpx")

TOKEN = "slow-client-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(kill_inputs: Path, tmp_path: Path):
    folder = tmp_path / "c"
    shutil.copytree(kill_inputs / "inputs" / "collection", folder)
    port = free_port()
    proc, health = start_server(folder, port, TOKEN)
    yield f"http://127.0.0.1:{port}", port, folder, health
    proc.kill()
    proc.wait(30)


def _search(url: str, photo: Path) -> list[str]:
    r = httpx.post(f"{url}/api/search", files={"image": (photo.name, photo.read_bytes())},
                   data={"k": "3"}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    return [h["name"] for h in r.json()["results"]]


def test_a_slow_client_does_not_hold_up_the_others(server, kill_inputs: Path) -> None:
    url, port, _, health = server
    query = kill_inputs / "inputs" / "queries" / "q0.jpg"
    first = _search(url, query)
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        served = []
        for i, byte in enumerate(request.encode()):  # one byte every 20 ms: about a second
            slow.sendall(bytes([byte]))
            if i % 8 == 0:
                served.append(_search(url, query))  # others meanwhile: answered, and the same
            time.sleep(0.02)
        reply = b""
        while chunk := slow.recv(4096):
            reply += chunk
    assert len(served) >= 8 and all(s == first for s in served)
    assert reply.startswith(b"HTTP/1.1 200") and b'"images":%d' % health["images"] in reply


def test_a_client_that_leaves_mid_upload_adds_nothing(server, kill_inputs: Path) -> None:
    url, port, folder, health = server
    before = (folder / "collection.json").read_bytes()
    photo = (kill_inputs / "inputs" / "more" / "opencv_home.jpg").read_bytes()
    boundary = "delfxboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; "
            f"filename=\"left.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + photo + (
            f"\r\n--{boundary}--\r\n").encode()  # fmt: skip
    head = (f"POST /api/images HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()  # fmt: skip
    for cut in (0, len(body) // 2, len(body) - 8):  # no body, half the photo, all but the end
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(head + body[:cut])
            time.sleep(0.3)
        # the server is still there, unchanged, and has left no upload folder behind
        assert httpx.get(f"{url}/healthz", timeout=30).json() == health
        assert (folder / "collection.json").read_bytes() == before
        assert not list(folder.glob(".upload-*")) and not (folder / "uploads").exists()
    r = httpx.post(f"{url}/api/images", files={"images": ("left.jpg", photo)}, headers=AUTH,
                   timeout=120)  # fmt: skip
    assert r.status_code == 200 and r.json() == {"added": ["left.jpg"]}
    assert httpx.get(f"{url}/healthz", timeout=30).json()["images"] == health["images"] + 1
    assert (folder / "uploads" / "left.jpg").read_bytes() == photo

"""The search service under load: the real ``delfx serve`` on 127.0.0.1, driven over HTTP.

Builds a collection of ``--limit`` photos (default: the realviews photos beside the repository,
else the shipped samples; ``sift-asmk``), starts the server, then:

1. one client: search by upload, search by name and add one photo, ``--single`` times each;
2. ``--clients`` concurrent clients for at most ``--seconds`` and ``--max-requests`` requests
   in all: searches by upload (60 %), by name (25 %), adds (10 %) and removals of photos the
   client added (5 %); afterwards every acknowledged add is found by name, every removal is
   gone, and the image count is the start plus adds minus removals (no loss, no duplicate);
3. the server's resident memory at rest, beside the index's size.

Only loopback is used. Run: ``.venv/bin/python benchmarks/serve_load.py [--seconds 300]``
"""

from __future__ import annotations

import argparse
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from delfx import engine
from delfx.engine.photos import photo_jobs

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "delfx" / "samples"
REALVIEWS = REPO.parent / "shared" / "data" / "realviews"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def _row(label: str, ms: list[float]) -> str:
    return (f"| {label} | {len(ms)} | {_pct(ms, 0.5):.0f} | {_pct(ms, 0.95):.0f} | "
            f"{_pct(ms, 0.99):.0f} |")  # fmt: skip


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos")
    ap.add_argument("--limit", type=int, default=262)
    ap.add_argument("--single", type=int, default=20)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--max-requests", type=int, default=5000)
    args = ap.parse_args()
    src = Path(args.photos) if args.photos else (REALVIEWS if REALVIEWS.is_dir() else SAMPLES)
    jobs = photo_jobs([src], root=src)[: args.limit]
    tmp = Path(tempfile.mkdtemp())
    photos = tmp / "photos"
    for j in jobs:
        (photos / j.name).parent.mkdir(parents=True, exist_ok=True)
        (photos / j.name).write_bytes(j.path.read_bytes())
    folder = tmp / "c"
    engine.create(engine.named("sift-asmk"), folder, photos, progress=False)
    port = _port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "delfx", "serve", str(folder), "--port", str(port)],
        stdout=subprocess.DEVNULL,  # uvicorn's access log
        stderr=subprocess.DEVNULL,
    )
    try:
        _run(args, url, proc.pid, [j.name for j in jobs], [j.path.read_bytes() for j in jobs])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def _wait(url: str) -> None:
    for _ in range(600):
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def _run(args: argparse.Namespace, url: str, pid: int, names: list[str], data: list[bytes]):
    _wait(url)
    stats = httpx.get(f"{url}/api/stats").json()
    rss = _rss_mb(pid)
    print(f"{stats['images']} photos, sift-asmk, server start-up {stats['startup_s']} s")
    print(f"memory at rest: RSS {rss:.0f} MB; index {stats['index_memory_bytes'] / 2**20:.1f} MB\n")
    c = httpx.Client(timeout=120)
    rng = random.Random(0)
    up, by_name, add = [], [], []
    for i in range(args.single):
        j = rng.randrange(len(names))
        t = time.perf_counter()
        c.post(
            f"{url}/api/search",
            files={"image": ("q.jpg", data[j])},
            data={"k": "10", "verify": "20"},
        ).raise_for_status()
        up.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        c.get(f"{url}/api/search", params={"name": names[j], "verify": 20}).raise_for_status()
        by_name.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        c.post(
            f"{url}/api/images", files={"images": (f"single/{i}.jpg", data[j])}
        ).raise_for_status()
        add.append(1000 * (time.perf_counter() - t))
    print("one client | n | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    print(_row("search by upload", up))
    print(_row("search by name", by_name))
    print(_row("add one photo", add))

    base = httpx.get(f"{url}/api/stats").json()["images"]
    lock = threading.Lock()
    lat: dict[str, list[float]] = {"upload": [], "name": [], "add": [], "remove": []}
    errors: list[str] = []
    added: set[str] = set()
    removed: set[str] = set()
    budget = [args.max_requests]
    stop = time.monotonic() + args.seconds

    def client(cid: int) -> None:
        r = random.Random(cid)
        mine: list[str] = []
        with httpx.Client(timeout=120) as h:
            n = 0
            while time.monotonic() < stop:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                j, roll, t = r.randrange(len(names)), r.random(), time.perf_counter()
                try:
                    if roll < 0.60:
                        kind = "upload"
                        h.post(
                            f"{url}/api/search", files={"image": ("q.jpg", data[j])}
                        ).raise_for_status()
                    elif roll < 0.85:
                        kind = "name"
                        h.get(f"{url}/api/search", params={"name": names[j]}).raise_for_status()
                    elif roll < 0.95 or not mine:
                        kind, name = "add", f"load/{cid}/{n}.jpg"
                        h.post(
                            f"{url}/api/images", files={"images": (name, data[j])}
                        ).raise_for_status()
                        mine.append(name)
                        with lock:
                            added.add(name)
                    else:
                        kind, name = "remove", mine.pop(r.randrange(len(mine)))
                        h.delete(f"{url}/api/images/{name}").raise_for_status()
                        with lock:
                            removed.add(name)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{kind}: {exc}")
                    continue
                with lock:
                    lat[kind].append(1000 * (time.perf_counter() - t))
                n += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    total = sum(len(v) for v in lat.values())
    print(f"\n{args.clients} clients, {wall:.0f} s, {total} requests "
          f"({total / wall:.1f}/s), {len(errors)} errors")  # fmt: skip
    print("| request | n | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for kind, ms in lat.items():
        print(_row(kind, ms))
    final = httpx.get(f"{url}/api/stats").json()["images"]
    live = added - removed
    lost = [
        n
        for n in live
        if httpx.get(f"{url}/api/search", params={"name": n, "k": 1}).status_code != 200
    ]
    back = [
        n for n in removed if httpx.get(f"{url}/api/search", params={"name": n}).status_code != 404
    ]
    ok = final == base + len(live) and not lost and not back
    print(f"\nimages: {base} + {len(added)} added - {len(removed)} removed = {base + len(live)}; "
          f"server has {final}; lost {len(lost)}, removed but present {len(back)}: "
          f"{'OK' if ok else 'MISMATCH'}")  # fmt: skip
    for e in errors[:5]:
        print("error:", e)
    print(f"memory after load: RSS {_rss_mb(pid):.0f} MB")


if __name__ == "__main__":
    main()

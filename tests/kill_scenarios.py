"""The writing commands that ``tests/killpoints.py`` kills, each on small prepared data.

:func:`scenarios` builds the shared inputs once under ``base/inputs`` (shrunk sample photos, a
``sift-asmk`` collection, query features, a training root) and returns one
:class:`~tests.killpoints.Scenario` per command: ``extract sift``, ``index create|add|remove|
compact``, ``train global``, ``pipeline``, and the service's add and remove.

A collection's state is what a search sees: its live (and stored) names, and the whole ranking
(names, scores, inliers) of three stored queries. A feature file's is a digest of each image's
arrays; a training run's, a digest of each epoch's checkpoint and log row.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import SAMPLES, copy_small, free_port, training_root
from tests.killpoints import Scenario, State, clean_env, delfx_command, run_command

#: The places of the collection (14 photos) and the photos an add brings.
PLACES = ("admiralty_arch", "berlin_cathedral", "leuven_street", "lund_street_a", "pasta_box",
          "sagrada_familia")  # fmt: skip
ADDED = ("opencv_building.jpg", "opencv_home.jpg", "utbm_road_0001.jpg")
REMOVED = ("pasta_box/01.jpg", "leuven_street/02.jpg")
TOKEN = "kill-points-token"
SIDE = 400  # photos shrunk to this longer side: the same data path, a few times faster


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
    return h.hexdigest()[:16]


def _shrunk(src: Path, dst: Path, side: int = SIDE) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        im.save(dst, quality=92)


def _logged(work: Path) -> Path:
    return work.parent / f"{work.name}.log"


# ----------------------------------------------------------------------------- states


def features_state(path: Path) -> State:
    """Each image of a feature file: a digest of its arrays (``{}`` for no file)."""
    from delfx.io.featurestore import FeatureReader

    if not path.exists():
        return {}
    with FeatureReader(path) as r:
        out = {}
        for name in r.names():
            f = r.get(name)
            out[name] = _digest(f.keypoints, f.scales, f.orientations, f.scores,
                                f.descriptors, np.asarray(f.image_size))  # fmt: skip
        return out


def collection_state(folder: Path, queries: Path) -> State:
    """Live and stored names, and the full ranking of each stored query (``{}``: none)."""
    from delfx import engine
    from delfx.engine.extractor import Described
    from delfx.io.featurestore import FeatureReader

    if not (folder / "collection.json").exists():
        return {}
    out = {}
    with engine.Searcher.open(folder) as s, FeatureReader(queries) as q:
        out["live"] = _digest(sorted(n for n, ok in zip(s.names, s.live, strict=True) if ok))
        out["stored"] = _digest(s.names)  # removed ones too, until a compaction drops them
        for name in q.names():
            hits = s.query_features(Described(q.get(name), None), top=None, verify=5).hits
            out[f"query {name}"] = _digest([(h.name, repr(h.score), h.inliers) for h in hits])
    return out


def service_state(folder: Path, queries: Path) -> State:
    """The collection as a restarted server opens it, and the photo files it serves."""
    from delfx.serve.library import UPLOADS, Library

    if (folder / "collection.json").exists():
        Library(folder)  # what a restart does first: finish or drop a killed upload
    out = dict(collection_state(folder, queries))
    for p in sorted((folder / UPLOADS).rglob("*")):
        if p.is_file():
            out[f"upload {p.relative_to(folder / UPLOADS)}"] = _digest(p.read_bytes())
    return out


def training_state(folder: Path) -> State:
    """Each epoch's checkpoint (every ``.pth`` that holds it must agree) and log row."""
    import torch

    out: dict[str, str] = {}
    for ckpt in sorted(folder.glob("*/*.pth")):
        c = torch.load(ckpt, weights_only=True)
        sd = c["state_dict"]
        d = _digest(*(sd[k].numpy() for k in sorted(sd)), c["extra"]["loss"])
        key = f"{ckpt.parent.name} epoch {c['extra']['epoch']}"
        out[key] = d if out.get(key, d) == d else f"{ckpt.name} disagrees"
    for log in sorted(folder.glob("*/log.csv")):
        for row in log.read_text().splitlines()[1:]:
            out[f"{log.parent.name} log {row.split(',')[0]}"] = _digest(row)
    return out


def _no_timings(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _no_timings(v) for k, v in obj.items() if k != "timings"}
    if isinstance(obj, list):
        return [_no_timings(v) for v in obj]
    return obj


def pipeline_state(work: Path) -> State:
    """Built datasets (every file), training epochs and results (without timings)."""
    out: dict[str, str] = {}
    for d in sorted((work / "data").glob("[!.]*")):
        files = sorted(p for p in d.rglob("*") if p.is_file())
        out[f"data {d.name}"] = _digest([(str(p.relative_to(d)), p.read_bytes()) for p in files])
    out.update(training_state(work / "run" / "models"))
    for res in sorted((work / "run").glob("results*.json")) + sorted(
        (work / "run" / "results").glob("*.json")
    ):
        out[f"results {res.name}"] = _digest(_no_timings(json.loads(res.read_text())))
    return out


# ----------------------------------------------------------------------------- inputs


def build_inputs(base: Path) -> Path:
    """Photos (and their features), a collection (and one with two removals), query features, a
    training root."""
    inputs = base / "inputs"
    if (inputs / "ready").exists():
        return inputs
    shutil.rmtree(inputs, ignore_errors=True)
    copy_small(PLACES, inputs / "photos", side=SIDE)
    for name in ADDED:
        _shrunk(SAMPLES / "distractors" / name, inputs / "more" / name)
    for i, place in enumerate(("admiralty_arch", "lund_street_a", "sagrada_familia")):
        src = sorted((SAMPLES / "groups" / place).glob("*.jpg"))[-1]
        _shrunk(src, inputs / "queries" / f"q{i}.jpg", side=320)
    env = clean_env()
    log = base / "inputs.log"

    def delfx(*args: str) -> None:
        if run_command(delfx_command(*args), inputs, env, None, log) != 0:
            raise AssertionError(f"delfx {' '.join(args)} failed; see {log}")

    delfx("extract", "sift", "--images", "queries", "--out", "queries.h5", "--workers", "1")
    delfx("extract", "sift", "--images", "photos", "--out", "photos.h5", "--workers", "1")
    delfx("index", "create", "collection", "--images", "photos", "--pipeline", "sift-asmk",
          "--codebook-size", "64", "--workers", "1", "--no-progress")  # fmt: skip
    shutil.copytree(inputs / "collection", inputs / "removed")
    delfx("index", "remove", "removed", *REMOVED)
    training_root(inputs / "train")
    (inputs / "ready").touch()
    return inputs


# ----------------------------------------------------------------------------- commands


def _cli(args: Callable[[Path], list[str]]) -> Callable[[Path, dict[str, str], float | None], int]:
    def run(work: Path, env: dict[str, str], kill_after: float | None) -> int:
        return run_command(delfx_command(*args(work)), work, env, kill_after, _logged(work))

    return run


def _copy(src: Path) -> Callable[[Path], None]:
    """Prepare a work folder with a copy of the collection ``src`` as ``c``."""

    def prepare(work: Path) -> None:
        shutil.copytree(src, work / "c")

    return prepare


def _request_when_up(
    proc: subprocess.Popen[bytes], url: str, request: Callable[[str], int]
) -> int | None:
    """Wait for the server to answer, then send ``request``; None when it died first."""
    import httpx

    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=2).raise_for_status()
            return request(url)
        except httpx.HTTPError:
            time.sleep(0.05)
    return None


def _serve(request: Callable[[str], int]) -> Callable[[Path, dict[str, str], float | None], int]:
    """Start ``delfx serve`` on 127.0.0.1, send one request, stop the server; returns the
    server's status (-9 when a kill stopped it) or 1 for a failed request."""

    def run(work: Path, env: dict[str, str], kill_after: float | None) -> int:
        port = free_port()
        cmd = delfx_command("serve", "c", "--port", str(port), "--token", TOKEN)
        with _logged(work).open("ab") as out:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=out)
        timer = threading.Timer(kill_after, proc.kill) if kill_after is not None else None
        if timer:
            timer.start()
        try:
            status = _request_when_up(proc, f"http://127.0.0.1:{port}", request)
        finally:
            if timer:
                timer.cancel()
        if status is None:  # the server died (or never answered): wait for it
            try:
                return proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
                return 1
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
            return 0 if status == 200 else 1
        return proc.returncode

    return run


def _upload(inputs: Path) -> Callable[[str], int]:
    import httpx

    def request(url: str) -> int:
        files = [("images", (n, (inputs / "more" / n).read_bytes(), "image/jpeg")) for n in ADDED]
        r = httpx.post(f"{url}/api/images", files=files, timeout=300,
                       headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        return r.status_code

    return request


def _delete(url: str) -> int:
    import httpx

    r = httpx.delete(f"{url}/api/images/{REMOVED[0]}", timeout=300,
                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    return r.status_code


def _train_args(inputs: Path) -> Callable[[Path], list[str]]:
    def args(work: Path) -> list[str]:
        flags = ["train", "global", "m", "--root", str(inputs / "train" / "data"),
                 "--training-dataset", "views", "--test-datasets", "tinytest",
                 "--arch", "resnet18", "--pool", "gem", "--neg-num", "2", "--query-size", "8",
                 "--pool-size", "12", "--batch-size", "2", "--image-size", "64",
                 "--test-image-size", "64", "--epochs", "2", "--lr", "1e-4",
                 "--pretrained", "none", "--workers", "1"]  # fmt: skip
        last = sorted((work / "m").glob("*/model_last.pth"))
        return [*flags, "--resume", str(last[0])] if last else flags

    return args


MINI_EXPERIMENT = """\
root: data
work: run
device: cpu
data:
  - {kind: training, name: mtrain, groups: samples, places: even, size: 96}
  - {kind: groups, name: mtest, groups: samples, places: odd, size: 160}
finetune: {training-dataset: mtrain, test-datasets: mtest, arch: resnet18, pool: gem,
           lr: 1.0e-5, neg-num: 2, query-size: 6, pool-size: 10, batch-size: 2,
           image-size: 64, test-image-size: 96, epochs: 2, pretrained: none}
evaluate: {datasets: [mtest], codebook-from: database, codebook-size: 64,
           pipelines: [global-gem, sift-asmk]}
"""


def scenarios(base: Path) -> list[Scenario]:
    """Every scenario, on inputs built (once) under ``base``."""
    inputs = build_inputs(base)
    queries = inputs / "queries.h5"
    coll = lambda work: collection_state(work / "c", queries)  # noqa: E731
    train = _train_args(inputs)
    return [
        Scenario("extract sift", lambda w: None,
                 _cli(lambda w: ["extract", "sift", "--images", str(inputs / "photos"),
                                 "--out", "f.h5", "--workers", "1"]),
                 lambda w: features_state(w / "f.h5"), partial=True),
        Scenario("index create", lambda w: None,
                 _cli(lambda w: ["index", "create", "c", "--images", str(inputs / "photos"),
                                 "--pipeline", "sift-asmk", "--codebook-size", "64",
                                 "--workers", "1", "--no-progress"]), coll),
        Scenario("index add", _copy(inputs / "collection"),
                 _cli(lambda w: ["index", "add", "c", "--images", str(inputs / "more"),
                                 "--workers", "1", "--no-progress"]), coll),
        Scenario("index remove", _copy(inputs / "collection"),
                 _cli(lambda w: ["index", "remove", "c", *REMOVED]), coll,
                 time_fractions=(0.5, 0.9)),
        Scenario("index compact", _copy(inputs / "removed"),
                 _cli(lambda w: ["index", "compact", "c", "--no-progress"]), coll),
        Scenario("train global", lambda w: None, _cli(train),
                 lambda w: training_state(w / "m"), partial=True),
        Scenario("pipeline", lambda w: (w / "mini.yaml").write_text(MINI_EXPERIMENT),
                 _cli(lambda w: ["pipeline", "mini.yaml"]), pipeline_state, partial=True,
                 collapse=True),
        Scenario("serve add", _copy(inputs / "collection"), _serve(_upload(inputs)),
                 lambda w: service_state(w / "c", queries), time_fractions=(0.8, 0.9, 0.95)),
        Scenario("serve remove", _copy(inputs / "collection"), _serve(_delete),
                 lambda w: service_state(w / "c", queries), time_fractions=(0.9,)),
    ]  # fmt: skip

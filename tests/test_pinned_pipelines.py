"""Pinned results of every named pipeline of ``delfx run``, so a rewrite of its internals can be
checked to give the same numbers.

Each case runs ``delfx run PIPELINE ...`` (through :func:`delfx.cli.main`) on the synthetic
benchmark ``tiny`` built from the shipped sample photos (``synth_root``, conftest.py: 6 queries,
30 database images) and compares what the results JSON reports with
``tests/data/pinned_pipelines.json``: the method name, and per protocol (easy, medium, hard) the
mAP and the mP@[1, 5, 10], rounded to 2 decimals, compared exactly. The results JSON holds no
ranked lists (nor per-query APs), so these figures are what is pinned.

The settings are small enough for a CPU: the index sizes of ``SMALL``, a random-weight
ResNet18 (``--pretrained none``, drawn with seed 0 by the extractors) at 96-128 px for the
global descriptor and the DELF features (L2-norm attention, one scale, 100 features). The
codebooks are trained on the database (``--codebook-from database``, as tests/test_run.py does)
or, for the DELF pipelines whose PCA needs independent images (and one SIFT case), on
``indep``: the shipped places and distractors that ``tiny`` does not use. One work folder serves
the whole module, so a stage shared by several cases (features, an index) is computed once, as
``delfx run`` caches it; the module takes about 35 s on 2 busy cores.

Regenerate the pins (after a change that is *meant* to move the numbers; say why in the
commit) with::

    DELFX_REPIN=1 python -m pytest tests/test_pinned_pipelines.py

which runs every case and rewrites the JSON instead of comparing (its ``source`` field records
``DELFX_REPIN_SOURCE`` when set, else the git commit of the checkout, ``-dirty`` when ``src/``
has uncommitted changes). A case whose flags differ from the ones recorded fails with a
request to re-pin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from delfx import build_groups
from delfx.cli import main as cli_main
from delfx.global_options import GLOBAL_PIPELINES
from delfx.run_presets import PIPELINES
from tests.conftest import SAMPLES, SYNTH_PLACES

PINS = Path(__file__).parent / "data" / "pinned_pipelines.json"
REPIN = os.environ.get("DELFX_REPIN", "") not in ("", "0")

SMALL = ["--codebook-size", "256", "--tree-branch", "4", "--tree-height", "3", "--no-progress"]
#: A random-weight ResNet18, for the global descriptor and the DELF features alike.
NET = ["--model", "resnet18", "--pretrained", "none", "--image-size", "96"]
DELF = ["--attention", "l2", "--scales", "1", "--delf-image-size", "128", "--feature-num", "100"]
DB = ["--codebook-from", "database"]
INDEP = ["--codebook-from", "{indep}"]  # ROOT:NAME of the independent dataset
SV = ["--rerank-num", "20"]

#: case id -> (pipeline, flags); ``{indep}`` is replaced by the independent dataset.
CASES: dict[str, tuple[str, list[str]]] = {
    "sift-asmk": ("sift-asmk", [*DB]),
    "sift-asmk+sv20": ("sift-asmk", [*DB, *SV]),
    "sift-asmk-indep+sv20": ("sift-asmk", [*INDEP, *SV]),
    "sift-he": ("sift-he", [*DB]),
    "sift-he+sv20": ("sift-he", [*DB, *SV]),
    "sift-voctree": ("sift-voctree", [*DB]),
    "sift-voctree+sv20": ("sift-voctree", [*DB, *SV]),
    # the seed pipelines train on the database by default: no --codebook-from
    "sift-voctree-seed": ("sift-voctree-seed", []),
    "sift-voctree-seed+sv20": ("sift-voctree-seed", [*SV]),
    "global-gem": ("global-gem", [*NET]),
    "global-gem-whiten+dba1+aqe2": ("global-gem-whiten", [*NET, "--qe", "2", "--dba", "1"]),
    "global+sift-sv": ("global+sift-sv", [*NET]),  # its own shortlist of 20
    "global+sift-sv+sv5": ("global+sift-sv", [*NET, "--rerank-num", "5"]),
    "global+sift-asmk": ("global+sift-asmk", [*NET, *DB]),
    "global+sift-asmk+sv20": ("global+sift-asmk", [*NET, *DB, *SV]),
    "delf-voctree-seed": ("delf-voctree-seed", [*NET, *DELF]),
    "delf-voctree-seed+sv20": ("delf-voctree-seed", [*NET, *DELF, *SV]),
    "delf-asmk": ("delf-asmk", [*NET, *DELF, *INDEP]),
    "delf-asmk+sv20": ("delf-asmk", [*NET, *DELF, *INDEP, *SV]),
    "global+local+sv20": ("global+local", [*NET, *DELF, *INDEP, *SV]),
    "global+asmk": ("global+asmk", [*NET, *DELF, *INDEP]),
    "global+asmk+sv20": ("global+asmk", [*NET, *DELF, *INDEP, *SV]),
}


def test_every_named_pipeline_is_pinned():
    """Adding a named pipeline means adding a case (and re-pinning)."""
    pinned = {pipeline for pipeline, _ in CASES.values()}
    assert pinned == set(PIPELINES) | set(GLOBAL_PIPELINES)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these tiny images gain nothing from more, and on a busy CPU the
    networks run 20 times slower with two (the figures are the same either way)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def indep(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``ROOT:NAME`` of ``indep``: the shipped places and distractors that ``tiny`` leaves out
    (13 places, 7 distractors), as a groups benchmark; its database trains codebooks and PCAs."""
    base = tmp_path_factory.mktemp("indep")
    groups, distractors = base / "groups", base / "distractors"
    for place in sorted(p for p in (SAMPLES / "groups").iterdir() if p.is_dir()):
        if place.name not in SYNTH_PLACES:
            shutil.copytree(place, groups / place.name)
    distractors.mkdir()
    for f in sorted((SAMPLES / "distractors").glob("*.jpg"))[6:]:  # tiny has the first 6
        shutil.copyfile(f, distractors / f.name)
    conf = build_groups.GroupsConfig(progress=False)
    build_groups.main(conf, groups, base / "root", "indep", distractors_dir=distractors)
    return f"{base / 'root'}:indep"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One work folder for every case: shared stages are computed once."""
    return tmp_path_factory.mktemp("pinned_work")


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _figures(res: dict[str, Any]) -> dict[str, Any]:
    """What a case pins, from its results JSON."""
    protocols = res["protocols"]
    return {
        "method": res["method"],
        "mAP": {p: _rounded(v["mAP"]) for p, v in protocols.items()},
        "mP@k": {p: [_rounded(x) for x in v["mP@k"]] for p, v in protocols.items()},
    }


def _source() -> str:
    if os.environ.get("DELFX_REPIN_SOURCE"):
        return os.environ["DELFX_REPIN_SOURCE"]
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, check=True
        ).stdout.decode()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.strip() + ("-dirty" if dirty.strip() else "")


def _write_pin(case: str, record: dict[str, Any]) -> None:
    """Replace one case in the pins file (cases kept in :data:`CASES` order)."""
    data = json.loads(PINS.read_text()) if PINS.is_file() else {}
    cases = data.get("cases", {})
    cases[case] = record
    data = {
        "about": (
            "Results of `delfx run` on the samples-built synthetic benchmark; see "
            "tests/test_pinned_pipelines.py (DELFX_REPIN=1 regenerates this file)."
        ),
        "source": _source(),
        "kappas": [1, 5, 10],
        "cases": {c: cases[c] for c in CASES if c in cases},
    }
    PINS.parent.mkdir(parents=True, exist_ok=True)
    PINS.write_text(json.dumps(data, indent=1) + "\n")


@pytest.mark.parametrize("case", list(CASES))
def test_pinned_results(case: str, synth_root: Path, work: Path, indep: str) -> None:
    pipeline, flags = CASES[case]
    out = work / f"res-{case}.json"
    argv = ["run", pipeline, "--root", str(synth_root), "--dataset", "tiny", "--work", str(work)]
    argv += ["--output", str(out), *[f.replace("{indep}", indep) for f in flags]]
    argv += SMALL if pipeline in PIPELINES else ["--no-progress"]
    assert cli_main(argv) == 0
    res = json.loads(out.read_text())
    assert res["kappas"] == [1, 5, 10]
    record = {"pipeline": pipeline, "flags": flags, **_figures(res)}
    if REPIN:
        _write_pin(case, record)
        return
    assert PINS.is_file(), f"{PINS} missing: run with DELFX_REPIN=1 to record it"
    pinned = json.loads(PINS.read_text())["cases"].get(case)
    assert pinned is not None, f"case {case} is not pinned: run with DELFX_REPIN=1"
    assert (pinned["pipeline"], pinned["flags"]) == (pipeline, flags), (
        f"case {case} changed its flags since it was pinned: re-pin with DELFX_REPIN=1"
    )
    assert record == pinned

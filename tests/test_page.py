"""The web page in a real browser: headless Chromium (Python Playwright) against the real server.

Chromium comes from the system (``apt-get install -y chromium``; ``.ci/run`` installs it), never
from ``playwright install``. Without it the test skips, unless ``DELFX_REQUIRE_BROWSER=1`` (set
by CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from delfx import engine
from tests.conftest import free_port, start_server
from tests.test_serve import SAMPLES, TOKEN, _group

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_ENV = "DELFX_SCREENSHOT"  # also save the screenshot there (the README's)


def _browser_or_skip() -> None:
    pytest.importorskip("playwright")
    if not CHROMIUM.is_file():
        if os.environ.get("DELFX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium)")


def test_page_search_matches_add(tmp_path):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    photos = tmp_path / "photos"
    places = sorted(p for p in (SAMPLES / "groups").iterdir() if p.is_dir())[:6]
    for g in places:
        views = sorted(g.glob("*.jpg"))
        (photos / g.name).mkdir(parents=True)
        for v in views[1:]:  # each place's first view is a query, not indexed
            shutil.copyfile(v, photos / g.name / v.name)
    shutil.copytree(SAMPLES / "distractors", photos / "distractors")
    engine.create(engine.named("sift-asmk", index={"n_words": 256}), tmp_path / "c", photos,
                  workers=1, progress=False)  # fmt: skip
    query = _group("berlin_cathedral")[0]
    others = {f"berlin_cathedral/{v.name}" for v in _group("berlin_cathedral")[1:]}
    new_photo = _group("sacre_coeur")[0]

    port = free_port()
    proc, _ = start_server(tmp_path / "c", port, TOKEN)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#stats:has-text('photos')")
            # search by upload: the place's other photos come first
            page.set_input_files("#file", str(query))
            page.wait_for_selector("#status:has-text('results in')")
            names = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.name)")
            assert set(names[: len(others)]) == others
            # the match view of the first result
            page.click(".card img >> nth=0")
            page.wait_for_selector("#matchview", state="visible")
            title = page.inner_text("#matchtitle")
            assert title.startswith(names[0]) and int(title.split(": ")[1].split()[0]) >= 12
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get(SCREENSHOT_ENV):
                shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
            # add a photo (with the token), then find it by uploading it
            page.fill("#token", TOKEN)
            page.set_input_files("#addfiles", str(new_photo))
            page.click("#addbtn")
            page.wait_for_selector(f"#status:has-text('added {new_photo.name}')")
            page.set_input_files("#file", str(new_photo))
            page.wait_for_selector("#status:has-text('results in')")
            first = page.eval_on_selector(".card", "c => c.dataset.name")
            assert first == new_photo.name
            # "search with this image" puts the query in the URL: a shareable page
            page.click(".card .again >> nth=0")
            page.wait_for_url(f"**/?q={new_photo.name}*")
            page.goto(page.url)
            page.wait_for_selector("#status:has-text('results in')")
            assert page.eval_on_selector(".card", "c => c.dataset.name") == new_photo.name
            browser.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

"""The demo page in headless Chromium: pick the bundled photo, see boxes and ages.

Needs Debian's /usr/bin/chromium and the playwright package (no downloaded browser). Set
AGELENS_UPDATE_SCREENSHOT=1 to refresh docs/serve_screenshot.png; otherwise the screenshot goes to a temp folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from importlib import resources
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("AGELENS_CHROMIUM", "/usr/bin/chromium")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_screenshot.png"


@pytest.fixture(scope="module")
def server_url():
    import uvicorn

    from agelens.serve.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:  # the lifespan loads the models and warms up first
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_page_shows_boxes_and_ages(server_url, tmp_path):
    photo = resources.files("agelens") / "assets" / "astronaut.jpg"
    with resources.as_file(photo) as path, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server_url)
            page.set_input_files("#file", str(path))
            page.wait_for_selector("td.age", timeout=60_000)
            ages = [float(t) for t in page.locator("td.age").all_text_contents()]
            models = page.locator("td.model").all_text_contents()
            status = page.locator("#status").text_content() or ""
            canvas = page.evaluate("[document.getElementById('canvas').width, document.getElementById('canvas').height]")
            shot = tmp_path / "serve_screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert ages and all(1 <= a <= 100 for a in ages)
    assert set(models) <= {"teacher", "student"} and models
    assert "face" in status and not status.startswith("Error"), status
    assert canvas == [512, 512]
    assert shot.stat().st_size > 10_000
    if os.environ.get("AGELENS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)


def test_page_reports_errors(server_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server_url)
            page.set_input_files("#file", files=[{"name": "broken.jpg", "mimeType": "image/jpeg",
                                                  "buffer": b"\xff\xd8 definitely not a jpeg"}])
            page.wait_for_selector("#status.error", timeout=30_000)
            text = page.locator("#status").text_content() or ""
        finally:
            browser.close()
    assert text.startswith("Error 422") and "not a recognised image format" in text

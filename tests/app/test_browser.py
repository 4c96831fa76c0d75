"""The dashboard end to end in headless Chromium: `workbench app` serves it, the page loads the default teacher,
builds a student with one layer replaced, starts a tiny CPU run whose loss curve gains points, and opens the
matrix view of the trained student. Screenshots go to $WORKBENCH_SCREENSHOTS (default: the test's tmp folder)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "workbench app exited early"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


@pytest.fixture
def server(tmp_path):
    port, root = free_port(), tmp_path / "runs"
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--port", str(port), "--runs-root", str(root)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        yield f"http://127.0.0.1:{port}/", root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fill(page, css: str, value) -> None:
    box = page.locator(f"{css} input")
    box.fill(str(value))
    box.press("Enter")


def loss_points(page) -> int:
    """Steps drawn on the loss curves: the longest trace (one trace per stage and loss term)."""
    plot = page.locator(".loss-curves .js-plotly-plot")
    if plot.count() == 0:
        return 0
    return plot.first.evaluate("el => Math.max(0, ...(el.data || []).map(t => (t.x || []).length))")


def test_dashboard_in_a_real_browser(server, shots):
    url, root = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(url)
            # Teacher: the default (SmolLM2-135M) loads in the app process
            page.get_by_role("button", name="Load teacher").click()
            page.locator(".teacher-info").wait_for()
            page.screenshot(path=str(shots / "1-teacher.png"), full_page=True)

            # Student: keep every layer's attention, then click layer 15 on the strip to replace it
            page.get_by_text("Student", exact=True).click()
            page.get_by_role("button", name="Keep all attention").click()
            page.get_by_text("attention kept (30)").wait_for()
            page.locator(".layer-strip").get_by_role("button", name="15", exact=True).click()
            page.get_by_role("button", name="Build student").click()
            page.locator(".param-counts").get_by_text("mixers (1 layers)").wait_for()
            page.screenshot(path=str(shots / "2-student.png"), full_page=True)

            # Runs: a 3-step CPU run of 1 x 32 tokens, evaluated at its start and end on 64 tokens
            page.set_viewport_size({"width": 1400, "height": 2000})
            page.get_by_text("Runs", exact=True).click()
            for css, value in [(".budget-tokens", 96), (".batch-size", 1), (".seq-len", 32), (".eval-every", 3),
                               (".eval-tokens", 64), (".final-eval-tokens", 65), (".run-name", "browser-run")]:
                fill(page, css, value)
            page.get_by_text("≈ 3 optimiser steps").wait_for()
            page.get_by_role("button", name="Start run").click()
            page.get_by_text("Started browser-run").wait_for()
            deadline = time.time() + 90
            points = []
            while time.time() < deadline and (not points or points[-1] < 3):
                points.append(loss_points(page))
                time.sleep(0.5)
            assert points[0] == 0 and points[-1] == 3, points   # the curve gained its points while the page watched
            assert points == sorted(points)
            page.locator(".run-stats").get_by_text("finished").wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "3-runs.png"), full_page=True)
            assert (root / "browser-run" / "summary.json").is_file()

            # Inspect: the trained student's mixing matrix next to the teacher's attention
            page.get_by_text("Inspect", exact=True).click()
            page.locator(".inspect-source select").select_option("browser-run")
            page.get_by_role("button", name="Load student").click()
            page.get_by_text("Loaded: run browser-run at step 3").wait_for()
            page.get_by_role("button", name="Show matrices").click()
            page.locator(".matrix-view .js-plotly-plot .heatmaplayer").first.wait_for()
            page.locator(".matrix-view").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "4-inspect.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()

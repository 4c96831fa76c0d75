"""The dashboard end to end in headless Chromium: `workbench app` serves it; the page loads the default teacher and
builds a student of it, then loads a tiny local teacher, refuses a bad number in the Runs form, starts two CPU runs
(one stopped and resumed from the page), ticks both to overlay their curves and final numbers, selects a run by
clicking its row, opens the matrix view and a seeded sampled generation of a trained student, and after a reload
finds the Teacher and Student choices again. Every tab is photographed at 1024 and 1400 px wide into
$WORKBENCH_SCREENSHOTS (default: the test's tmp folder)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from workbench.app.inspect_panel import DEFAULT_PROMPT
from workbench.app.teacher_panel import DEVICES

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")]
WIDTHS = (1024, 1400)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Until ``url`` answers. Each request may take seconds (every page is a new session): one at a time, with a
    generous timeout, so that retries do not pile sessions onto a busy server."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "workbench app exited early"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def wait_until(condition, timeout: float = 120.0, every: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"not reached in {timeout} s")


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
        stop_runs(root)


def stop_runs(root: Path) -> None:
    """End the runs the page left running: each LOCK names a child the app started, leading its process group."""
    for lock in root.glob("*/LOCK"):
        text = lock.read_text().strip()
        if text.isdigit():
            try:
                os.killpg(int(text), signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fill(page, css: str, value) -> None:
    box = page.locator(f"{css} input")
    box.fill(str(value))
    box.press("Enter")


def open_tab(page, name: str) -> None:
    page.locator(".bk-tab").filter(has_text=re.compile(f"^{re.escape(name)}$")).click()


TO_TOP = "() => document.querySelectorAll('*').forEach(e => { e.scrollTop = 0; })"   # every scrolled box
CONTENT_HEIGHT = "() => Math.max(...[...document.querySelectorAll('*')].map(e => e.getBoundingClientRect().bottom))"


def photograph(page, shots: Path, name: str) -> None:
    """The page at each of WIDTHS, the window as tall as its content (the template scrolls inside the page, so a
    "full page" screenshot alone would stop at the window), then back at the widest and 1000 px."""
    page.evaluate(TO_TOP)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(700)   # the layout and the plots settle at the new width
        height = min(int(page.evaluate(CONTENT_HEIGHT)) + 60, 8000)
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / f"dashboard-{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": WIDTHS[-1], "height": 1000})


def options(page, css: str) -> list[str]:
    """The options of the select inside ``css``, once it is on the page."""
    page.locator(f"{css} select").wait_for(state="attached")
    return page.locator(f"{css} select option").all_inner_texts()


def plot_data(page, css: str, script: str):
    """``script`` (a function of the plotly element) on the first plot inside ``css``; None while it has none."""
    plot = page.locator(f"{css} .js-plotly-plot")
    return plot.first.evaluate(script) if plot.count() else None


def loss_points(page) -> int:
    """Steps drawn on the selected run's loss curves: the longest trace (one per stage and loss term)."""
    return plot_data(page, ".loss-curves", "el => Math.max(0, ...(el.data || []).map(t => (t.x || []).length))") or 0


def table_row(page, css: str, run: str):
    return page.locator(f"{css} .tabulator-row").filter(has=page.locator(".tabulator-cell", has_text=re.compile(
        f"^{re.escape(run)}$")))


def test_dashboard_in_a_real_browser(server, shots, tiny_teacher_dir):
    url, root = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(url)
            # Teacher: the default (SmolLM2-135M) loads in the app process; only this machine's devices are offered
            assert options(page, ".teacher-device") == DEVICES
            page.get_by_role("button", name="Load teacher").click()
            page.locator(".teacher-info").wait_for()
            photograph(page, shots, "1-teacher")

            # Student: keep every layer's attention, then click layer 15 on the strip to replace it
            open_tab(page, "Student")
            page.get_by_role("button", name="Keep all attention").click()
            page.get_by_text("attention kept (30)").wait_for()
            page.locator(".layer-strip").get_by_role("button", name="15", exact=True).click()
            page.get_by_role("button", name="Build student").click()
            page.locator(".param-counts").get_by_text("mixers (1 layers)").wait_for()
            photograph(page, shots, "2-student")

            # a tiny local teacher for the runs, on the CPU; the Student tab replaces its layer 1
            open_tab(page, "Teacher")
            fill(page, ".teacher-source", tiny_teacher_dir)
            page.locator(".teacher-device select").select_option("cpu")
            page.get_by_role("button", name="Load teacher").click()
            page.get_by_text(f"Loaded {tiny_teacher_dir}.").wait_for()
            open_tab(page, "Student")
            page.get_by_text("attention kept (0)").wait_for()   # two layers, both replaced by default
            page.locator(".layer-strip").get_by_role("button", name="0", exact=True).click()
            page.get_by_text("attention kept (1)").wait_for()

            # Runs: the form says what it will train and refuses a bad number with a message
            open_tab(page, "Runs")
            page.locator(".student-spec").get_by_text("layer 1", exact=False).wait_for()
            assert options(page, ".device") == DEVICES
            fill(page, ".batch-size", 0)
            page.locator(".form-errors").get_by_text("must be at least 1 (got 0)").wait_for()
            page.get_by_role("button", name="Start run").click()
            page.locator(".run-message").get_by_text("fix the form first").wait_for()

            # run-a: 3 steps of 1 x 32 tokens, evaluated at its start and end; its curve gains points as it runs
            for css, value in [(".budget-tokens", 96), (".batch-size", 1), (".seq-len", 32), (".eval-every", 3),
                               (".eval-tokens", 64), (".final-eval-tokens", 65), (".run-name", "run-a")]:
                fill(page, css, value)
            page.get_by_text("≈ 3 optimiser steps").wait_for()
            assert page.locator(".form-errors").is_hidden()
            page.get_by_role("button", name="Start run").click()
            page.get_by_text("Started run-a").wait_for()
            points = [loss_points(page)]
            while points[-1] < 3:
                time.sleep(0.3)
                points.append(loss_points(page))
                assert len(points) < 400, points
            assert points[0] == 0 and points == sorted(points)   # the curve gained its points while the page watched
            page.locator(".run-stats").get_by_text("finished").wait_for()

            # run-b: longer, checkpointed every 4 steps; stopped from the page after a checkpoint, then resumed
            for css, value in [(".budget-tokens", 48 * 32), (".eval-every", 16), (".checkpoint-every", 4),
                               (".run-name", "run-b")]:
                fill(page, css, value)
            page.get_by_text("≈ 48 optimiser steps").wait_for()
            page.get_by_role("button", name="Start run").click()
            page.get_by_text("Started run-b").wait_for()
            wait_until(lambda: (root / "run-b" / "checkpoints" / "latest.json").is_file())
            page.get_by_role("button", name="Stop").click()
            page.locator(".run-stats").get_by_text("status stopped").wait_for()
            page.get_by_role("button", name="Resume").click()
            page.locator(".run-stats").get_by_text("finished").wait_for(timeout=300_000)
            assert (root / "run-a" / "summary.json").is_file() and (root / "run-b" / "summary.json").is_file()
            notes = "el => el.layout.annotations.map(a => a.text)"
            assert any("resumed" in note for note in plot_data(page, ".loss-curves", notes))   # run-b on its own

            # tick both rows: their curves overlaid, run-b's resume marked, their final numbers in a table
            for run in ("run-a", "run-b"):
                table_row(page, ".runs-table", run).locator("input[type=checkbox]").click()
            open_tab(page, "Compare ticked runs")
            names = "el => (el.data || []).map(t => t.name)"
            wait_until(lambda: len(plot_data(page, ".compare-losses", names) or []) >= 2)
            assert {name.split(" · ")[0] for name in plot_data(page, ".compare-losses", names)} == {"run-a", "run-b"}
            assert "resumed (run-b)" in plot_data(page, ".compare-losses", notes)
            for run in ("run-a", "run-b"):
                table_row(page, ".compare-rows", run).wait_for()
            page.locator(".compare-x").get_by_role("button", name="by training tokens").click()
            wait_until(lambda: plot_data(page, ".compare-evals", "el => el.layout.xaxis3.title.text")
                       == "training tokens")
            photograph(page, shots, "3-runs-compare")

            # the table sorts by a column's header (twice: descending), and a click on a row's cell, sorted or
            # not, shows that run alone
            ratios = {run: float(table_row(page, ".runs-table", run).locator(
                ".tabulator-cell[tabulator-field='held-out ratio']").inner_text()) for run in ("run-a", "run-b")}
            header = page.locator(".runs-table .tabulator-col[tabulator-field='held-out ratio'] .tabulator-col-title")
            header.click()
            header.click()
            first = page.locator(".runs-table .tabulator-row").first.locator(".tabulator-cell[tabulator-field='run']")
            wait_until(lambda: first.inner_text() == max(ratios, key=ratios.get))
            for run in ("run-b", "run-a"):
                table_row(page, ".runs-table", run).locator(".tabulator-cell[tabulator-field='mixer']").click()
                page.locator(".run-select select").wait_for()
                wait_until(lambda run=run: page.locator(".run-select select").input_value() == run)
                page.locator(".run-stats").get_by_text(run).first.wait_for()
            page.locator(".loss-curves .js-plotly-plot").wait_for()
            photograph(page, shots, "4-runs-selected")

            # Inspect: no chart before the first click; the trained student's matrix with tokens; a seeded sample
            open_tab(page, "Inspect")
            page.locator(".inspect-source select").select_option("run-a")
            page.get_by_role("button", name="Load student").click()
            page.get_by_text("Loaded: run run-a at step 3").wait_for()
            assert page.locator(".matrix-view .js-plotly-plot").count() == 0
            page.get_by_role("button", name="Show matrices").click()
            page.locator(".matrix-view .js-plotly-plot .heatmaplayer").first.wait_for()
            hover = plot_data(page, ".matrix-view", "el => [el.data[0].customdata.length, el.data[0].hovertemplate]")
            assert hover[0] == 64 and "customdata[0]" in hover[1]
            page.get_by_role("button", name="Compare on valid text").click()
            page.locator(".compare-table").get_by_text("computed now").wait_for()
            page.locator(".decoding").get_by_role("button", name="sample").click()
            fill(page, ".seed", 3)
            page.get_by_role("button", name="Generate").click()
            page.locator(".student-text").get_by_text("seed 3").wait_for()
            page.locator(".student-text").get_by_text(DEFAULT_PROMPT, exact=True).wait_for()   # as typed: plain text
            photograph(page, shots, "5-inspect")

            # a reload keeps the Teacher and Student choices (and the open tab); the runs come from their folders
            page.reload()
            page.locator(".inspect-source select").wait_for()
            open_tab(page, "Teacher")
            assert page.locator(".teacher-source input").input_value() == tiny_teacher_dir
            page.locator(".teacher-info").wait_for()   # the app process holds that teacher: shown loaded
            open_tab(page, "Student")
            page.get_by_text("attention kept (1)").wait_for()
        except Exception:
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()

"""Notebooks as they are executed (nbclient, what ``jupyter nbconvert --execute`` uses) and exported to HTML: a live
cell ends holding one figure, redrawn in place to the run's last event, and the exported HTML keeps every figure.

A small notebook whose run writes events while the cell redraws is fast; notebook 03 itself (the real MOHAWK run in
smoke mode, a few minutes on a 2-core CPU) is marked slow. Where Chromium is installed, the exported HTML is also
opened in it (plotly.js served from this plotly's own copy instead of the CDN) and every figure must draw.
"""

import json
import shutil
import sys
import textwrap
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from tests.helpers.scripts import benchmark_script
from workbench.tutorial import notebook_kernel
from workbench.viz.notebook import PLOTLY_MIMETYPE

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LIVE_CALL = "run_with_live_curves("
CHROMIUM = shutil.which("chromium")


def test_the_notebook_kernel_is_this_interpreter():
    """The notebooks' "python3" kernel starts this interpreter's ipykernel, whatever ``python`` is on the PATH."""
    spec = notebook_kernel().kernel_spec
    assert spec.argv[0] == sys.executable and spec.argv[1:3] == ["-m", "ipykernel_launcher"], spec.argv


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int) -> nbformat.NotebookNode:
    """Execute ``nb`` in place with nbclient, in a kernel of this interpreter started in ``cwd``."""
    NotebookClient(nb, km=notebook_kernel(), timeout=timeout, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def figures(cell) -> list:
    """The outputs of a code cell that are plotly figures."""
    return [o for o in cell.outputs if PLOTLY_MIMETYPE in o.get("data", {})]


def figure_of(output) -> go.Figure:
    return go.Figure(output["data"][PLOTLY_MIMETYPE])


def exported_plots(html: str) -> list[dict]:
    """Every ``Plotly.newPlot(id, data, layout, config)`` call in an exported HTML file: {"id", "data", "layout"}."""
    decoder, plots, at = json.JSONDecoder(), [], 0
    while (at := html.find("Plotly.newPlot(", at)) >= 0:
        at += len("Plotly.newPlot(")
        values = []
        for _ in range(3):
            while html[at] in " \n,":
                at += 1
            value, at = decoder.raw_decode(html, at)
            values.append(value)
        plots.append(dict(zip(("id", "data", "layout"), values)))
    return plots


def check_export(nb: nbformat.NotebookNode, out: Path) -> str:
    """Export ``nb`` to HTML (``jupyter nbconvert --to html``'s exporter) and check every figure output is in it,
    with its data; returns the HTML."""
    html, _ = HTMLExporter().from_notebook_node(nb)
    out.write_text(html, encoding="utf-8")
    shown = [o for cell in nb.cells if cell.cell_type == "code" for o in figures(cell)]
    plots = exported_plots(html)
    assert len(plots) == len(shown) > 0
    assert html.count('class="plotly-graph-div"') == len(shown)
    assert 'src="https://cdn.plot.ly/plotly-' in html
    for output, plot in zip(shown, plots):
        assert plot["data"] == output["data"][PLOTLY_MIMETYPE]["data"]
    return html


def check_drawn_in_browser(path: Path, count: int) -> None:
    """Open the exported file in headless Chromium and wait until ``count`` figures have drawn (an SVG each)."""
    from playwright.sync_api import sync_playwright
    from plotly.offline import get_plotlyjs

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.route("https://cdn.plot.ly/**", lambda route: route.fulfill(
            status=200, content_type="application/javascript", body=get_plotlyjs()))
        page.route(lambda url: not url.startswith(("file:", "https://cdn.plot.ly/")), lambda route: route.abort())
        page.goto(path.as_uri())
        page.wait_for_function(f"document.querySelectorAll('.plotly-graph-div .main-svg').length >= {count}",
                               timeout=30_000)
        browser.close()
    assert not [e for e in errors if "Plotly" in e], errors


LIVE_NOTEBOOK = textwrap.dedent('''
    import time
    from pathlib import Path

    from workbench.distill.events import EventLog
    from workbench.live import run_with_live_curves


    class Run:
        """Writes twelve steps, one every 50 ms, as a distillation run writes its event stream."""

        out = Path("run")

        def execute(self):
            log = EventLog(self.out / "events.jsonl", fsync=False)
            for step in range(1, 13):
                log.append("step", step=step, stage="kd", loss=1.0 / step, lr=1e-3, grad_norm=2.0, tokens=16)
                time.sleep(0.05)
            return {"steps": 12}


    summary = run_with_live_curves(Run(), every=0.1)
''')


def test_live_cell_ends_with_one_figure_and_export_keeps_figures(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(LIVE_NOTEBOOK),
        nbformat.v4.new_code_cell("from workbench.viz import curves\n"
                                  "curves.loss_curves([{'type': 'step', 'step': 1, 'stage': 'kd', 'loss': 2.0}])"),
    ], metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    execute(nb, tmp_path, timeout=180)
    live, static = nb.cells
    assert len(live.outputs) == 1 and len(figures(live)) == 1   # shown before the first step, replaced in place
    fig = figure_of(live.outputs[0])
    assert list(next(t for t in fig.data if t.name == "kd · loss").x) == list(range(1, 13))
    assert [a.text for a in fig.layout.annotations if a.name == "progress label"] == ["step 12 · stage kd · running"]
    assert "text/html" in live.outputs[0]["data"]
    (output,) = figures(static)                                 # a figure a cell returns carries HTML too
    assert "plotly-graph-div" in output["data"]["text/html"]
    page = tmp_path / "live.html"
    check_export(nb, page)
    if CHROMIUM:
        check_drawn_in_browser(page, 2)


@pytest.fixture(scope="module")
def notebook_03(tmp_path_factory):
    """Notebook 03 executed in smoke mode (its runs under a temporary WORKBENCH_RUNS), and the folder to export to."""
    folder = tmp_path_factory.mktemp("notebook_03")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WORKBENCH_SMOKE", "1")
        env.setenv("WORKBENCH_RUNS", str(folder / "runs"))
        nb = execute(nbformat.read(NOTEBOOKS / "03_mohawk.ipynb", as_version=4), NOTEBOOKS, timeout=900)
    return nb, folder


def _live_cell(nb):
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and LIVE_CALL in c.source]
    return cell


@pytest.mark.slow
def test_notebook_03_live_cell_ends_with_one_figure(notebook_03):
    live = _live_cell(notebook_03[0])
    shown = figures(live)
    kinds = [(o.output_type, sorted(o.get("data", {}))) for o in live.outputs]
    assert len(shown) == 1, kinds                               # redrawn in place, never added to
    assert live.outputs[-1] is shown[0], f"outputs after the live figure (a progress bar the run's model loading " \
                                         f"showed although the run has progress=False?): {kinds}"


@pytest.mark.slow
def test_notebook_03_live_figure_holds_the_finished_run(notebook_03):
    (shown,) = figures(_live_cell(notebook_03[0]))
    fig = figure_of(shown)
    (label,) = [a.text for a in fig.layout.annotations if a.name == "progress label"]
    assert label.startswith("step 6 of 6 (100 %)") and label.endswith("done")     # smoke: 3 stages x 2 steps
    stages = {t.name.split(" · ")[0] for t in fig.data if t.name and " · loss" in t.name}
    assert stages == {"matrix-orientation", "hidden-alignment", "knowledge-distillation"}
    assert [t.name for t in fig.data if t.name and t.name.endswith("learning rate")]
    assert [t.name for t in fig.data if t.name and t.name.endswith("gradient norm")]


@pytest.mark.slow
def test_notebook_03_html_export_keeps_its_figures(notebook_03):
    nb, folder = notebook_03
    page = folder / "03_mohawk.html"
    check_export(nb, page)
    if CHROMIUM:
        check_drawn_in_browser(page, len(exported_plots(page.read_text(encoding="utf-8"))))


# ---- the notebook runner (benchmarks/notebooks.py) ---------------------------------------------------------------
def _runner():
    return benchmark_script("notebooks", "notebook_runner")


def _notebook(path: Path, *sources: str) -> Path:
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources], metadata={
        "kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}), path)
    return path


def test_runner_rows_say_what_failed(tmp_path):
    """A notebook passes only when every cell ran and every figure holds data; rows name the failing cell and the
    cells of empty figures, and the results file lists the rows by notebook."""
    runner = _runner()
    figure = "import plotly.graph_objects as go\n"
    good = runner.run_notebook(_notebook(tmp_path / "good.ipynb", figure + "go.Figure(go.Scatter(y=[1, 2]))",
                                         "x = 1"), timeout=120, executed=tmp_path / "done")
    assert good["passed"] and good["figures"] == 1 and good["error"] is None and good["cells"] == 2
    assert (tmp_path / "done" / "good.ipynb").is_file()
    empty = runner.run_notebook(_notebook(tmp_path / "empty.ipynb", figure + "go.Figure(go.Scatter(y=[1]))",
                                          "go.Figure()"), timeout=120, executed=None)
    assert not empty["passed"] and empty["figures"] == 2 and empty["empty_figure_cells"] == [1]
    broken = runner.run_notebook(_notebook(tmp_path / "broken.ipynb", "x = 1", "1 / 0", "y = 2"), timeout=120,
                                 executed=None)
    assert not broken["passed"] and broken["error"]["cell"] == 1
    assert broken["error"]["message"].startswith("ZeroDivisionError")
    out = tmp_path / "results.json"
    runner.write(out, {"mode": "smoke"}, {"good": good, "broken": broken})
    runner.write(out, {"mode": "smoke"}, {**{r["notebook"]: r for r in json.loads(out.read_text())["notebooks"]},
                                          "empty": empty})
    assert [r["notebook"] for r in json.loads(out.read_text())["notebooks"]] == ["broken", "empty", "good"]

"""Execute the guided notebooks in a real Jupyter kernel and record, per notebook, whether it passed, its wall time
and whether its figures hold data: the check that the tutorials run on a GPU in their full mode, in minutes.

    python benchmarks/notebooks.py --json docs/results/h200-2026-12-01/notebooks.json          # all seven, full mode
    python benchmarks/notebooks.py 03_mohawk 05_scavenging_hyena --json notebooks.json         # some (rows merge)
    python benchmarks/notebooks.py --mode smoke --json /tmp/smoke.json                        # the CPU smoke mode
    python benchmarks/notebooks.py --executed out/ ...      # also keep each executed notebook, outputs included

Each notebook runs top to bottom through nbclient (what ``jupyter nbconvert --execute`` uses) in a kernel of this
interpreter started in ``notebooks/``, with ``WORKBENCH_SMOKE`` set by ``--mode`` (full: ``0``, smoke: ``1``) and the
run folders it makes in a temporary ``WORKBENCH_RUNS`` (removed afterwards unless ``--runs`` names a folder to keep
them in). A notebook passes when every cell ran without an error and every plotly figure it shows holds data (a
trace with at least one value); ``within_budget`` says whether it took at most ``--budget`` seconds (default 300,
the tutorials' aim on one GPU). Rows are written after every notebook, merged by name into ``--json`` when that file
exists, so a set of notebooks can be measured over several calls. The exit status is 1 when a notebook failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import torch
import transformers
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from workbench.device import device_name, resolve_device
from workbench.tutorial import notebook_kernel
from workbench.viz.notebook import PLOTLY_MIMETYPE

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MODES = {"full": "0", "smoke": "1"}     # --mode -> WORKBENCH_SMOKE
BUDGET_S = 300                          # the aim of a notebook's full mode on one GPU (5 minutes)


def figure_has_data(figure: dict) -> bool:
    """Whether a plotly figure (its JSON) has a trace holding at least one value."""
    keys = ("x", "y", "z", "values", "r", "lat", "cells")
    return any(trace.get(key) not in (None, [], {}) for trace in figure.get("data", []) for key in keys)


def figure_cells(nb: nbformat.NotebookNode) -> tuple[int, list[int]]:
    """(number of plotly figures shown, indices of the cells showing a figure without data)."""
    count, empty = 0, []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            figure = output.get("data", {}).get(PLOTLY_MIMETYPE)
            if figure is not None:
                count += 1
                if not figure_has_data(figure) and index not in empty:
                    empty.append(index)
    return count, empty


def failing_cell(nb: nbformat.NotebookNode) -> int | None:
    """Index of the first code cell whose outputs hold an error, or None."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return index
    return None


def run_notebook(path: Path, timeout: int, executed: Path | None) -> dict:
    """Execute the notebook at ``path``; its row of the results (``passed``, ``wall_s``, figures, the error)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, km=notebook_kernel(), timeout=timeout,
                            resources={"metadata": {"path": str(path.parent)}})
    error = None
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as err:
        cell = failing_cell(nb)
        error = {"cell": cell, "type": type(err).__name__,
                 "message": (getattr(err, "ename", "") + ": " + getattr(err, "evalue", "")).strip(": ")
                 or str(err).strip().splitlines()[-1][:500]}
    wall = time.perf_counter() - start
    figures, empty = figure_cells(nb)
    if executed is not None:
        executed.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, executed / path.name)
    return {"notebook": path.stem, "passed": error is None and not empty, "wall_s": round(wall, 1),
            "cells": sum(c.cell_type == "code" for c in nb.cells), "figures": figures, "empty_figure_cells": empty,
            "error": error}


def environment(mode: str) -> dict:
    """What the rows were measured on."""
    device = resolve_device("auto")
    return {"mode": mode, "device_name": device_name(device), "device": device.type,
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d")}


def write(path: Path, header: dict, rows: dict[str, dict]) -> None:
    """Write the results atomically: the header (environment, command) and one row per notebook, sorted by name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(json.dumps({**header, "notebooks": [rows[name] for name in sorted(rows)]}, indent=1) + "\n")
    os.replace(temp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="names such as 03_mohawk (default: every notebook)")
    parser.add_argument("--mode", choices=list(MODES), default="full", help="full presets (default) or smoke mode")
    parser.add_argument("--json", type=Path, required=True, help="results file (rows merge into an existing one)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may take (default 1800)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds a notebook should take at most")
    parser.add_argument("--runs", type=Path, help="keep the notebooks' run folders here (default: a removed "
                                                  "temporary folder)")
    parser.add_argument("--executed", type=Path, help="write each executed notebook (with outputs) into this folder")
    args = parser.parse_args(argv)

    known = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    names = args.notebooks or known
    unknown = [n for n in names if n.removesuffix(".ipynb") not in known]
    if unknown:
        parser.error(f"unknown notebooks {unknown}; the notebooks: {', '.join(known)}")
    rows: dict[str, dict] = {}
    if args.json.is_file():
        rows = {row["notebook"]: row for row in json.loads(args.json.read_text())["notebooks"]}
    header = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
              **environment(args.mode)}
    os.environ["WORKBENCH_SMOKE"] = MODES[args.mode]
    with tempfile.TemporaryDirectory(prefix="notebook-runs-") as scratch:
        os.environ["WORKBENCH_RUNS"] = str(args.runs or scratch)
        for name in (n.removesuffix(".ipynb") for n in names):
            print(f"{name}: running ({args.mode} mode)", flush=True)
            row = run_notebook(NOTEBOOKS / f"{name}.ipynb", args.timeout, args.executed)
            row.update(mode=args.mode, device_name=header["device_name"],
                       within_budget=row["wall_s"] <= args.budget)
            rows[name] = row
            write(args.json, header, rows)
            verdict = "passed" if row["passed"] else f"FAILED ({row['error'] or row['empty_figure_cells']})"
            print(f"{name}: {verdict} in {row['wall_s']:.1f}s, {row['figures']} figures", flush=True)
    failed = [n for n in names if not rows[n.removesuffix(".ipynb")]["passed"]]
    print(f"wrote {args.json}; {len(names) - len(failed)} of {len(names)} passed"
          + (f", failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

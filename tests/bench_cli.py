"""Helpers of the ``workbench bench`` CLI tests: models saved as folders, and one CLI call read back as JSON."""

import json

from workbench.cli import main


def saved(tmp_path, models: dict, *names: str) -> list:
    """``models[name]`` saved (save_pretrained) under tmp_path/name, for each name; their folders."""
    folders = []
    for name in names:
        models[name].save_pretrained(tmp_path / name)
        folders.append(tmp_path / name)
    return folders


def bench_json(tmp_path, *args: str) -> dict:
    """``workbench bench ARGS --json OUT --device cpu`` must succeed; OUT's report."""
    out = tmp_path / "bench.json"
    assert main(["bench", *args, "--json", str(out), "--device", "cpu"]) == 0
    return json.loads(out.read_text())

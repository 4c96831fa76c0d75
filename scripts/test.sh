#!/usr/bin/env bash
# Set up .venv if needed, then check the style and run the whole test suite (unit tests, notebooks, browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
# Browser tests drive Debian's headless Chromium; install it when missing and we may (root with apt).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing chromium for the browser tests..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[test] could not install chromium; browser tests will be skipped" >&2
fi
# Without a test path among the arguments, check the style (ruff, configured in pyproject.toml) and then run the unit
# tests and the guided notebooks; nbval executes each notebook top to bottom in this environment's kernel
# (--nbval-current-env) and fails on any error (--nbval-lax: outputs are not compared). Arguments naming paths choose
# what runs instead, without the style check; other arguments (-x, -k ...) are passed on.
named=0
for arg in "$@"; do [ -e "${arg%%::*}" ] && named=1; done
# Notebook 03 is left to tests/test_notebooks.py, which executes it once (failing on any cell's error) and checks its
# live figure and HTML export; nbval would run it a second time.
if [ "$named" = 0 ]; then
  .venv/bin/ruff check .
  set -- tests notebooks --ignore=notebooks/03_mohawk.ipynb "$@"
fi
# The notebooks' distillation runs (and their checkpoints, ~1 GB each at the default teacher's size) go to a
# temporary folder, emptied after each notebook (notebooks/conftest.py) and removed afterwards, unless
# WORKBENCH_RUNS names a folder to keep them in.
if [ -z "${WORKBENCH_RUNS:-}" ]; then
  WORKBENCH_RUNS="$(mktemp -d -t workbench-test-runs.XXXXXX)"
  WORKBENCH_RUNS_TEMPORARY=1
  export WORKBENCH_RUNS WORKBENCH_RUNS_TEMPORARY
  trap 'rm -rf "$WORKBENCH_RUNS"' EXIT
fi
# --durations: the slowest tests and notebooks of every run are listed at the end, to keep the suite's time in view.
.venv/bin/python -m pytest -q --nbval-lax --nbval-current-env --durations=25 "$@"

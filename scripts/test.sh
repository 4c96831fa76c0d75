#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (unit tests, notebooks, browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
# Browser tests drive Debian's headless Chromium; install it when missing and we may (root with apt).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing chromium for the browser tests..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[test] could not install chromium; browser tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest -q "$@"

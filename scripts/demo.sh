#!/usr/bin/env bash
# Set up .venv if needed, then run the main job on the embedded default teacher and corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
exec .venv/bin/workbench demo "$@"

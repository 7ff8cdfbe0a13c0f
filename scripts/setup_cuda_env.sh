#!/usr/bin/env bash
# scripts/setup_env.sh on a GPU machine: the project's virtualenv (QUIETSTAR_VENV, default .venv) with a CUDA build
# of torch. setup_env.sh installs torch==2.13.0 only when torch is missing, and pip counts a CPU build (2.13.0+cpu,
# e.g. in a .venv made on a CPU machine, or from a wheel folder of CPU builds) as satisfying torch==2.13.0; the
# package index's torch==2.13.0 for Linux x86-64 is the CUDA build. So a CPU build found in the virtualenv is
# uninstalled first, and the torch that ends up there is checked. The environment stage of scripts/gpu_check.sh.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${QUIETSTAR_VENV:-$repo_root/.venv}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import sys, torch; sys.exit(torch.version.cuda is not None)" \
        >/dev/null 2>&1; then
    echo "setup_cuda_env: $venv holds a CPU build of torch: replacing it with torch==2.13.0 from the package index"
    "$venv/bin/python" -m pip uninstall --quiet --yes torch
fi
# shellcheck source=setup_env.sh
source "$repo_root/scripts/setup_env.sh"
python -c "
import sys, torch
if torch.version.cuda is None:
    sys.exit(f'setup_cuda_env: torch {torch.__version__} in $venv is a CPU build; pip found no CUDA build of '
             'torch==2.13.0 (does its configuration add an index or a folder of CPU wheels?)')
print(f'setup_cuda_env: torch {torch.__version__} (CUDA {torch.version.cuda}) in $venv')
"

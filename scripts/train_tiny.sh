#!/usr/bin/env bash
# Set up the virtualenv (scripts/setup_env.sh) and run the offline tiny training job (configs/tiny.yaml).
# Extra arguments go to train.py (for example --output-dir DIR).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python train.py "$@"

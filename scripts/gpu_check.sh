#!/usr/bin/env bash
# One prepared check, on a machine with one CUDA GPU, of everything the GPU path claims: the suite's CUDA tests, the
# Triton kernel sweep against the torch implementation, the attention benchmark against SDPA/FlashAttention and the
# committed predictions, a training step and generate() at Mistral 7B's widths, NCCL/FSDP2 in bf16. Each stage has
# its own time limit inside an overall budget of 470 s; one report (JSON + markdown) under benchmark_runs/ or
# --out-dir. Arguments go to benchmarks/gpu_check.py (--help lists the stages, their limits and the options).
#   scripts/gpu_check.sh
#   scripts/gpu_check.sh --out-dir /tmp/checks --limit cuda_tests=150
# Without a CUDA device it prints one line saying so and exits 2 at once, before installing anything.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for arg in "$@"; do
    if [[ "$arg" == -h || "$arg" == --help ]]; then
        exec python3 "$repo_root/benchmarks/gpu_check.py" --help
    fi
done
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device: nvidia-smi is not installed (this check needs one NVIDIA GPU and its driver)" >&2
    exit 2
fi
if ! gpus="$(timeout 30 nvidia-smi -L 2>/dev/null)" || ! grep -q '^GPU ' <<<"$gpus"; then
    echo "gpu_check: no CUDA device: nvidia-smi lists no GPU" >&2
    exit 2
fi
exec python3 "$repo_root/benchmarks/gpu_check.py" "$@"

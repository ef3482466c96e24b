#!/usr/bin/env bash
# Training and evaluation throughput on one CUDA GPU in bfloat16 (samples/s, tokens/s, peak memory, MFU).
#
#   bench/gpu.sh [options of bench/gpu.py, e.g. --peak-tflops 312 on an A100]
#
# Run from anywhere, in an environment where backbone-swap is installed (pip install -e .) with a CUDA build
# of torch. Everything is built offline (random weights): a CLIP-L/336-sized tower on a 1.1B Llama. The
# whole script is stopped after BENCH_LIMIT_S seconds (default 450), well inside 8 minutes; typical runs
# take 3 to 4 minutes, most of it building the checkpoint (kept in the work folder for the next run).
set -euo pipefail
cd "$(dirname "$0")/.."
limit="${BENCH_LIMIT_S:-450}"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout --kill-after=15 "$limit" python bench/gpu.py --batch 32 "$@"

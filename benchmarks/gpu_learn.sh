#!/usr/bin/env bash
# One closed-loop seed (`run.py learn`, atari100k: 100k env steps) on a CUDA GPU, with the wall-clock split of
# benchmarks/bench_learn.py. Target: under 10 minutes. UNTESTED on a GPU so far (README says so until it has run).
#
#   bash benchmarks/gpu_learn.sh            # seed 0
#   SEED=1 bash benchmarks/gpu_learn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEED=${SEED:-0}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0))"
timeout 600 "$PY" benchmarks/bench_learn.py --preset atari100k --set run.device=cuda --set run.threads=8 \
  --set "run.seed=$SEED" --reference-steps 2000

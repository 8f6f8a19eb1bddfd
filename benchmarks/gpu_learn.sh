#!/usr/bin/env bash
# One closed-loop seed (`run.py learn`, atari100k: 100k env steps) on a CUDA GPU, with the wall-clock split of
# benchmarks/bench_learn.py. Target: under 10 minutes. On one H200 (2026-12-04) it reached 85k of 100k env steps in
# 525 s and was stopped: not met yet (docs/results.md, "On a GPU").
#
#   bash benchmarks/gpu_learn.sh            # seed 0
#   SEED=1 bash benchmarks/gpu_learn.sh
#   NUM_ENVS=4 bash benchmarks/gpu_learn.sh  # the actor plays 4 envs in lockstep (learn.num_envs; its score: README)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEED=${SEED:-0}
LIMIT=${LIMIT:-600}          # seconds before the run is stopped (the target is 10 minutes)
PRECISION=${PRECISION:-bf16}  # Stage-1/2 training arithmetic (run.precision)
NUM_ENVS=${NUM_ENVS:-1}       # envs the loop's actor plays in lockstep (learn.num_envs; 1 = the preset)
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0))"
timeout "$LIMIT" "$PY" benchmarks/bench_learn.py --preset atari100k --set run.device=cuda --set run.threads=8 \
  --set "run.precision=$PRECISION" --set "run.seed=$SEED" --set "learn.num_envs=$NUM_ENVS" --reference-steps 2000 "$@"

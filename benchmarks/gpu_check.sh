#!/usr/bin/env bash
# The CUDA path on a GPU machine (under 10 minutes): tiny and quick pipelines with run.device=cuda and bf16, and
# Stage-1 throughput as a fraction of the GPU's bf16 peak (benchmarks/gpu_check.py). Prints JSON.
# UNTESTED on a GPU so far (README says so until it has run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
timeout 590 "$PY" benchmarks/gpu_check.py "$@"

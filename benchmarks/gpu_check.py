#!/usr/bin/env python
"""The CUDA path on a GPU machine, in under 10 minutes: the tiny and quick pipelines with ``run.device=cuda`` and
``run.precision=bf16``, and Stage-1 training throughput as a fraction of the GPU's bf16 peak. Prints JSON.

The fraction is given against two references: the GPU's nominal dense bf16 peak (a table of known GPUs, or
``--peak-tflops``) and the best bf16 matmul measured in the same run. FLOPs are counted analytically (matmuls
only; benchmarks/bench_stage1.py). UNTESTED on a GPU so far: the README says so until this has run.

Usage (on the GPU machine, from the repository root):
    bash benchmarks/gpu_check.sh          # = .venv/bin/python benchmarks/gpu_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_stage1 import stage1_step_flops  # noqa: E402

from experiments.builders import build_stage1_model  # noqa: E402
from experiments.config import load_config  # noqa: E402

# Nominal dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 756.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}


def nominal_peak(name: str) -> float | None:
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return BF16_PEAK_TFLOPS[key] * 1e12
    return None


def matmul_peak(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def stage1_throughput(cfg, device: torch.device, batch: int, steps: int, precision: str) -> float:
    """Samples/s of the full Stage-1 training step (target, online forward + backward, predictor, AdamW, EMA)."""
    torch.manual_seed(0)
    model = build_stage1_model(cfg).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    obs = torch.randint(0, 256, (batch, 4, cfg.environment.image_height, cfg.environment.image_width),
                        dtype=torch.uint8, device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(obs)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        model.update_target()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def timed(args: list[str], timeout: float) -> dict:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    out = {"command": " ".join(args), "rc": res.returncode, "seconds": round(time.perf_counter() - t, 1)}
    if res.returncode != 0:
        out["stderr_tail"] = res.stderr[-1500:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device: this check is for a GPU machine (README: 'Scaling out')", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else nominal_peak(name)
    cfg = load_config(None)  # the default (seed) model size
    flops = stage1_step_flops(cfg)["train_step_per_sample"]
    measured = matmul_peak(device)
    rates = {p: stage1_throughput(cfg, device, args.batch, args.steps, p) for p in ("fp32", "bf16")}
    report = {"benchmark": "gpu_check", "device": name, "gpus": torch.cuda.device_count(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "stage1": {"batch": args.batch, "flops_per_sample": flops,
                         "samples_per_s": {p: round(r, 1) for p, r in rates.items()},
                         "bf16_over_fp32": round(rates["bf16"] / rates["fp32"], 2),
                         "bf16_matmul_measured_tflops": round(measured / 1e12, 1),
                         "fraction_of_measured_bf16_matmul": round(rates["bf16"] * flops / measured, 3),
                         "nominal_bf16_peak_tflops": None if peak is None else round(peak / 1e12, 1),
                         "fraction_of_nominal_bf16_peak": None if peak is None else round(rates["bf16"] * flops / peak,
                                                                                          3)}}
    print(json.dumps(report["stage1"]), file=sys.stderr, flush=True)
    runs = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    cuda = ["--set", "run.device=cuda", "--set", "run.precision=bf16", "--set", f"run.runs_dir={runs}",
            "--wandb", "disabled"]
    threads = str(max(1, (os.cpu_count() or 2) // 2))
    report["tiny_demo"] = timed(["run.py", "demo", "--preset", "tiny", *cuda], 180)
    report["quick_pretrain"] = timed(["run.py", "pretrain", "--preset", "quick", *cuda, "--set",
                                      f"data.num_envs={threads}", "--set", f"run.threads={threads}"], 300)
    rows = [json.loads(x) for p in runs.glob("pretrain/*/metrics.jsonl") for x in p.read_text().splitlines()]
    report["quick_pretrain"]["stage1_samples_per_s"] = next((r["perf/samples_per_s"] for r in rows
                                                             if "perf/samples_per_s" in r), None)
    report["quick_pretrain"]["stage2_sequences_per_s"] = next((r["perf/stage2_sequences_per_s"] for r in rows
                                                               if "perf/stage2_sequences_per_s" in r), None)
    if torch.cuda.device_count() >= 2:  # DDP over NCCL: the tiny Stage 1 under torchrun
        report["torchrun_2_gpus"] = timed(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                           "run.py", "pretrain", "--stage", "1", "--preset", "tiny", *cuda], 120)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

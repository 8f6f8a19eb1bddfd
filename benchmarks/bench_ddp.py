#!/usr/bin/env python
"""DDP overhead on this machine: Stage-1 samples/s (and Stage-2 sequences/s) of 2 processes x 1 thread (torchrun,
gloo) against 1 process x 2 threads, the same global batch, measured in the same run; and `collect` with 2 envs
(``data.num_envs=2``: two collector processes) against 1. Prints JSON. Run it on an otherwise idle machine.

Target (scaling-out issue): ``ddp_over_threads`` >= 0.9 on a 2-core machine.

Example:
    python benchmarks/bench_ddp.py --preset quick   # ~5 min on 2 cores
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _train(prefix: list[str], threads: int, args: list[str], runs: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [*prefix, str(ROOT / "run.py"), "pretrain", *args, "--wandb", "disabled", "--set", f"run.runs_dir={runs}",
           "--set", f"run.threads={threads}", "--set", "run.checkpoint_every_steps=0"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    return [json.loads(x) for x in next(runs.glob("pretrain/*/metrics.jsonl")).read_text().splitlines()]


def stage1_rate(prefix: list[str], threads: int, data: Path, preset: str, runs: Path) -> float:
    """Training samples/s of one Stage-1 epoch over ``data``."""
    rows = _train(prefix, threads, ["--stage", "1", "--preset", preset, "--data", str(data), "--set",
                                    "vjepa2_world_model.stage1.num_epochs=1", "--set",
                                    "vjepa2_world_model.stage1.probe_every=0"], runs)
    return float(next(r["perf/samples_per_s"] for r in rows if "perf/samples_per_s" in r))


def stage2_rate(prefix: list[str], threads: int, stage1: Path, preset: str, epochs: int, runs: Path) -> float:
    """Training sequences/s of Stage 2 (mean over ``epochs`` epochs) over the encoder of ``stage1``."""
    rows = _train(prefix, threads, ["--stage", "2", "--preset", preset, "--stage1-checkpoint", str(stage1), "--set",
                                    f"vjepa2_world_model.stage2.num_epochs={epochs}"], runs)
    rates = [r["perf/stage2_sequences_per_s"] for r in rows if "perf/stage2_sequences_per_s" in r]
    return float(sum(rates) / len(rates))


def collect_rate(num_envs: int, steps: int, preset: str, out: Path) -> float:
    """Env steps/s of `collect` (random policy, episodes written) with ``data.num_envs`` environments."""
    from experiments.collect import collect
    from experiments.config import load_config

    cfg = load_config(preset, [f"data.num_envs={num_envs}"])
    t0 = time.perf_counter()
    collect(cfg, out, steps, progress=False)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--data-steps", type=int, default=2500, help="random-play steps Stage 1 trains on (one epoch)")
    ap.add_argument("--stage2-epochs", type=int, default=2)
    ap.add_argument("--collect-steps", type=int, default=20000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    data = tmp / "data"
    subprocess.run([sys.executable, str(ROOT / "run.py"), "collect", "--preset", args.preset, "--steps",
                    str(args.data_steps), "--out", str(data), "--wandb", "disabled"], check=True,
                   capture_output=True)
    one_proc, ddp = [sys.executable], [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node=2"]
    s1 = {"threads": stage1_rate(one_proc, 2, data, args.preset, tmp / "s1-threads"),
          "ddp": stage1_rate(ddp, 1, data, args.preset, tmp / "s1-ddp")}
    stage1 = next((tmp / "s1-threads").glob("pretrain/*/stage1/best.pt"))
    s2 = {"threads": stage2_rate(one_proc, 2, stage1, args.preset, args.stage2_epochs, tmp / "s2-threads"),
          "ddp": stage2_rate(ddp, 1, stage1, args.preset, args.stage2_epochs, tmp / "s2-ddp")}
    one = collect_rate(1, args.collect_steps, args.preset, tmp / "c1")
    two = collect_rate(2, args.collect_steps, args.preset, tmp / "c2")
    print(json.dumps({
        "benchmark": "bench_ddp", "preset": args.preset, "cpus": os.cpu_count(),
        "stage1_samples_per_s": {"1_process_x_2_threads": round(s1["threads"], 1),
                                 "2_processes_x_1_thread_ddp": round(s1["ddp"], 1)},
        "ddp_over_threads": round(s1["ddp"] / s1["threads"], 3), "target_ddp_over_threads": 0.9,
        "stage2_sequences_per_s": {"1_process_x_2_threads": round(s2["threads"], 1),
                                   "2_processes_x_1_thread_ddp": round(s2["ddp"], 1)},
        "stage2_ddp_over_threads": round(s2["ddp"] / s2["threads"], 3),
        "collect_steps_per_s": {"1_env": round(one, 1), "2_envs_2_processes": round(two, 1)},
        "collect_2_over_1": round(two / one, 3),
    }, indent=1))


if __name__ == "__main__":
    main()

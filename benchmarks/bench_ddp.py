#!/usr/bin/env python
"""DDP overhead on this machine: Stage-1 samples/s of 2 processes x 1 thread (torchrun, gloo) against 1 process x
2 threads, the same global batch, measured in the same run; and collection with 2 envs against 1. Prints JSON.

Target (scaling-out issue): ``ddp_over_threads`` >= 0.9 on a 2-core machine.

Example:
    python benchmarks/bench_ddp.py --preset quick --steps 60
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


def stage1_rate(prefix: list[str], threads: int, data: Path, preset: str, steps: int, runs: Path) -> float:
    """Training samples/s of Stage 1's first epoch, capped to ``steps`` steps by the data size."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    args = [*prefix, str(ROOT / "run.py"), "pretrain", "--stage", "1", "--preset", preset, "--data", str(data),
            "--wandb", "disabled", "--set", f"run.runs_dir={runs}", "--set", f"run.threads={threads}",
            "--set", "vjepa2_world_model.stage1.num_epochs=1", "--set", "vjepa2_world_model.stage1.probe_every=0",
            "--set", "run.checkpoint_every_steps=0"]
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    rows = [json.loads(x) for x in next(runs.glob("pretrain/*/metrics.jsonl")).read_text().splitlines()]
    return float(next(r["perf/samples_per_s"] for r in rows if "perf/samples_per_s" in r))


def collect_rate(num_envs: int, steps: int, preset: str) -> float:
    """Env steps/s of random play with ``num_envs`` environments (gymnasium's vector API when > 1)."""
    import numpy as np

    from envs.breakout import make_vec_env
    from experiments.config import load_config

    cfg = load_config(preset)
    env = make_vec_env(cfg.environment, num_envs, seed=0, asynchronous=num_envs > 1)
    rng = np.random.default_rng(0)
    env.reset(seed=100_000)
    t0 = time.perf_counter()
    for _ in range(steps // num_envs):
        env.step(rng.integers(4, size=num_envs))
    rate = (steps // num_envs) * num_envs / (time.perf_counter() - t0)
    env.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--data-steps", type=int, default=2500, help="random-play steps Stage 1 trains on (one epoch)")
    ap.add_argument("--collect-steps", type=int, default=4000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    data = tmp / "data"
    subprocess.run([sys.executable, str(ROOT / "run.py"), "collect", "--preset", args.preset, "--steps",
                    str(args.data_steps), "--out", str(data), "--wandb", "disabled"], check=True,
                   capture_output=True)
    threads = stage1_rate([sys.executable], 2, data, args.preset, args.data_steps, tmp / "threads")
    ddp = stage1_rate([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], 1, data,
                      args.preset, args.data_steps, tmp / "ddp")
    one = collect_rate(1, args.collect_steps, args.preset)
    two = collect_rate(2, args.collect_steps, args.preset)
    print(json.dumps({
        "benchmark": "bench_ddp", "preset": args.preset, "cpus": os.cpu_count(),
        "stage1_samples_per_s": {"1_process_x_2_threads": threads, "2_processes_x_1_thread_ddp": ddp},
        "ddp_over_threads": ddp / threads, "target_ddp_over_threads": 0.9,
        "collect_steps_per_s": {"1_env": one, "2_envs_async": two}, "collect_2_over_1": two / one,
    }, indent=1))


if __name__ == "__main__":
    main()

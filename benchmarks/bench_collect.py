"""Collection throughput and disk use, against raw ALE measured in the same run. Prints JSON.

Reference: raw ``ALE/Breakout-v5`` (frameskip 4 inside the emulator, random actions, no wrappers).
Project: ``experiments.collect.collect`` (the full pipeline: AtariPreprocessing, FIRE rules, RAM
labels, frame stack, episode files with checksums). Both run in this process on one core,
alternating in rounds so that machine noise hits both; the ratio is the figure of merit
(target >= 0.8). Disk: bytes per transition against raw 64x64 uint8 frames (target <= 1.1x).

Usage: python benchmarks/bench_collect.py [--steps 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ale_py
import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.breakout import make_env  # noqa: E402
from experiments.collect import collect, summarize  # noqa: E402
from experiments.config import load_config  # noqa: E402

# CPU time of this process: the other core's load does not leak into the figures (wall-clock is
# reported too). Set BENCH_CLOCK=wall to time with perf_counter instead.
CLOCK = time.perf_counter if os.environ.get("BENCH_CLOCK") == "wall" else time.process_time
gym.register_envs(ale_py)  # the raw "ALE/Breakout-v5" contender (envs.breakout registers ALE only when it makes an env)


def env_rate(make, steps: int, seed: int) -> float:
    """Random-action steps per second of the env built by ``make()`` (set-up timed too)."""
    t0 = CLOCK()  # set-up (ROM load, seeding) is timed for every contender
    env = make()
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(int(rng.integers(4)))
        if term or trunc:
            env.reset()
    dt = CLOCK() - t0
    env.close()
    return steps / dt


def collect_rate(cfg, steps: int, seed: int, tmp: Path) -> tuple[float, int, int]:
    out = tmp / f"c{seed}"
    t0 = CLOCK()
    collect(cfg, out, steps, seed=seed, progress=False)
    dt = CLOCK() - t0
    summary = summarize(out, verify=False)
    disk, frames = summary["disk_bytes"], summary["frames_on_disk"]
    shutil.rmtree(out)
    return steps / dt, disk, frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("quick", ["run.wandb=disabled"])
    raw, env_only, coll = [], [], []
    disk = frames = transitions = 0
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            raw.append(env_rate(lambda: gym.make("ALE/Breakout-v5", disable_env_checker=True), args.steps, r))
            env_only.append(env_rate(lambda r=r: make_env(cfg.environment, seed=r), args.steps, r))
            rate, b, f = collect_rate(cfg, args.steps, r, Path(d))
            coll.append(rate)
            disk, frames, transitions = disk + b, frames + f, transitions + args.steps
    raw_med, env_med, coll_med = float(np.median(raw)), float(np.median(env_only)), float(np.median(coll))
    bytes_per_transition = disk / transitions
    result = {
        "benchmark": "collect",
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "clock": "wall" if CLOCK is time.perf_counter else "process_cpu",
        "raw_ale_steps_per_s": round(raw_med, 1),
        "pipeline_env_steps_per_s": round(env_med, 1),
        "collect_steps_per_s": round(coll_med, 1),
        "ratio_pipeline_env_vs_raw": round(env_med / raw_med, 3),
        "ratio_collect_vs_raw": round(coll_med / raw_med, 3),
        "target_ratio": 0.8,
        "disk_bytes_per_transition": round(bytes_per_transition, 1),
        "disk_for_100k_transitions_mb": round(bytes_per_transition * 100_000 / 1e6, 1),
        "raw_frames_100k_mb": round(100_000 * 64 * 64 / 1e6, 1),
        "disk_vs_raw_frames": round(disk / (frames * 64 * 64), 4),
        "target_disk_vs_raw": 1.1,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

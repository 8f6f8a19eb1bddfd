#!/usr/bin/env python
"""Horizon study: CEM over the emulator (the oracle) for a few planner settings, first steps of a game.

Each setting plays the first ``--steps`` agent steps of the evaluation games (``--seeds`` of them)
with the oracle planner and reports points scored, lives lost and decision latency; the random
policy on the same seeds is the reference. Prints one JSON object. The settings are
``KEY=VALUE,KEY=VALUE`` groups of ``planner.*`` overrides.

Example:
    nice -n 10 python benchmarks/bench_oracle_horizon.py --steps 400 \\
        --setting horizon=10 --setting horizon=30 --setting horizon=30,repeat_prob=0.75
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.breakout import make_env  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.play import eval_env_config, eval_seeds, play_episode  # noqa: E402
from planners.oracle import OraclePlanner  # noqa: E402
from planners.reference import RandomPolicy  # noqa: E402


def run_setting(agent, cfg, seeds, steps):
    env = make_env(eval_env_config(cfg), seed=seeds[0])
    rows = []
    for seed in seeds:
        losses: list[bool] = []
        res = play_episode(agent, env, seed, max_steps=steps, on_step=lambda s, acc=losses: acc.append(
            bool(s["info"]["life_loss"])))
        rows.append({"seed": seed, "return": res["return"], "length": res["length"], "lives_lost": sum(losses),
                     "latency_mean_s": res["latency_mean_s"]})
    env.close()
    return {"return_mean": float(np.mean([r["return"] for r in rows])),
            "lives_lost_mean": float(np.mean([r["lives_lost"] for r in rows])),
            "length_mean": float(np.mean([r["length"] for r in rows])),
            "latency_mean_s": float(np.mean([r["latency_mean_s"] for r in rows])), "games": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400, help="agent steps per game (the oracle is slow)")
    ap.add_argument("--seeds", type=int, default=1, help="evaluation games per setting")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--setting", action="append", default=[], help="planner overrides, e.g. horizon=30,samples=32")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = load_config(args.preset)
    seeds = eval_seeds(base, args.seeds)
    out = {"steps": args.steps, "seeds": seeds, "preset": args.preset,
           "random": run_setting(RandomPolicy(seed=0), base, seeds, args.steps), "settings": []}
    for setting in args.setting or ["horizon=12"]:
        overrides = [f"planner.{kv}" for kv in setting.split(",") if kv]
        cfg = load_config(args.preset, overrides)
        agent = OraclePlanner(cfg.planner, cfg.environment.frame_skip, cfg.environment.fire_on_life_loss)
        t0 = time.perf_counter()
        res = run_setting(agent, cfg, seeds, args.steps)
        res.update({"setting": setting, "planner": cfg.to_dict()["planner"], "wall_s": time.perf_counter() - t0})
        out["settings"].append(res)
        print(f"# {setting}: return {res['return_mean']:.1f}, lives lost {res['lives_lost_mean']:.1f}, "
              f"{res['length_mean']:.0f} steps, {1e3 * res['latency_mean_s']:.0f} ms/decision", file=sys.stderr,
              flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

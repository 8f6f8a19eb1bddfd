#!/usr/bin/env python
"""One CEM game with the RAM logged: what the world model foresaw before each life loss. Prints JSON.

For every step: ball and paddle from the RAM, the executed action, the planner's predicted return,
and the imagined probability of losing a life within the planner's horizon under constant NOOP,
RIGHT and LEFT from the current observation (with the planner's real-history context). For each
life loss the last ``--window`` steps before it are returned, so one can read how many steps ahead
the model saw the danger and whether it preferred the direction of the ball.

Example:
    python benchmarks/cem_trace.py --checkpoint runs/pretrain/<run>/stage2/best.pt --seed 10000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.breakout import LEFT, RIGHT, make_env  # noqa: E402
from experiments.agents import AgentInputs, build_agent  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.play import eval_env_config  # noqa: E402
from worldmodel import load_world_model  # noqa: E402

NOOP = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="stage-2 checkpoint")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seed", type=int, default=10000, help="game seed")
    ap.add_argument("--window", type=int, default=24, help="steps logged before each life loss")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    cfg = load_config(args.preset, args.overrides)
    torch.set_num_threads(max(1, cfg.run.threads))
    wm = load_world_model(args.checkpoint)
    planner = build_agent("cem", cfg, AgentInputs(model=wm), cfg.run.seed).agent
    env = make_env(eval_env_config(cfg), seed=args.seed)
    obs, info = env.reset(seed=args.seed)
    planner.reset(env)
    h = cfg.planner.horizon
    constant = torch.tensor([[NOOP] * h, [RIGHT] * h, [LEFT] * h])  # [3, H]
    rows, losses, total, done = [], [], 0.0, False
    while not done:
        with torch.inference_mode():
            z0 = wm.encode(np.asarray(obs)[None]).expand(3, -1)
            ctx_z, ctx_a = planner.context()
            _, _, cont = wm.imagine(z0, constant, context=ctx_z, context_actions=ctx_a)  # [3, H]
        p_loss = (1.0 - cont.prod(1)).tolist()
        action = planner.act(obs)
        rows.append({"step": len(rows), "ball_x": info["ball_x"], "ball_y": info["ball_y"],
                     "paddle_x": info["paddle_x"], "action": action,
                     "predicted_return": round(planner.last_info["predicted_return"], 3),
                     "p_loss_noop_right_left": [round(p, 2) for p in p_loss]})
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        done = terminated or truncated
        if info["life_loss"]:
            losses.append(len(rows) - 1)
    env.close()
    print(json.dumps({"benchmark": "cem_trace", "checkpoint": args.checkpoint, "seed": args.seed,
                      "planner": vars(cfg.planner), "return": total, "length": len(rows),
                      "life_losses": [{"step": t, "before": rows[max(0, t - args.window + 1):t + 1]}
                                      for t in losses]}, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""What a learned Breakout policy must beat besides random, and whether an actor looks at the ball.

1. Constant-action policies (NOOP, FIRE, RIGHT, LEFT every step) played with the one evaluation
   protocol on the same seeds as ``plan-in-env`` (full games, the preset's sticky actions). Pressing
   one direction keeps the paddle at a wall, where the ball often lands, so a fixed action can beat
   the uniform random policy: an agent's "3x random" means little unless it also beats these.
2. With ``--agent`` (a train-agent checkpoint) and ``--world-model``: the actor's action
   probabilities on real validation frames of ``--data`` (mean and std over frames: a policy that
   ignores the state has std ~0), and the correlation between ``P(RIGHT) - P(LEFT)`` and the RAM
   offset ``ball_x - paddle_x`` on frames with a ball in play (> 0: it moves toward the ball).

Prints one JSON object. Example:
    python benchmarks/policy_references.py --episodes 5
    python benchmarks/policy_references.py --episodes 0 --data data/quick30k \\
        --world-model runs/pretrain/<run>/stage2/best.pt --agent runs/train-agent/<run>/agent.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.breakout import ACTION_NAMES, LEFT, RIGHT  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.play import evaluate, summarize_returns  # noqa: E402


class ConstantPolicy:
    """The same action every step (the planner interface)."""

    def __init__(self, action: int):
        self.action = action

    def reset(self, *args, **kwargs) -> None:
        pass

    def act(self, obs: np.ndarray) -> int:
        return self.action


@torch.no_grad()
def actor_diagnostics(data: str, world_model: str, agent: str, frames: int) -> dict:
    from agent.player import build_agent_nets, load_agent_checkpoint
    from envs.dataset import FrameStackDataset
    from envs.replay import load_episodes, split_episodes
    from worldmodel import load_world_model

    cfg = load_config("quick")
    eps, _ = load_episodes(data, verify=False)
    _, va = split_episodes(len(eps), cfg.data.val_fraction, cfg.run.seed)
    ds = FrameStackDataset([eps[i] for i in va])
    idx = np.linspace(0, len(ds) - 1, min(frames, len(ds))).astype(int)
    b = ds.batch(idx)
    wm = load_world_model(world_model)
    actor, _ = build_agent_nets(load_agent_checkpoint(agent), "cpu")
    probs = torch.cat([actor.log_probs(wm.encode(b["obs"][s:s + 256])).exp()
                       for s in range(0, len(idx), 256)]).numpy()  # [n, A]
    labels = b["labels"].numpy()
    in_play = labels[:, 2] != 0
    offset = (labels[:, 1] - labels[:, 0])[in_play]  # ball_x - paddle_x
    push = (probs[:, RIGHT] - probs[:, LEFT])[in_play]
    return {"frames": int(len(idx)), "frames_with_ball": int(in_play.sum()),
            "action_prob_mean": dict(zip(ACTION_NAMES, probs.mean(0).round(4).tolist())),
            "action_prob_std": dict(zip(ACTION_NAMES, probs.std(0).round(4).tolist())),
            "corr_right_minus_left_vs_ball_minus_paddle": round(float(np.corrcoef(offset, push)[0, 1]), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--episodes", type=int, default=5, help="games per constant action (0: skip)")
    ap.add_argument("--data", help="replay folder for the actor diagnostics")
    ap.add_argument("--world-model", help="stage-2 checkpoint the agent was trained on")
    ap.add_argument("--agent", help="train-agent checkpoint (agent.pt or its run folder)")
    ap.add_argument("--frames", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.preset)
    out: dict = {"benchmark": "policy_references", "preset": args.preset}
    if args.episodes > 0:
        out["constant_actions"] = {}
        for a, name in enumerate(ACTION_NAMES):
            res = evaluate(ConstantPolicy(a), cfg, episodes=args.episodes, progress=False)
            out["constant_actions"][name] = {**summarize_returns(res), "returns": [r["return"] for r in res]}
    if args.agent:
        if not (args.data and args.world_model):
            ap.error("--agent needs --data and --world-model")
        out["actor"] = actor_diagnostics(args.data, args.world_model, args.agent, args.frames)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Do several actor-critics on one world model play better together than alone? (a screen, not a preset setting)

The final agent's score moves by 2-4 points between training seeds on one world model (docs/results.md,
"Snapshots of one final agent"). This script plays, on the evaluation games of one training seed, each given
``agent.pt`` alone and then their ensemble: at every step the members' log-probabilities are averaged (a geometric
mean of their policies, renormalised), so an action any member rates badly is rarely taken, and the action is
sampled from it as the agents play by default (``--greedy`` takes its mode). Every member must have been trained on
the same world model (the first member's recorded world model is used, or ``--world-model``). Same games, same
protocol as ``plan-in-env`` (``experiments.play.evaluate``), so the arms are paired game by game. Prints one JSON
object (and writes it to ``--out``). Example:

    python benchmarks/agent_ensemble.py --agents A/agent.pt B/agent.pt C/agent.pt --preset atari100k --seed 0 \\
        --episodes 30 --set evaluation.block=tuning --set run.threads=1 --out ens.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.player import ActorCriticAgent, build_agent_nets, load_agent_checkpoint, recorded_world_model  # noqa: E402
from envs.errors import UserError  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.play import eval_seeds, evaluate  # noqa: E402
from worldmodel import load_world_model  # noqa: E402


class EnsembleActor(nn.Module):
    """The actors' geometric-mean policy: ``log_softmax(mean_k log pi_k(a|z))``, the Actor interface for play."""

    def __init__(self, actors: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(actors)
        self.latent_dim, self.num_actions = actors[0].latent_dim, actors[0].num_actions

    def log_probs(self, z: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([m.log_probs(z) for m in self.members]).mean(0)  # [B, A]
        return torch.log_softmax(mean, dim=-1)


def main() -> None:
    try:
        run()
    except UserError as e:  # one sentence naming the problem and the fix, exit 2, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", nargs="+", required=True, help="agent.pt files trained on one world model")
    p.add_argument("--world-model", default=None, help="their world model (default: the first agent's recorded one)")
    p.add_argument("--preset", default="atari100k")
    p.add_argument("--seed", type=int, default=0, help="training seed whose evaluation games are played")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--greedy", action="store_true", help="play the mode instead of sampling")
    p.add_argument("--no-members", action="store_true", help="play only the ensemble")
    p.add_argument("--no-ensemble", action="store_true", help="play only the members, each alone")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.no_members and args.no_ensemble:
        raise UserError("--no-members with --no-ensemble leaves nothing to play; drop one of them")

    cfg = load_config(args.preset, [*args.overrides, f"run.seed={args.seed}"])
    torch.set_num_threads(cfg.run.threads or 1)
    ckpts = [load_agent_checkpoint(a) for a in args.agents]
    recorded = {str(recorded_world_model(c, a).resolve()) for c, a in zip(ckpts, args.agents)}
    if args.world_model is None and len(recorded) > 1:
        raise UserError(f"the agents were trained on {len(recorded)} different world models; pass agents of one "
                        "world model (an ensemble plays over one encoder)")
    wm_path = args.world_model or recorded_world_model(ckpts[0], args.agents[0])
    model = load_world_model(wm_path, device="cpu")
    nets = [build_agent_nets(c, "cpu", a) for c, a in zip(ckpts, args.agents)]
    seeds = eval_seeds(cfg, args.episodes)
    out = {"agents": args.agents, "world_model": str(wm_path), "seed": args.seed, "games": seeds,
           "evaluation_block": cfg.evaluation.block, "policy": "greedy" if args.greedy else "sample", "members": []}
    t0 = time.perf_counter()
    if not args.no_members:
        for a, (actor, critic) in zip(args.agents, nets):
            player = ActorCriticAgent(model, actor, critic, deterministic=args.greedy, seed=args.seed)
            res = evaluate(player, cfg, seeds=seeds, desc=f"member {len(out['members'])}", progress=False)
            out["members"].append({"agent": a, "returns": [r["return"] for r in res],
                                   "mean": float(np.mean([r["return"] for r in res]))})
    if not args.no_ensemble:
        ens = EnsembleActor([actor for actor, _ in nets]).eval()
        player = ActorCriticAgent(model, ens, nets[0][1], deterministic=args.greedy, seed=args.seed)
        res = evaluate(player, cfg, seeds=seeds, desc="ensemble", progress=False)
        out["ensemble"] = {"returns": [r["return"] for r in res], "mean": float(np.mean([r["return"] for r in res])),
                           "lengths": [r["length"] for r in res]}
    if out["members"]:
        out["members_mean"] = float(np.mean([m["mean"] for m in out["members"]]))
    out["wall_s"] = time.perf_counter() - t0
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

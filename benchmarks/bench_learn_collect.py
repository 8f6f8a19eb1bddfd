#!/usr/bin/env python
"""`run.py learn`'s collection with ``learn.num_envs`` envs in lockstep against one env, measured in the same run.
Prints JSON.

What is timed: the loop's collection as `learn` runs it (experiments.learn.Players and the sampling
ActorCriticAgent: per round one batched encoder pass and actor over the envs' frames, then one env step each),
over the preset's encoder, world model and actor at initialisation (the cost of a forward pass does not depend on
the weights). The reference is the same loop with one env, and plain random play through the same pipeline
(no encoder); the variants alternate in rounds so that machine noise hits all of them. One thread, as the
atari100k learn runs use (``--set run.threads=1``).

Example:
    python benchmarks/bench_learn_collect.py --preset quick --steps 2000 --rounds 3 --envs 1,2,4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--steps", type=int, default=2000, help="env steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--envs", default="1,2,4", help="comma-separated learn.num_envs values (1 is the reference)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    ks = sorted({int(k) for k in args.envs.split(",")} | {1})
    if args.steps < 1 or args.rounds < 1 or ks[0] < 1:
        raise SystemExit("--steps, --rounds and every --envs value must be integers >= 1")
    torch.set_num_threads(args.threads)

    from agent.actor_critic import ActorCritic
    from agent.player import ActorCriticAgent
    from envs.breakout import NUM_ACTIONS
    from experiments.builders import build_encoder, build_world_model_transformer
    from experiments.config import load_config
    from experiments.learn import Players
    from worldmodel.encoder import PooledEncoder
    from worldmodel.world_model import WorldModel

    cfg = load_config(args.preset, ["run.wandb=disabled"])
    torch.manual_seed(0)
    encoder = PooledEncoder(build_encoder(cfg)).eval().requires_grad_(False)
    wm = WorldModel(encoder, build_world_model_transformer(cfg).eval(), "cpu")
    ac = ActorCritic(wm.latent_dim, wm.num_actions, cfg.agent, "cpu")
    actor = ActorCriticAgent(wm, ac.actor, ac.critic, deterministic=False, seed=0)

    def actor_play(k: int, steps: int) -> float:
        players = Players(cfg, 0, k)
        t0 = time.perf_counter()
        players.play(actor, steps, lambda ep, seed: None)
        dt = time.perf_counter() - t0
        players.close()
        return dt

    def random_play(steps: int) -> float:
        rng = np.random.default_rng(0)
        players = Players(cfg, 0, 1)
        t0 = time.perf_counter()
        for _ in range(steps):
            players.step(0, int(rng.integers(NUM_ACTIONS)))
        dt = time.perf_counter() - t0
        players.close()
        return dt

    times: dict[str, list[float]] = {f"{k}_env" + ("s" if k > 1 else ""): [] for k in ks}
    times["random_play"] = []
    for _ in range(args.rounds):
        for k in ks:
            times[f"{k}_env" + ("s" if k > 1 else "")].append(actor_play(k, args.steps))
        times["random_play"].append(random_play(args.steps))
    rate = {name: args.steps / float(np.median(ts)) for name, ts in times.items()}
    ref = rate["1_env"]
    print(json.dumps({
        "benchmark": "bench_learn_collect", "preset": args.preset, "threads": args.threads, "steps": args.steps,
        "rounds": args.rounds, "steps_per_s_median": {k: round(v, 1) for k, v in rate.items()},
        "over_1_env": {k: round(v / ref, 3) for k, v in rate.items()},
        "note": "ratios against 1 env measured in the same run; random_play is the emulator and pipeline alone",
    }, indent=1))


if __name__ == "__main__":
    main()

"""The actor-critic's update with and without real history before each imagined rollout. Prints JSON.

One ``ActorCritic.update`` (imagine ``agent.imagine_horizon`` steps from ``agent.batch_size`` starts, then the actor
and critic steps) at the preset's agent settings, on the final world model's network shape (the atari100k loop
refits Stage 2 at ``learn.final_refit_depth`` / ``_mlp_dim`` before its final agent; an untrained network of that
shape, or ``--world-model`` for a trained one). Three ways, measured in the same run: from the start latent alone
(``agent.imagine_context=0``, the reference), after K real steps fed one step at a time (as CEM feeds its history),
and after K real steps in one causal pass (``KVRollout.prefill(batched=True)``, what ``imagine_policy`` uses).
Timings are medians over rounds of ``--updates`` updates; ratios are against the reference.

Usage: python benchmarks/bench_imagination.py [--preset atari100k] [--context 7] [--rounds 5] [--updates 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.actor_critic import ActorCritic  # noqa: E402
from experiments.builders import build_world_model_transformer  # noqa: E402
from experiments.config import load_config  # noqa: E402
from worldmodel.transformer import KVRollout  # noqa: E402
from worldmodel.world_model import WorldModel, load_world_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="atari100k")
    ap.add_argument("--world-model", type=Path, default=None, help="a Stage-2 checkpoint (default: untrained)")
    ap.add_argument("--context", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.preset, [f"agent.imagine_context={args.context}"])
    if args.world_model is not None:
        wm = load_world_model(args.world_model)
    else:
        over = [f"models.world_model.depth={cfg.learn.final_refit_depth}",
                f"models.world_model.mlp_dim={cfg.learn.final_refit_mlp_dim}"] if cfg.learn.final_stage2_refit else []
        dyn = build_world_model_transformer(load_config(args.preset, over))
        wm = WorldModel(nn.Identity(), dyn)
    B, K, D = cfg.agent.batch_size, args.context, wm.latent_dim
    z0, ctx, ctx_a = torch.randn(B, D), torch.randn(B, K, D), torch.randint(0, wm.num_actions, (B, K))
    ac = ActorCritic(D, wm.num_actions, cfg.agent)
    ac.seed(0)
    batched_prefill = KVRollout.prefill

    def stepwise_prefill(self, context, context_actions, batched=False):
        return batched_prefill(self, context, context_actions, batched=False)

    def run(context: bool, stepwise: bool) -> float:
        KVRollout.prefill = stepwise_prefill if stepwise else batched_prefill
        try:
            t0 = time.perf_counter()
            for _ in range(args.updates):
                ac.update(wm, z0, None, ctx if context else None, ctx_a if context else None)
            return (time.perf_counter() - t0) / args.updates
        finally:
            KVRollout.prefill = batched_prefill

    arms = {"no_history": (False, False), "history_stepwise": (True, True), "history_batched": (True, False)}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for a in arms.values():  # warm-up
        run(*a)
    for _ in range(args.rounds):  # interleaved, so drifting load hits every arm alike
        for name, a in arms.items():
            times[name].append(run(*a))
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "actor-critic update with real history (agent.imagine_context)",
        "preset": args.preset, "world_model": str(args.world_model or "untrained, the final refit's shape"),
        "batch_size": B, "imagine_horizon": cfg.agent.imagine_horizon, "context": K, "threads": args.threads,
        "ms_per_update": {k: round(v, 2) for k, v in ms.items()},
        "ratio_vs_no_history": {k: round(v / ms["no_history"], 3) for k, v in ms.items()},
        "batched_over_stepwise_speedup": round(ms["history_stepwise"] / ms["history_batched"], 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }, indent=1))


if __name__ == "__main__":
    main()

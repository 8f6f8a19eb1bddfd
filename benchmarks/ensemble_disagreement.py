#!/usr/bin/env python
"""Where the world model is too kind, do world models disagree? (a diagnostic for a state-specific guard)

On the agent's own play the atari100k world models predict about half to two thirds of the real life losses
(``latent_imitation.py``'s open-loop check), and a uniform pessimism (``agent.life_loss_scale``) made a timid
agent. A guard that reaches only the states where the model is unsure needs a signal that is high there. This
script measures whether the disagreement between several Stage-2 world models over one encoder is such a signal.

It plays ``--agent`` (an actor-critic over the first world model) for ``--steps`` env steps on training game seeds,
encodes its frames, and for windows of ``--horizon`` real steps imagines the real actions from the real start latent
with every world model. Per window: ``p_m``, model m's P(a life is lost within the window) (one minus the product
of its continuation probabilities), and ``disagreement``, the mean over the window's steps of the latents' distance
from the models' mean latent (in units of the first model's latent std). Printed as one JSON object:

- ``models``: each model's life-loss AUC, mean predicted P and the real rate (the model's kindness);
- ``mean`` / ``max``: the same for the models' mean and maximum P (a pessimistic ensemble reading);
- ``disagreement_auc``: how well disagreement alone ranks the windows that really lose a life;
- ``disagreement_auc_where_safe``: the same among the windows the first model calls safe (``p_0 < 0.5``), where
  its misses are: above 0.5 means disagreement points at the missed life losses;
- ``disagreement_by_outcome``: mean disagreement on missed, caught and correctly safe windows.

    python benchmarks/ensemble_disagreement.py --world-models A/world_model.pt,B/stage2/best.pt --agent A/agent.pt \\
        --set run.threads=1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latent_imitation import auc, collect, window_starts  # noqa: E402

from experiments.config import load_config  # noqa: E402


def disagreement_stats(p: np.ndarray, lat: np.ndarray, real: np.ndarray, scale: float) -> dict:
    """``p [M, W]`` each model's P(life lost in the window), ``lat [M, W, H, D]`` its imagined latents, ``real [W]``
    whether a life was lost; ``scale`` the latent std the distance is measured in."""
    centre = lat.mean(0, keepdims=True)
    dis = (np.linalg.norm(lat - centre, axis=-1).mean(0) / scale).mean(-1)  # [W]
    safe = p[0] < 0.5
    missed, caught, correct_safe = safe & (real > 0), ~safe & (real > 0), safe & (real == 0)
    out = {"models": [{"life_loss_auc": auc(pm, real), "pred_life_loss": float(pm.mean())} for pm in p],
           "real_life_loss_rate": float(real.mean()), "windows": int(len(real))}
    for name, q in (("mean", p.mean(0)), ("max", p.max(0))):
        out[name] = {"life_loss_auc": auc(q, real), "pred_life_loss": float(q.mean())}
    out["disagreement_auc"] = auc(dis, real)
    out["disagreement_auc_where_safe"] = auc(dis[safe], real[safe])
    out["first_model_misses"] = float(missed.sum() / max(1, (real > 0).sum()))
    out["disagreement_by_outcome"] = {k: float(dis[m].mean()) if m.any() else None for k, m in
                                      (("missed", missed), ("caught", caught), ("correct_safe", correct_safe))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-models", required=True,
                    help="comma-separated Stage-2 checkpoints over one encoder; the first is the agent's")
    ap.add_argument("--agent", required=True, help="an agent.pt over the first world model")
    ap.add_argument("--preset", default="atari100k")
    ap.add_argument("--steps", type=int, default=4000, help="env steps of the agent's own play")
    ap.add_argument("--horizon", type=int, default=15)
    ap.add_argument("--windows", type=int, default=4096, help="at most this many windows (a random subset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    paths = args.world_models.split(",")
    if len(paths) < 2:
        ap.error("--world-models needs at least two checkpoints, comma-separated")

    from agent.player import load_agent
    from worldmodel import load_world_model

    cfg = load_config(args.preset, ["evaluation.block=tuning", *args.overrides])
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    models = [load_world_model(p) for p in paths]
    env_cfg = dataclasses.replace(cfg.environment, terminal_on_life_loss=False)
    actor = load_agent(args.agent, models[0], seed=args.seed)
    obs, _, returns, _, traj = collect(env_cfg, actor, args.steps, args.seed, 0)
    with torch.no_grad():
        z = [torch.cat([m.encode(obs[i:i + 1024]) for i in range(0, len(obs), 1024)]) for m in models]
    for p, zm in zip(paths[1:], z[1:]):
        if not torch.allclose(zm, z[0], atol=1e-4):
            sys.exit(f"{p}'s encoder is not the one of {paths[0]}: pass world models over one encoder")
    h = args.horizon
    starts = window_starts(traj["start"], h)
    gen = torch.Generator().manual_seed(args.seed)
    starts = np.sort(starts[torch.randperm(len(starts), generator=gen)[:args.windows].numpy()])
    idx = starts[:, None] + np.arange(h)[None]
    actions = torch.as_tensor(traj["action"][idx])
    ps, lats = [], []
    for m in models:
        lat, _, cont = m.imagine(z[0][starts], actions)
        ps.append((1.0 - torch.prod(cont, 1)).numpy())
        lats.append(lat.numpy())
    real = traj["life_loss"][idx].any(1).astype(np.float64)
    scale = float(z[0].std(0).mean())
    out = {"world_models": paths, "agent": args.agent, "horizon": h, "steps": args.steps,
           "games_finished": len(returns), "returns": returns,
           **disagreement_stats(np.stack(ps), np.stack(lats), real, scale),
           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

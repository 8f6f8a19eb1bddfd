"""Supervised ceiling of the Stage-1 probes. Prints JSON.

Trains the default ``MaskedViT`` (same readout, frame differences and size as Stage 1) *with* the
RAM labels as regression targets for a fixed time budget (or ``--steps`` updates), then scores the same ridge probe as
``run.py evaluate --stage 1`` (fit on training episodes, R^2 on validation episodes). It answers
"can this architecture at 64x64 see the ball at all?", separating the architecture from the
self-supervised objective. A diagnostic only: nothing here feeds the world model.

Usage: python benchmarks/probe_ceiling.py --data data/quick12k [--seconds 240 | --steps 2000] [--preset quick]
       [--set KEY=VALUE]   (--steps: the same number of updates for every architecture compared)
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

from envs.dataset import FrameStackDataset  # noqa: E402
from envs.replay import load_episodes, split_episodes  # noqa: E402
from experiments.builders import build_encoder  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.data import input_frames  # noqa: E402
from worldmodel.diagnostics import PROBE_TARGETS, ridge_r2  # noqa: E402
from worldmodel.encoder import fit_input_stats  # noqa: E402


@torch.no_grad()
def encode(vit, ds, n: int) -> tuple[torch.Tensor, np.ndarray]:
    idx = np.arange(min(n, len(ds)))
    zs, ys = [], []
    for s in range(0, len(idx), 256):
        b = ds.batch(idx[s:s + 256])
        zs.append(vit(b["obs"])[0].double())
        ys.append(b["labels"].numpy())
    return torch.cat(zs), np.concatenate(ys)


def probes(vit, dtr, dva) -> dict[str, float]:
    vit.eval()
    zt, yt = encode(vit, dtr, 4000)
    zv, yv = encode(vit, dva, 1500)
    out = {}
    for name, col in PROBE_TARGETS.items():
        mt = yt[:, 2] != 0 if col else np.ones(len(yt), bool)
        mv = yv[:, 2] != 0 if col else np.ones(len(yv), bool)
        out[name] = round(ridge_r2(zt[mt], yt[mt, col], zv[mv], yv[mv, col]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--steps", type=int, default=0, help="train this many updates instead of --seconds")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="config override")
    args = ap.parse_args()
    if args.steps < 0:
        ap.error(f"--steps must be 0 (train for --seconds) or a positive number of updates, not {args.steps}")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(args.preset, args.set)
    eps, _ = load_episodes(args.data, verify=False)
    tr, va = split_episodes(len(eps), cfg.data.val_fraction, cfg.run.seed)
    dtr, dva = FrameStackDataset([eps[i] for i in tr]), FrameStackDataset([eps[i] for i in va])
    vit = build_encoder(cfg)
    fit_input_stats(vit, input_frames(dtr, cfg.run.seed))
    random_init = probes(vit, dtr, dva)  # reference in the same run: the same network untrained
    vit.train()
    head = torch.nn.Linear(vit.latent_dim, 3)
    opt = torch.optim.AdamW([*vit.parameters(), *head.parameters()], lr=1e-3)
    rng = np.random.default_rng(0)
    t0, steps = time.perf_counter(), 0
    while (steps < args.steps) if args.steps > 0 else (time.perf_counter() - t0 < args.seconds):
        b = dtr.batch(rng.integers(0, len(dtr), 32))
        y = (b["labels"][:, :3].float() - 100.0) / 50.0  # [B, 3] paddle_x, ball_x, ball_y, roughly standardised
        in_play = (b["labels"][:, 2] != 0).float()  # the ball's position only counts while it is in play
        err = (head(vit(b["obs"])[0]) - y) ** 2
        loss = err[:, 0].mean() + (err[:, 1:] * in_play[:, None]).sum() / in_play.sum().clamp_min(1) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    seconds = time.perf_counter() - t0
    print(json.dumps({"benchmark": "probe_ceiling", "data": args.data, "train_seconds": round(seconds, 1),
                      "supervised_steps": steps, "batch": 32, "overrides": args.set,
                      "tokens": (cfg.environment.image_height // cfg.models.shared_patch_size) ** 2,
                      "latent_dim": vit.latent_dim, "parameters": sum(p.numel() for p in vit.parameters()),
                      "probe_r2_supervised": probes(vit, dtr, dva), "probe_r2_random_init": random_init,
                      "targets": {"paddle_x": 0.9, "ball_x": 0.6, "ball_y": 0.6}}, indent=2))


if __name__ == "__main__":
    main()

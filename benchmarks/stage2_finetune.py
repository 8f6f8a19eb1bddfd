#!/usr/bin/env python
"""Continue a learn run's Stage 2 on its replay with other Stage-2 settings (a diagnostic for loss options).

Loads ``RUN/world_model.pt`` (the closed loop's final world model), encodes ``RUN/data`` with its frozen encoder,
then, for each ``--variant NAME:KEY=VALUE,KEY=VALUE`` (Stage-2 settings; ``control:`` for none), trains a copy of
the dynamics ``--updates`` more steps the way the loop does (``learn.stage2_lr``, AdamW, the replay's training
episodes, ``stage2.reward_oversample``, the same batches for every variant) and writes ``OUT/NAME.pt``, a
world-model checkpoint over the same encoder. The variants differ only in their settings. Check them with
``benchmarks/latent_imitation.py --load`` (does the model rank policies?) or ``run.py train-agent`` (a fresh actor).
Prints one JSON object per variant with the validation losses before and after. Example:

    python benchmarks/stage2_finetune.py --run RUN --updates 3000 --out runs/ft --set run.threads=1 \\
        --variant control: --variant heads:vjepa2_world_model.stage2.heads_on_rollout=true
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.builders import build_world_model_loss  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.fit import optimizer_step  # noqa: E402
from experiments.learn import Replay  # noqa: E402
from worldmodel.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from worldmodel.dynamics_loss import METRICS  # noqa: E402
from worldmodel.world_model import load_world_model  # noqa: E402


@torch.no_grad()
def val_losses(dyn, loss_fn, seqs, batches: int = 16, bs: int = 64) -> dict[str, float]:
    """Mean evaluation-protocol losses over the first ``batches * bs`` validation sequences."""
    dyn.eval()
    rows = []
    for i in range(0, min(len(seqs), batches * bs), bs):
        out = loss_fn(dyn, seqs.batch(np.arange(i, min(len(seqs), i + bs))), train=False)
        rows.append({k: float(out[k]) for k in METRICS})
    return {k: round(float(np.mean([r[k] for r in rows])), 5) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a learn run folder (world_model.pt, data/, config.yaml)")
    ap.add_argument("--updates", type=int, default=3000)
    ap.add_argument("--out", required=True, help="folder for the variants' world-model checkpoints")
    ap.add_argument("--variant", action="append", required=True, help="NAME:KEY=VALUE,... (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    run = Path(args.run)
    preset = yaml.safe_load((run / "config.yaml").read_text()).get("preset", "quick")
    cfg = load_config(preset, args.overrides)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    t0 = time.perf_counter()
    wm = load_world_model(run / "world_model.pt")
    replay = Replay(cfg, run / "data", wm.encoder, torch.device("cpu"))
    replay.load()
    train_seq, val_seq = replay.sequences()
    ckpt = load_checkpoint(run / "world_model.pt", kind="stage2")
    for variant in args.variant:
        name, _, sets = variant.partition(":")
        vcfg = load_config(preset, [*args.overrides, *[x for x in sets.split(",") if x]])
        t1 = time.perf_counter()
        torch.manual_seed(args.seed)
        dyn, s2 = load_world_model(run / "world_model.pt").dynamics, vcfg.vjepa2_world_model.stage2
        loss_fn = build_world_model_loss(vcfg)
        before = val_losses(dyn, loss_fn, val_seq)
        opt = torch.optim.AdamW(dyn.parameters(), lr=vcfg.learn.stage2_lr, weight_decay=s2.weight_decay)
        bs = min(s2.batch_size, len(train_seq))
        order = train_seq.order(np.random.default_rng(args.seed), args.updates * bs, s2.reward_oversample)
        dyn.train().requires_grad_(True)
        for i in range(args.updates):
            out = loss_fn(dyn, train_seq.batch(order[i * bs:(i + 1) * bs]), train=True)
            optimizer_step(out["loss"], list(dyn.parameters()), opt, None, s2.grad_clip)
        dyn.eval().requires_grad_(False)
        after = val_losses(dyn, loss_fn, val_seq)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        save_checkpoint({**ckpt, "world_model": dyn.state_dict(), "config": vcfg.to_dict()},
                        Path(args.out) / f"{name}.pt")
        print(json.dumps({"run": str(run), "variant": name, "overrides": sets, "updates": args.updates,
                          "train_sequences": len(train_seq), "val_before": before, "val_after": after,
                          "out": str(Path(args.out) / f"{name}.pt"), "seconds": round(time.perf_counter() - t1, 1),
                          "total_seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()

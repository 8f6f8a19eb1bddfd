"""Stage-2 throughput: training sequences/s and ``imagine()`` latent transitions/s. Prints JSON.

* Training: full WorldModelLoss steps (scheduled sampling pass + scored pass + rollout chain +
  backward + AdamW) on random latents at the preset's model size, next to a plain teacher-forced
  step (one pass + backward) measured in the same run: the ratio is the cost of the seed's loss.
* Imagination: ``WorldModel.imagine`` (KV cache over a sliding window, one token per step) at
  batch 256, horizon 8, with 1 and 2 threads, next to the naive rollout that recomputes the whole
  window through ``forward`` each step (the reference). Also the planner's shape: batch 64 x
  horizon 12, as CEM decisions/s for 3 iterations.

Timings are wall-clock medians over rounds; the machine's load average is reported with them.

With ``--compile`` the training step is also measured through ``torch.compile(loss)`` (same model, batch and
optimizer; compile time reported apart): on the 2-core CPU machine, atari100k's sizes, it was 0.86x eager after
292 s of compilation (docs/research_log.md, "Ideas that did not help"), so no config key offers it for Stage 2.

Usage: python benchmarks/bench_stage2.py [--preset quick] [--rounds 5] [--compile]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.builders import build_encoder, build_world_model_loss, build_world_model_transformer  # noqa: E402
from experiments.config import load_config  # noqa: E402
from worldmodel.encoder import PooledEncoder  # noqa: E402
from worldmodel.world_model import WorldModel  # noqa: E402


def timed(fn, rounds: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def naive_imagine(model, z0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Reference: re-run ``forward`` over the last ``max_len`` steps for every imagined step."""
    W = model.max_len
    seq = z0[:, None]
    for h in range(actions.shape[1]):
        lo = max(0, seq.shape[1] - W)
        nxt, _, _ = model(seq[:, lo:], actions[:, lo:h + 1])
        seq = torch.cat([seq, nxt[:, -1:]], 1)
    return seq[:, 1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time the training step through torch.compile")
    args = ap.parse_args()
    cfg = load_config(args.preset, ["run.wandb=disabled"])
    s2 = cfg.vjepa2_world_model.stage2
    D, T, B = cfg.models.shared_latent_dim, s2.sequence_length, s2.batch_size
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_world_model_transformer(cfg)
    loss_fn = build_world_model_loss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = {"z": torch.randn(B, T + 1, D), "actions": torch.randint(0, 4, (B, T)), "rewards": torch.zeros(B, T),
             "life_loss": torch.zeros(B, T, dtype=torch.bool)}

    def full_step(fn=loss_fn):
        out = fn(model, batch, train=True)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    def tf_step():
        pred, _, _ = model(batch["z"][:, :T], batch["actions"])
        loss = (pred - batch["z"][:, 1:]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    t_full, t_tf = timed(full_step, args.rounds), timed(tf_step, args.rounds)
    compiled_row = None
    if args.compile:
        compiled = torch.compile(loss_fn)
        t0 = time.perf_counter()
        for _ in range(3):  # compilation happens on the first calls
            full_step(compiled)
        compile_s = time.perf_counter() - t0
        t_comp, t_eager = timed(lambda: full_step(compiled), args.rounds), timed(full_step, args.rounds)
        compiled_row = {"compile_and_first_3_steps_s": compile_s, "sequences_per_s": B / t_comp,
                        "eager_sequences_per_s_same_moment": B / t_eager, "speedup_vs_eager": t_eager / t_comp}
    wm = WorldModel(PooledEncoder(build_encoder(cfg)), model)
    result = {
        "preset": args.preset, "load_average_1min": os.getloadavg()[0], "torch": torch.__version__,
        "model": {"hidden_dim": cfg.models.world_model.hidden_dim, "depth": cfg.models.world_model.depth,
                  "mlp_dim": cfg.models.world_model.mlp_dim, "sequence_length": T, "latent_dim": D,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "train": {"batch_size": B, "threads": 1, "sequences_per_s": B / t_full,
                  "reference_teacher_forced_sequences_per_s": B / t_tf, "loss_cost_vs_reference": t_full / t_tf},
        "imagine": {},
    }
    if compiled_row is not None:
        result["train"]["compiled"] = compiled_row
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for bsz, H in ((256, 8), (64, 12)):
            z0, acts = torch.randn(bsz, D), torch.randint(0, 4, (bsz, H))
            t_kv = timed(lambda z0=z0, acts=acts: wm.imagine(z0, acts), args.rounds)
            t_ref = timed(lambda z0=z0, acts=acts: naive_imagine(model.eval(), z0, acts), args.rounds)
            row = {"transitions_per_s": bsz * H / t_kv, "ms_per_call": 1e3 * t_kv,
                   "reference_naive_transitions_per_s": bsz * H / t_ref, "speedup_vs_reference": t_ref / t_kv}
            if bsz == 64:
                row["cem_decisions_per_s_3_iterations"] = 1.0 / (3 * t_kv)
            result["imagine"][f"threads{threads}_batch{bsz}_horizon{H}"] = row
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

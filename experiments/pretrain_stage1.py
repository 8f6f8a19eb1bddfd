"""Stage-1 pretraining: masked-latent prediction with an EMA target, early stopping and exact resume.

``pretrain_stage1(cfg, data=DIR)`` trains a :class:`MaskedPredictionModel` on the training episodes
of a replay folder (collecting one with the random policy when ``data`` is None), validates on
held-out episodes, runs the representation diagnostics, and writes into the run folder::

    stage1/best.pt     # lowest validation loss
    stage1/latest.pt   # end of the last completed epoch: all that exact resumption needs
    stage1_summary.json

``pretrain_stage1(cfg, resume=RUN_DIR)`` continues a run from ``RUN_DIR/stage1/latest.pt`` with the
config, data, weights, optimizer, scheduler, counters, early-stopping state and RNG states saved there.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from envs.errors import UserError
from experiments.config import Config, stage1_config
from experiments.data import input_frames, load_split
from experiments.report_stage1 import random_baseline
from experiments.runlog import RunLogger, seed_everything, setup_torch, tqdm
from experiments.training import optimizer_step
from worldmodel.checkpoint import load_checkpoint, load_state, save_checkpoint
from worldmodel.diagnostics import representation_diagnostics, warn_if_collapsed
from worldmodel.encoder import PooledEncoder, fit_input_stats
from worldmodel.masked_prediction import build_stage1_model, encoder_kwargs, validation_losses

STAGE1_DIR = "stage1"
INPUT_STATS_FRAMES = 8192  # training observations sampled to fit the encoder's per-pixel standardisation
INPUT_STATS_SEED_OFFSET = 104729


def lr_lambda(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state(np_rng: np.random.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(np_rng.bit_generator.state)}


def _set_rng_state(state: dict[str, Any], np_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np_rng.bit_generator.state = json.loads(state["numpy"])


def _prefixed(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in d.items() if isinstance(v, (int, float, bool))}


def pretrain_stage1(cfg: Config, data: str | Path | None = None, resume: str | Path | None = None,
                    max_epochs: int | None = None, progress: bool = True,
                    echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Train Stage 1 and return its summary (paths, losses, diagnostics).

    Args:
        cfg: the run's config (ignored when resuming: the checkpoint's config is used).
        data: replay folder; None collects ``data.collect_steps`` random-policy steps into the run folder.
        resume: a run folder holding ``stage1/latest.pt`` to continue.
        max_epochs: stop after this many epochs in this call (an interruption, for tests); None = no cap.
        progress: show the tqdm bar.
        echo: where to print progress lines.
    """
    ckpt = None
    if resume is not None:
        resume = Path(resume)
        latest = resume / STAGE1_DIR / "latest.pt"
        if not latest.is_file():
            raise UserError(f"cannot resume: {latest} does not exist; pass a run folder of `run.py pretrain --stage 1`")
        ckpt = load_checkpoint(latest, kind="stage1")
        cfg = stage1_config(ckpt)
        data = ckpt["data_dir"]
    s1 = cfg.vjepa2_world_model.stage1
    device = setup_torch(cfg)
    if cfg.run.threads == 0:
        torch.set_num_threads(1)  # shared machine: one core unless run.threads says otherwise
    seed_everything(cfg.run.seed)
    np_rng = np.random.default_rng(cfg.run.seed)

    run = RunLogger(cfg, "pretrain", run_dir=resume, resume=resume is not None)
    try:
        echo(f"run folder: {run.dir}")
        if data is None:
            from experiments.collect import collect, format_summary, summarize

            data = run.dir / "data"
            echo(f"collecting {cfg.data.collect_steps} random-policy steps into {data}")
            collect(cfg, data, cfg.data.collect_steps, policy=cfg.data.policy, progress=progress)
            summary = summarize(data, val_fraction=cfg.data.val_fraction, seed=cfg.run.seed)
            run.write_json("dataset_summary.json", summary)
            echo(format_summary(summary))
        data = Path(data)
        train_ds, val_ds = load_split(cfg, data)
        if len(train_ds) < 1 or len(val_ds) < 1:
            raise UserError(f"data folder {data} is too small for a train/validation split; collect more steps")
        echo(f"stage 1 ({s1.target} target): {len(train_ds)} train / {len(val_ds)} val observations")

        model = build_stage1_model(cfg).to(device)
        if ckpt is None and model.online.input_norm == "pixel":  # resumed runs restore the fitted buffers
            frames = input_frames(train_ds, cfg.run.seed).to(device)
            fit_input_stats(model.online, frames)
            fit_input_stats(model.target, frames)
            del frames
        params = [p for p in model.parameters() if p.requires_grad]  # online encoder + predictor
        opt = torch.optim.AdamW(params, lr=s1.learning_rate, weight_decay=s1.weight_decay)
        bs = min(s1.batch_size, len(train_ds))
        steps_per_epoch = len(train_ds) // bs
        total_steps = steps_per_epoch * s1.num_epochs
        warmup = int(round(s1.warmup_epochs * steps_per_epoch))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warmup, total_steps))

        epoch, step = 0, 0
        best_val, bad_epochs, best_epoch = float("inf"), 0, -1
        history: list[dict[str, Any]] = []
        baseline = None
        if ckpt is not None:
            for name in ("online", "target", "predictor"):
                load_state(getattr(model, name), ckpt[name], latest, name)
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
            es = ckpt["early_stopping"]
            best_val, bad_epochs, best_epoch = float(es["best_val"]), int(es["bad_epochs"]), int(es["best_epoch"])
            history = list(ckpt["history"])
            baseline = ckpt.get("random_baseline")
            _set_rng_state(ckpt["rng"], np_rng)
            run.log({"resumed_from_epoch": epoch, "resumed_from_step": step}, step=step)
            echo(f"resumed from {latest}: epoch {epoch}, step {step}")
        if baseline is None:
            baseline = random_baseline(cfg, train_ds, val_ds)
            run.log(_prefixed(baseline, "diag/random/"), step=step)

        step_fn = torch.compile(model) if s1.compile else model

        def checkpoint(path: Path, summary: dict[str, Any]) -> None:
            save_checkpoint({
                "kind": "stage1", "config": cfg.to_dict(), "data_dir": str(data),
                "encoder_kwargs": encoder_kwargs(model.online), "target_kind": s1.target,
                "online": model.online.state_dict(), "target": model.target.state_dict(),
                "predictor": model.predictor.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
                "early_stopping": {"best_val": best_val, "bad_epochs": bad_epochs, "best_epoch": best_epoch},
                "history": history, "random_baseline": baseline, "rng": _rng_state(np_rng), "summary": summary,
            }, path)

        ckpt_dir = run.dir / STAGE1_DIR
        stopped_early = bad_epochs >= s1.early_stopping_patience
        epochs_this_call = 0
        model.train()
        while epoch < s1.num_epochs and not stopped_early:
            if max_epochs is not None and epochs_this_call >= max_epochs:
                break
            t0 = time.perf_counter()
            perm = np_rng.permutation(len(train_ds))
            losses, parts = [], {}
            bar = tqdm(range(steps_per_epoch), desc=f"stage1 epoch {epoch + 1}/{s1.num_epochs}", unit="batch",
                       disable=not progress, leave=False)
            for i in bar:
                obs = train_ds.batch(perm[i * bs:(i + 1) * bs])["obs"].to(device)  # [B, F, H, W] uint8
                out = step_fn(obs)
                loss, grad_norm = optimizer_step(out["loss"], params, opt, sched, s1.grad_clip, "stage-1", step + 1)
                model.update_target()
                step += 1
                losses.append(loss)
                for key in ("jepa_loss", "motion_map_loss"):
                    if key in out:
                        parts.setdefault(key, []).append(float(out[key]))
                bar.set_postfix(loss=f"{loss:.4f}")
                if step % 20 == 0 or i == steps_per_epoch - 1:
                    run.log({"train/loss": loss, "train/lr": sched.get_last_lr()[0], "train/grad_norm": grad_norm,
                             **{f"train/{k}": v[-1] for k, v in parts.items()}}, step=step)
            bar.close()
            train_time = time.perf_counter() - t0
            epoch += 1
            epochs_this_call += 1
            train_loss = float(np.mean(losses))
            val = validation_losses(model, val_ds, seed=cfg.run.seed + 1)
            val_loss = val["loss"]
            row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                   "val_train_ratio": val_loss / max(train_loss, 1e-12),
                                   **{f"train_{k}": float(np.mean(v)) for k, v in parts.items()},
                                   **{f"val_{k}": v for k, v in val.items() if k != "loss"}}
            metrics = {"train/epoch_loss": train_loss, "val/loss": val_loss, "val/train_ratio": row["val_train_ratio"],
                       **{f"val/{k}": v for k, v in val.items() if k != "loss"},
                       "epoch": epoch, "perf/samples_per_s": steps_per_epoch * bs / train_time,
                       "perf/epoch_train_s": train_time}
            last = epoch >= s1.num_epochs
            if (s1.probe_every > 0 and epoch % s1.probe_every == 0) or last:
                diag = representation_diagnostics(PooledEncoder(model.target), train_ds, val_ds, seed=cfg.run.seed)
                row["diag"] = diag
                metrics.update(_prefixed(diag, "diag/"))
                warn_if_collapsed(diag, echo)
            history.append(row)
            improved = val_loss < best_val
            if improved:
                best_val, bad_epochs, best_epoch = val_loss, 0, epoch
            else:
                bad_epochs += 1
            stopped_early = bad_epochs >= s1.early_stopping_patience
            metrics["val/best_loss"] = best_val
            run.log(metrics, step=step)
            d = row.get("diag", {})
            echo(f"epoch {epoch}: train {train_loss:.4f}  val {val_loss:.4f}  ratio {row['val_train_ratio']:.2f}"
                 + (f"  rank {d['effective_rank']:.1f}  R2 paddle {d['probe_r2/paddle_x']:.3f} "
                    f"ball_x {d['probe_r2/ball_x']:.3f} ball_y {d['probe_r2/ball_y']:.3f}" if d else "")
                 + f"  ({steps_per_epoch * bs / train_time:.0f} samples/s)")
            summary = {"epoch": epoch, "step": step, "best_epoch": best_epoch, "best_val_loss": best_val}
            if improved:
                checkpoint(ckpt_dir / "best.pt", summary)
            checkpoint(ckpt_dir / "latest.pt", summary)
            if stopped_early:
                echo(f"early stopping: no validation improvement for {bad_epochs} epochs (best epoch {best_epoch})")

        # Diagnostics of the best checkpoint's target encoder (what downstream stages load).
        best_path = ckpt_dir / "best.pt"
        result: dict[str, Any] = {
            "run_dir": str(run.dir), "data_dir": str(data), "target": s1.target, "epochs": epoch, "steps": step,
            "finished": epoch >= s1.num_epochs or stopped_early, "stopped_early": stopped_early,
            "best_epoch": best_epoch, "best_val_loss": best_val, "best_checkpoint": str(best_path),
            "latest_checkpoint": str(ckpt_dir / "latest.pt"), "history": history, "random_baseline": baseline,
        }
        if ckpt is not None:
            result["resumed_from"] = {"epoch": int(ckpt["epoch"]), "step": int(ckpt["step"])}
        run.write_json("stage1_summary.json", result)
        return result
    finally:
        run.close()

"""Stage-2 pretraining: the action-conditioned WorldModelTransformer over frozen Stage-1 latents.

``pretrain_stage2(cfg, stage1_checkpoint=PATH, data=DIR)`` encodes the replay folder once with the
Stage-1 encoder (cached on disk, see :mod:`worldmodel.latent_cache`), trains the world model on the
training episodes' sequences, validates on held-out episodes (the same episode split as Stage 1),
and writes into the run folder::

    stage2/best.pt     # lowest validation loss; holds the encoder too, so it alone loads the world model
    stage2/latest.pt   # end of the last completed epoch: all that exact resumption needs
    stage2_summary.json

``pretrain_stage2(cfg, resume=RUN_DIR)`` continues from ``RUN_DIR/stage2/latest.pt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from envs.breakout import NUM_ACTIONS
from envs.errors import UserError
from experiments.config import Config, config_from_dict
from experiments.data import load_sequences
from experiments.pretrain_stage1 import _rng_state, _set_rng_state, lr_lambda
from experiments.runlog import RunLogger, seed_everything, setup_torch, tqdm
from experiments.training import optimizer_step
from worldmodel.checkpoint import load_checkpoint, load_state, save_checkpoint
from worldmodel.dynamics_loss import METRICS, build_world_model_loss, evaluate_losses
from worldmodel.latent_cache import encoder_fingerprint
from worldmodel.masked_prediction import encoder_kwargs, load_encoder
from worldmodel.transformer import build_world_model_transformer
from worldmodel.world_model import encoder_from_checkpoint

STAGE2_DIR = "stage2"


def load_stage1_encoder(path: str | Path, cfg: Config) -> torch.nn.Module:
    """The frozen Stage-1 encoder of ``path``, checked against the config's latent size."""
    path = Path(path)
    kind = load_checkpoint(path)["kind"]
    if kind != "stage1":
        raise UserError(f"--stage1-checkpoint {path} is a {kind!r} checkpoint; Stage 2 needs the 'stage1' checkpoint "
                        "of `run.py pretrain --stage 1` (e.g. runs/pretrain/<run>/stage1/best.pt)")
    enc = load_encoder(path)
    D = cfg.models.shared_latent_dim
    if enc.latent_dim != D:
        raise UserError(f"stage-1 checkpoint {path} has latent size {enc.latent_dim} but models.shared_latent_dim is "
                        f"{D}; pass --set models.shared_latent_dim={enc.latent_dim} or a stage-1 checkpoint with "
                        f"latent size {D}")
    return enc


def _prefixed(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in d.items() if isinstance(v, (int, float, bool))}


def pretrain_stage2(cfg: Config, stage1_checkpoint: str | Path | None = None, data: str | Path | None = None,
                    resume: str | Path | None = None, run_dir: str | Path | None = None,
                    max_epochs: int | None = None, progress: bool = True,
                    echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Train Stage 2 and return its summary (paths, losses, epochs).

    Args:
        cfg: the run's config (ignored when resuming: the checkpoint's config is used).
        stage1_checkpoint: the Stage-1 checkpoint whose (EMA target) encoder is frozen and used.
        data: replay folder; None uses the one the Stage-1 checkpoint was trained on.
        resume: a run folder holding ``stage2/latest.pt`` to continue.
        run_dir: write into this existing run folder (``pretrain`` without ``--stage`` puts both stages
            in one folder); None makes a new one.
        max_epochs: stop after this many epochs in this call (an interruption, for tests); None = no cap.
        progress: show progress bars.
        echo: where to print progress lines.
    """
    ckpt = None
    if resume is not None:
        resume = Path(resume)
        latest = resume / STAGE2_DIR / "latest.pt"
        if not latest.is_file():
            raise UserError(f"cannot resume: {latest} does not exist; pass a run folder of `run.py pretrain --stage 2`")
        ckpt = load_checkpoint(latest, kind="stage2")
        cfg = config_from_dict(ckpt["config"])
        data, stage1_checkpoint = ckpt["data_dir"], ckpt.get("stage1_checkpoint")
        run_dir = resume
    elif stage1_checkpoint is None:
        raise UserError("stage 2 needs a stage-1 encoder; pass --stage1-checkpoint runs/pretrain/<run>/stage1/best.pt")
    s2 = cfg.vjepa2_world_model.stage2
    device = setup_torch(cfg)
    if cfg.run.threads == 0:
        torch.set_num_threads(1)  # shared machine: one core unless run.threads says otherwise
    seed_everything(cfg.run.seed)
    np_rng = np.random.default_rng(cfg.run.seed + 2)

    if ckpt is not None:
        encoder = encoder_from_checkpoint(ckpt, latest).eval().requires_grad_(False)
    else:
        encoder = load_stage1_encoder(stage1_checkpoint, cfg)
        if data is None:
            data = load_checkpoint(stage1_checkpoint, kind="stage1").get("data_dir")
            if not data:
                raise UserError(f"stage-1 checkpoint {stage1_checkpoint} does not record its data folder; pass --data")
    encoder = encoder.to(device)
    enc_fp = encoder_fingerprint(encoder)

    run = RunLogger(cfg, "pretrain", run_dir=run_dir, resume=run_dir is not None)
    try:
        echo(f"run folder: {run.dir}")
        data = Path(data)
        train_seq, val_seq, cache = load_sequences(cfg, data, encoder, device, progress)
        echo(f"stage 2: latents {'encoded' if cache['rebuilt'] else 'loaded from cache'} in {cache['seconds']:.1f}s "
             f"({cache['path']}); {len(train_seq)} train / {len(val_seq)} val sequences of {s2.sequence_length}")

        model = build_world_model_transformer(cfg, NUM_ACTIONS).to(device)
        g = torch.from_numpy(train_seq.starts)  # every training transition that starts a sequence
        model.set_normalization(train_seq.latents[g].to(device), train_seq.latents[g + 1].to(device))
        loss_fn = build_world_model_loss(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=s2.learning_rate, weight_decay=s2.weight_decay)
        per_epoch = len(train_seq) if s2.sequences_per_epoch == 0 else min(s2.sequences_per_epoch, len(train_seq))
        bs = min(s2.batch_size, per_epoch)
        steps_per_epoch = max(1, per_epoch // bs)
        total_steps = steps_per_epoch * s2.num_epochs
        warmup = min(100, total_steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warmup, total_steps))

        epoch, step = 0, 0
        best_val, bad_epochs, best_epoch = float("inf"), 0, -1
        history: list[dict[str, Any]] = []
        if ckpt is not None:
            load_state(model, ckpt["world_model"], latest, "world_model")
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
            es = ckpt["early_stopping"]
            best_val, bad_epochs, best_epoch = float(es["best_val"]), int(es["bad_epochs"]), int(es["best_epoch"])
            history = list(ckpt["history"])
            _set_rng_state(ckpt["rng"], np_rng)
            run.log({"stage2/resumed_from_epoch": epoch, "stage2/resumed_from_step": step}, step=step)
            echo(f"resumed from {latest}: epoch {epoch}, step {step}")

        enc_state = {k: v.detach().cpu() for k, v in encoder.vit.state_dict().items()}
        enc_kwargs = encoder_kwargs(encoder.vit)

        def checkpoint(path: Path, summary: dict[str, Any]) -> None:
            save_checkpoint({
                "kind": "stage2", "config": cfg.to_dict(), "data_dir": str(data),
                "stage1_checkpoint": str(stage1_checkpoint) if stage1_checkpoint else "",
                "encoder_kwargs": enc_kwargs, "encoder": enc_state, "encoder_fingerprint": enc_fp,
                "world_model_kwargs": model.kwargs, "world_model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
                "early_stopping": {"best_val": best_val, "bad_epochs": bad_epochs, "best_epoch": best_epoch},
                "history": history, "rng": _rng_state(np_rng), "summary": summary,
            }, path)

        ckpt_dir = run.dir / STAGE2_DIR
        stopped_early = bad_epochs >= s2.early_stopping_patience
        epochs_this_call = 0
        model.train()
        while epoch < s2.num_epochs and not stopped_early:
            if max_epochs is not None and epochs_this_call >= max_epochs:
                break
            t0 = time.perf_counter()
            order = np_rng.permutation(len(train_seq))[:steps_per_epoch * bs]
            sums = dict.fromkeys(METRICS, 0.0)
            bar = tqdm(range(steps_per_epoch), desc=f"stage2 epoch {epoch + 1}/{s2.num_epochs}", unit="batch",
                       disable=not progress, leave=False)
            for i in bar:
                batch = train_seq.batch(order[i * bs:(i + 1) * bs], device)
                out = loss_fn(model, batch, train=True)
                loss, grad_norm = optimizer_step(out["loss"], model.parameters(), opt, sched, s2.grad_clip, "stage-2",
                                                 step + 1)
                step += 1
                for k in METRICS:
                    sums[k] += float(out[k].detach())
                bar.set_postfix(loss=f"{loss:.4f}")
                if step % 20 == 0 or i == steps_per_epoch - 1:
                    run.log({**{f"train/stage2/{k}": float(out[k].detach()) for k in METRICS},
                             "train/stage2/tf_keep_fraction": float(out["tf_keep_fraction"]),
                             "train/stage2/lr": sched.get_last_lr()[0], "train/stage2/grad_norm": grad_norm},
                            step=step)
            bar.close()
            train_time = time.perf_counter() - t0
            epoch += 1
            epochs_this_call += 1
            train = {k: v / steps_per_epoch for k, v in sums.items()}
            val = evaluate_losses(model, loss_fn, val_seq, device=device)
            ratio = val["latent_total"] / max(train["latent_total"], 1e-12)
            history.append({"epoch": epoch, "train": train, "val": val, "val_train_ratio": ratio})
            improved = val["latent_total"] < best_val  # the seed's Total Loss (the noisy heads do not decide)
            if improved:
                best_val, bad_epochs, best_epoch = val["latent_total"], 0, epoch
            else:
                bad_epochs += 1
            stopped_early = bad_epochs >= s2.early_stopping_patience
            run.log({**_prefixed(train, "train/stage2/epoch_"), **_prefixed(val, "val/stage2/"),
                     "val/stage2/train_ratio": ratio, "val/stage2/best_loss": best_val, "stage2/epoch": epoch,
                     "perf/stage2_sequences_per_s": steps_per_epoch * bs / train_time,
                     "perf/stage2_epoch_train_s": train_time}, step=step)
            echo(f"epoch {epoch}: train total {train['latent_total']:.4f} (TF {train['teacher_forcing']:.4f}, rollout "
                 f"{train['rollout']:.4f}, reward {train['reward']:.4f}, continue {train['continue']:.4f})  val total "
                 f"{val['latent_total']:.4f} (TF {val['teacher_forcing']:.4f}, rollout {val['rollout']:.4f}, reward "
                 f"{val['reward']:.4f}, continue {val['continue']:.4f})  ratio {ratio:.2f}  "
                 f"({steps_per_epoch * bs / train_time:.0f} seq/s)")
            summary = {"epoch": epoch, "step": step, "best_epoch": best_epoch, "best_val_loss": best_val}
            if improved:
                checkpoint(ckpt_dir / "best.pt", summary)
            checkpoint(ckpt_dir / "latest.pt", summary)
            if stopped_early:
                echo(f"early stopping: no validation improvement for {bad_epochs} epochs (best epoch {best_epoch})")

        result: dict[str, Any] = {
            "run_dir": str(run.dir), "data_dir": str(data), "stage1_checkpoint": str(stage1_checkpoint or ""),
            "epochs": epoch, "steps": step, "finished": epoch >= s2.num_epochs or stopped_early,
            "stopped_early": stopped_early, "best_epoch": best_epoch, "best_val_loss": best_val,
            "best_checkpoint": str(ckpt_dir / "best.pt"), "latest_checkpoint": str(ckpt_dir / "latest.pt"),
            "latent_cache": cache, "history": history,
        }
        if ckpt is not None:
            result["resumed_from"] = {"epoch": int(ckpt["epoch"]), "step": int(ckpt["step"])}
        run.write_json("stage2_summary.json", result)
        return result
    finally:
        run.close()


def pretrain_both(cfg: Config, data: str | Path | None = None, resume: str | Path | None = None,
                  progress: bool = True, echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """The seed's "train both stages sequentially": collection (unless ``data``), Stage 1, then Stage 2 on the
    best Stage-1 checkpoint, all in one run folder. ``resume`` continues whichever stage was interrupted."""
    from experiments.pretrain_stage1 import pretrain_stage1

    if resume is not None and (Path(resume) / STAGE2_DIR / "latest.pt").is_file():
        return pretrain_stage2(cfg, resume=resume, progress=progress, echo=echo)
    r1 = pretrain_stage1(cfg, data=data, resume=resume, progress=progress, echo=echo)
    if resume is not None:  # the stage-1 checkpoint's config is the run's config
        cfg = config_from_dict(load_checkpoint(r1["latest_checkpoint"], kind="stage1")["config"])
    echo(f"stage 1 done: best val loss {r1['best_val_loss']:.4f} (epoch {r1['best_epoch']}); starting stage 2")
    return pretrain_stage2(cfg, stage1_checkpoint=r1["best_checkpoint"], data=r1["data_dir"], run_dir=r1["run_dir"],
                           progress=progress, echo=echo)

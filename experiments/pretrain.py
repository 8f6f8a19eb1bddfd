"""`run.py pretrain`: Stage 1 and Stage 2 of the world model, each a small task on the one training loop.

``pretrain_stage1(cfg, data=DIR)`` trains a :class:`MaskedPredictionModel` (masked-latent prediction
against an EMA target) on the training episodes of a replay folder (collecting one with the random
policy when ``data`` is None); ``pretrain_stage2(cfg, stage1_checkpoint=...)`` trains the
:class:`WorldModelTransformer` over the frozen Stage-1 encoder's cached latents. Both validate on
held-out episodes and write into the run folder::

    stage1/best.pt, stage1/latest.pt, stage1_summary.json
    stage2/best.pt, stage2/latest.pt, stage2_summary.json

``latest.pt`` holds all that exact resumption needs (see ``experiments/fit.py``); ``resume=RUN_DIR``
continues a run with the config, data, weights, optimizer, counters and RNG states saved there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from envs.breakout import NUM_ACTIONS
from envs.errors import UserError
from experiments import distributed
from experiments.builders import build_stage1_model, build_world_model_loss, build_world_model_transformer
from experiments.config import Config, config_from_dict
from experiments.data import input_frames, load_sequences, load_split
from experiments.fit import TrainState, finished, fit, lr_lambda, optimizer_step, restore
from experiments.report_stage1 import random_baseline
from experiments.runlog import RunLogger, autocast, open_run, seed_everything, setup_torch, to_device
from worldmodel.checkpoint import REQUIRED, RESUME_KEYS, load_checkpoint, load_state, require
from worldmodel.diagnostics import representation_diagnostics, warn_if_collapsed
from worldmodel.dynamics_loss import METRICS, evaluate_losses
from worldmodel.encoder import PooledEncoder, fit_input_stats
from worldmodel.latent_cache import encoder_fingerprint
from worldmodel.masked_prediction import load_encoder, validation_losses
from worldmodel.world_model import encoder_from_checkpoint

STAGE1_DIR = "stage1"
STAGE2_DIR = "stage2"


def _prefixed(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in d.items() if isinstance(v, (int, float, bool))}


INPUTS_FILE = "pretrain_inputs.json"  # what a pretrain run was started with (its data folder), for a restart


def _resume(resume: str | Path, kind: str) -> tuple[Path, dict[str, Any], Config]:
    """``(path, checkpoint, config)`` of the ``latest.pt`` of a run folder's stage ``kind``."""
    run = Path(resume)
    latest = run / kind / "latest.pt"
    if not run.is_dir():
        raise UserError(f"cannot resume: run folder {run} does not exist; pass a folder under runs/pretrain/")
    if not latest.is_file():
        hint = (f"start Stage 2 again with `python run.py pretrain --stage 2 --stage1-checkpoint "
                f"{run / STAGE1_DIR / 'best.pt'}`" if kind == STAGE2_DIR and (run / STAGE1_DIR / "best.pt").is_file()
                else "start a new run")
        raise UserError(f"cannot resume: {run} holds no {kind}/latest.pt (that stage saved no checkpoint yet); {hint}")
    ckpt = load_checkpoint(latest, kind=kind)
    require(ckpt, latest, (*RESUME_KEYS, "scheduler"), "to resume")
    return latest, ckpt, config_from_dict(ckpt["config"])


def _restart(resume: str | Path, echo: Callable[[str], None]) -> tuple[Config, str | None]:
    """The config and data of a pretrain run killed before Stage 1's first checkpoint: Stage 1 starts again in the
    same folder, reusing data the run had finished collecting (a partial collection is collected again)."""
    run = Path(resume)
    if not run.is_dir():
        raise UserError(f"cannot resume: run folder {run} does not exist; pass a folder under runs/pretrain/")
    if not (run / "config.yaml").is_file() or not (run / INPUTS_FILE).is_file():
        raise UserError(f"cannot resume: {run} holds no stage1/latest.pt and no {INPUTS_FILE}, so it is not a "
                        "folder of `run.py pretrain`; pass a folder under runs/pretrain/ or start a new run")
    import yaml

    try:
        cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        data = json.loads((run / INPUTS_FILE).read_text())["data"]
    except (yaml.YAMLError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise UserError(f"cannot resume: {run}/config.yaml or {INPUTS_FILE} is damaged; start a new run") from None
    if data is None and not (run / "dataset_summary.json").is_file():
        shutil.rmtree(run / "data", ignore_errors=True)  # collection did not finish: collect it again, as it was
    reuse = "its collected data" if data is None and (run / "data").is_dir() else "its data"
    echo(f"{run} has no Stage-1 checkpoint yet: starting Stage 1 again there with the run's config and {reuse}")
    return cfg, data


class Stage1Task:
    """Masked-latent prediction with an EMA target: one optimizer step and one EMA update per batch."""

    name, lr_hint, log_every = "stage-1", "vjepa2_world_model.stage1.learning_rate", 20

    def __init__(self, cfg: Config, model: torch.nn.Module, train_ds, val_ds, data: Path, device: torch.device,
                 rng: np.random.Generator, echo: Callable[[str], None]):
        s1 = cfg.vjepa2_world_model.stage1
        self.cfg, self.model, self.train_ds, self.val_ds, self.data = cfg, model, train_ds, val_ds, data
        self.device, self.rng, self.echo = device, rng, echo
        self.params = [p for p in model.parameters() if p.requires_grad]  # online encoder + predictor
        self.opt = torch.optim.AdamW(self.params, lr=s1.learning_rate, weight_decay=s1.weight_decay)
        self.bs = min(s1.batch_size, len(train_ds))
        self.steps_per_epoch = len(train_ds) // self.bs
        total, warmup = self.steps_per_epoch * s1.num_epochs, int(round(s1.warmup_epochs * self.steps_per_epoch))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_lambda(s, warmup, total))
        self.num_epochs, self.patience = s1.num_epochs, s1.early_stopping_patience
        self.baseline: dict[str, Any] | None = None
        self.step_fn = torch.compile(model) if s1.compile else model
        self.group = distributed.group()
        if self.group.active:  # a torchrun group: each rank trains on its rows of the global batch
            if self.bs % self.group.world:
                raise UserError(f"vjepa2_world_model.stage1.batch_size={self.bs} does not split into "
                                f"{self.group.world} equal shares; pass a batch size divisible by --nproc_per_node")
            self.step_fn = distributed.wrap(self.step_fn, device)

    def epoch_order(self) -> np.ndarray:
        return self.rng.permutation(len(self.train_ds))

    def train_step(self, i: int, order: np.ndarray, state: TrainState) -> tuple[dict[str, float], dict[str, float]]:
        idx = order[i * self.bs:(i + 1) * self.bs]
        obs = to_device(self.train_ds.batch(idx)["obs"], self.device)  # [B,F,H,W]
        events = (to_device(self.train_ds.events(idx, self.model.event_horizon), self.device)
                  if self.model.uses_events else None)  # [B, 2]
        future = ({k: to_device(v, self.device)
                   for k, v in self.train_ds.future(idx, self.model.future_horizon).items()}
                  if self.model.uses_future else None)
        obs, future = self.model.augment(obs, future)  # random shift (stage1.random_shift; off by default)
        with autocast(self.cfg, self.device):
            if self.group.active:  # the global batch's masks and weights, drawn alike on every rank; this rank's rows
                mask, weights = self.model.sample_mask(len(obs), self.device), self.model.token_weights(obs)
                rows = distributed.shard(len(obs))
                out = self.step_fn(obs[rows], mask[rows], None if weights is None else weights[rows],
                                   None if events is None else events[rows],
                                   None if future is None else {k: v[rows] for k, v in future.items()})
            else:
                out = self.step_fn(obs, None, None, events, future)
        grad_norm = optimizer_step(out["loss"], self.params, self.opt, self.sched,
                                   self.cfg.vjepa2_world_model.stage1.grad_clip)
        self.model.update_target()
        parts = ("jepa_loss", "motion_map_loss", "motion_axes_loss", "event_loss", "future_loss")
        values = distributed.means({"loss": out["loss"].item(), **{k: float(out[k]) for k in parts if k in out}})
        row = {"train/loss": values["loss"], "train/lr": self.sched.get_last_lr()[0], "train/grad_norm": grad_norm,
               **{f"train/{k}": v for k, v in values.items() if k != "loss"}}
        return values, row

    def end_epoch(self, state: TrainState) -> tuple[float, dict[str, Any], dict[str, Any], str]:
        cfg, epoch = self.cfg, state.epoch
        train_loss = float(np.mean(state.values["loss"]))
        parts = {k: float(np.mean(v)) for k, v in state.values.items() if k != "loss"}
        val = validation_losses(self.model, self.val_ds, seed=cfg.run.seed + 1)
        val_loss = val["loss"]
        rate = self.steps_per_epoch * self.bs / max(state.epoch_seconds, 1e-9)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                               "val_train_ratio": val_loss / max(train_loss, 1e-12),
                               **{f"train_{k}": v for k, v in parts.items()},
                               **{f"val_{k}": v for k, v in val.items() if k != "loss"}}
        metrics = {"train/epoch_loss": train_loss, "val/loss": val_loss, "val/train_ratio": row["val_train_ratio"],
                   **{f"val/{k}": v for k, v in val.items() if k != "loss"},
                   "epoch": epoch, "perf/samples_per_s": rate, "perf/epoch_train_s": state.epoch_seconds}
        probe_every = cfg.vjepa2_world_model.stage1.probe_every
        if (probe_every > 0 and epoch % probe_every == 0) or epoch >= self.num_epochs:
            diag = representation_diagnostics(PooledEncoder(self.model.target), self.train_ds, self.val_ds,
                                              seed=cfg.run.seed)
            row["diag"] = diag
            metrics.update(_prefixed(diag, "diag/"))
            warn_if_collapsed(diag, self.echo)
        metrics["val/best_loss"] = min(state.best, val_loss)
        d = row.get("diag", {})
        line = (f"epoch {epoch}: train {train_loss:.4f}  val {val_loss:.4f}  ratio {row['val_train_ratio']:.2f}"
                + (f"  rank {d['effective_rank']:.1f}  R2 paddle {d['probe_r2/paddle_x']:.3f} "
                   f"ball_x {d['probe_r2/ball_x']:.3f} ball_y {d['probe_r2/ball_y']:.3f}" if d else "")
                + f"  ({rate:.0f} samples/s)")
        return val_loss, row, metrics, line

    def parameters_to_check(self) -> list[torch.Tensor]:
        return self.params

    def state_dict(self) -> dict[str, Any]:
        m = self.model
        return {"kind": "stage1", "config": self.cfg.to_dict(), "data_dir": str(self.data),
                "encoder_kwargs": m.online.kwargs, "target_kind": self.cfg.vjepa2_world_model.stage1.target,
                "online": m.online.state_dict(), "target": m.target.state_dict(), "predictor": m.predictor.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "random_baseline": self.baseline}

    def load_state_dict(self, ckpt: dict[str, Any], path: Path) -> None:
        for name in ("online", "target", "predictor"):
            load_state(getattr(self.model, name), ckpt[name], path, name)
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.baseline = ckpt.get("random_baseline")


def _summary(task: Any, state: TrainState, run: RunLogger, ckpt_dir: Path, ckpt: dict[str, Any] | None,
             **extra: Any) -> dict[str, Any]:
    out = {"run_dir": str(run.dir), **extra, "epochs": state.epoch, "steps": state.step,
           "finished": finished(task, state), "stopped_early": task.patience > 0 and state.bad_epochs >= task.patience,
           "best_epoch": state.best_epoch,
           "best_val_loss": state.best, "best_checkpoint": str(ckpt_dir / "best.pt"),
           "latest_checkpoint": str(ckpt_dir / "latest.pt"), "history": state.history}
    if ckpt is not None:
        out["resumed_from"] = {"epoch": int(ckpt["epoch"]), "step": int(ckpt["step"])}
    return out


def pretrain_stage1(cfg: Config, data: str | Path | None = None, resume: str | Path | None = None,
                    max_epochs: int | None = None, max_steps: int | None = None, progress: bool = True,
                    echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Train Stage 1 and return its summary (paths, losses, diagnostics).

    ``data`` is the replay folder (None collects ``data.collect_steps`` random-policy steps into the run
    folder); ``resume`` a run folder holding ``stage1/latest.pt`` (its config replaces ``cfg``);
    ``max_epochs`` / ``max_steps`` cap this call (an interruption, for tests); ``echo`` prints progress lines.
    """
    ckpt = latest = None
    if resume is not None and (Path(resume) / STAGE1_DIR / "latest.pt").is_file():
        latest, ckpt, cfg = _resume(resume, STAGE1_DIR)
        data = ckpt["data_dir"]
    elif resume is not None:
        cfg, data = _restart(resume, echo)
        if data is None and (Path(resume) / "data").is_dir():
            data = Path(resume) / "data"
    s1 = cfg.vjepa2_world_model.stage1
    device = setup_torch(cfg)
    if cfg.run.threads == 0:
        torch.set_num_threads(1)  # shared machine: one core unless run.threads says otherwise
    grp = distributed.setup(device)
    if not grp.main:  # under torchrun rank 0 alone prints, shows progress and writes
        echo, progress = (lambda msg: None), False
    seed_everything(cfg.run.seed)
    np_rng = np.random.default_rng(cfg.run.seed)

    with open_run(cfg, "pretrain", run_dir=resume, resume=resume is not None) as run:
        echo(f"run folder: {run.dir}")
        if resume is not None and ckpt is None:
            run.rewind(0)  # the killed attempt saved no checkpoint: its rows are logged again
        if not (run.dir / INPUTS_FILE).is_file():
            run.write_json(INPUTS_FILE, {"data": None if data is None else str(data)})
        if data is None:
            from experiments.collect import collect, format_summary, summarize

            data = run.dir / "data"
            if grp.main:
                echo(f"collecting {cfg.data.collect_steps} random-policy steps into {data}")
                collect(cfg, data, cfg.data.collect_steps, policy=cfg.data.policy, progress=progress)
                summary = summarize(data, val_fraction=cfg.data.val_fraction, seed=cfg.run.seed)
                run.write_json("dataset_summary.json", summary)
                echo(format_summary(summary))
            distributed.barrier()  # the other ranks read the data rank 0 collected
        data = Path(data)
        seed_everything(cfg.run.seed)  # the same weights whether this run collected its data or found it
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
        task = Stage1Task(cfg, model, train_ds, val_ds, data, device, np_rng, echo)
        state = TrainState()
        if ckpt is not None:
            task.load_state_dict(ckpt, latest)
            state = restore(ckpt, task, run)
            run.log({"resumed_from_epoch": state.epoch, "resumed_from_step": state.step}, step=state.step)
            echo(f"resumed from {latest}: epoch {state.epoch}, step {state.step}")
        if task.baseline is None:
            task.baseline = random_baseline(cfg, train_ds, val_ds)
            run.log(_prefixed(task.baseline, "diag/random/"), step=state.step)

        ckpt_dir = run.dir / STAGE1_DIR
        model.train()
        state = fit(task, state, run, ckpt_dir, cfg.run.checkpoint_every_steps, max_epochs, max_steps, progress,
                    echo)
        result = _summary(task, state, run, ckpt_dir, ckpt, data_dir=str(data), target=s1.target)
        result["random_baseline"] = task.baseline
        run.write_json("stage1_summary.json", result)
        return result


class Stage2Task:
    """The world model over frozen latents: teacher forcing (scheduled sampling) + rollout + reward/continue heads."""

    name, lr_hint, log_every = "stage-2", "vjepa2_world_model.stage2.learning_rate", 20

    def __init__(self, cfg: Config, train_seq, val_seq, device: torch.device, rng: np.random.Generator,
                 extra: dict[str, Any]):
        s2 = cfg.vjepa2_world_model.stage2
        self.cfg, self.train_seq, self.val_seq, self.device, self.rng, self.extra = (cfg, train_seq, val_seq, device,
                                                                                     rng, extra)
        if device.type == "cuda":  # the latents (~100 MB per 100k frames) live on the GPU: no copy per batch
            train_seq.to(device), val_seq.to(device)
        self.model = build_world_model_transformer(cfg, NUM_ACTIONS).to(device)
        # every training transition that starts a sequence
        g = torch.from_numpy(train_seq.starts).to(train_seq.latents.device)
        self.model.set_normalization(train_seq.latents[g].to(device), train_seq.latents[g + 1].to(device))
        self.loss_fn = build_world_model_loss(cfg)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=s2.learning_rate, weight_decay=s2.weight_decay)
        per_epoch = len(train_seq) if s2.sequences_per_epoch == 0 else min(s2.sequences_per_epoch, len(train_seq))
        self.bs = min(s2.batch_size, per_epoch)
        self.steps_per_epoch = max(1, per_epoch // self.bs)
        total = self.steps_per_epoch * s2.num_epochs
        warmup = min(100, total // 20)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_lambda(s, warmup, total))
        self.num_epochs, self.patience = s2.num_epochs, s2.early_stopping_patience
        self.group = distributed.group()
        self.step_fn: torch.nn.Module = _LossOf(self.model, self.loss_fn)
        if self.group.active:  # a torchrun group: each rank trains on its rows of the global batch
            if self.bs % self.group.world:
                raise UserError(f"vjepa2_world_model.stage2.batch_size={self.bs} does not split into "
                                f"{self.group.world} equal shares; pass a batch size divisible by --nproc_per_node")
            self.step_fn = distributed.wrap(self.step_fn, device)

    def epoch_order(self) -> np.ndarray:
        return self.train_seq.order(self.rng, self.steps_per_epoch * self.bs,
                                    self.cfg.vjepa2_world_model.stage2.reward_oversample)

    def train_step(self, i: int, order: np.ndarray, state: TrainState) -> tuple[dict[str, float], dict[str, float]]:
        idx = order[i * self.bs:(i + 1) * self.bs]  # the global batch, alike on every rank
        batch = self.train_seq.batch(idx[distributed.shard(len(idx))], self.device)  # this rank's rows
        with autocast(self.cfg, self.device):
            out = self.step_fn(batch)
        grad_norm = optimizer_step(out["loss"], list(self.model.parameters()), self.opt, self.sched,
                                   self.cfg.vjepa2_world_model.stage2.grad_clip)
        values = distributed.means({k: float(out[k].detach()) for k in METRICS})
        row = {**{f"train/stage2/{k}": v for k, v in values.items()},
               "train/stage2/tf_keep_fraction": float(out["tf_keep_fraction"]),
               "train/stage2/lr": self.sched.get_last_lr()[0], "train/stage2/grad_norm": grad_norm}
        return values, row

    def end_epoch(self, state: TrainState) -> tuple[float, dict[str, Any], dict[str, Any], str]:
        # Every rank validates its share of the batches (an all-reduce sums them); rank 0's verdict is broadcast,
        # so early stopping agrees across a torchrun group.
        val = evaluate_losses(self.model, self.loss_fn, self.val_seq, device=self.device, reduce=distributed.sums,
                              share=(self.group.rank, self.group.world))
        return distributed.broadcast(self._validate(state, val) if self.group.main else None)

    def _validate(self, state: TrainState, val: dict[str, float]) -> tuple[float, dict[str, Any], dict[str, Any], str]:
        train = {k: sum(state.values[k]) / self.steps_per_epoch for k in METRICS}
        ratio = val["latent_total"] / max(train["latent_total"], 1e-12)
        rate = self.steps_per_epoch * self.bs / max(state.epoch_seconds, 1e-9)
        row = {"epoch": state.epoch, "train": train, "val": val, "val_train_ratio": ratio}
        # The seed's Total Loss decides (the noisy heads do not).
        metrics = {**_prefixed(train, "train/stage2/epoch_"), **_prefixed(val, "val/stage2/"),
                   "val/stage2/train_ratio": ratio, "val/stage2/best_loss": min(state.best, val["latent_total"]),
                   "stage2/epoch": state.epoch, "perf/stage2_sequences_per_s": rate,
                   "perf/stage2_epoch_train_s": state.epoch_seconds}
        line = (f"epoch {state.epoch}: train total {train['latent_total']:.4f} (TF {train['teacher_forcing']:.4f}, "
                f"rollout {train['rollout']:.4f}, reward {train['reward']:.4f}, continue {train['continue']:.4f})  "
                f"val total {val['latent_total']:.4f} (TF {val['teacher_forcing']:.4f}, rollout {val['rollout']:.4f}, "
                f"reward {val['reward']:.4f}, continue {val['continue']:.4f})  ratio {ratio:.2f}  ({rate:.0f} seq/s)")
        return val["latent_total"], row, metrics, line

    def parameters_to_check(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "stage2", "config": self.cfg.to_dict(), **self.extra,
                "world_model_kwargs": self.model.kwargs, "world_model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def load_state_dict(self, ckpt: dict[str, Any], path: Path) -> None:
        load_state(self.model, ckpt["world_model"], path, "world_model")
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])


class _LossOf(torch.nn.Module):
    """The world model's training loss as one module call, so that DistributedDataParallel sees a single forward
    (the loss runs the model several times: scheduled sampling, teacher forcing, the rollout)."""

    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss_fn(self.model, batch, train=True)


def load_stage1_encoder(path: str | Path, cfg: Config) -> torch.nn.Module:
    """The frozen encoder of ``path``, checked against the config's latent size: a Stage-1 checkpoint's EMA target
    encoder, or the encoder a Stage-2 checkpoint carries (a `learn` run's ``world_model.pt`` holds the loop's last
    fine-tuned encoder, so Stage 2 can be refit over it from scratch)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    kind = ckpt["kind"]
    if kind == "stage1":
        enc = load_encoder(path)
    elif kind == "stage2":
        require(ckpt, path, REQUIRED["stage2"])
        enc = encoder_from_checkpoint(ckpt, path).eval().requires_grad_(False)
    else:
        raise UserError(f"--stage1-checkpoint {path} is a {kind!r} checkpoint; Stage 2 needs the 'stage1' checkpoint "
                        "of `run.py pretrain --stage 1` (e.g. runs/pretrain/<run>/stage1/best.pt) or a 'stage2' "
                        "checkpoint whose encoder it reuses (e.g. a learn run's world_model.pt)")
    D = cfg.models.shared_latent_dim
    if enc.latent_dim != D:
        raise UserError(f"stage-1 checkpoint {path} has latent size {enc.latent_dim} but models.shared_latent_dim is "
                        f"{D}; pass --set models.shared_latent_dim={enc.latent_dim} or a stage-1 checkpoint with "
                        f"latent size {D}")
    return enc


def refit_split(source: dict[str, Any], data: str | Path, cfg: Config) -> str:
    """The episode split for Stage 2 over ``data`` from the checkpoint ``source`` whose encoder it reuses: that run's
    own split (``"stable"`` for a `learn` run's ``world_model.pt``) when ``data`` is the replay it was trained on with
    the same seed and validation share, so that a refit after the fact holds out the episodes the loop's own refit
    held out; otherwise pretrain's ``"permutation"``."""
    split = source.get("episode_split")
    if not split or not source.get("data_dir") or Path(source["data_dir"]).resolve() != Path(data).resolve():
        return "permutation"
    run = source.get("config", {}).get("run", {})
    val = source.get("config", {}).get("data", {}).get("val_fraction")
    same = run.get("seed") == cfg.run.seed and val == cfg.data.val_fraction
    return split if same else "permutation"


def pretrain_stage2(cfg: Config, stage1_checkpoint: str | Path | None = None, data: str | Path | None = None,
                    resume: str | Path | None = None, run_dir: str | Path | None = None,
                    max_epochs: int | None = None, max_steps: int | None = None, progress: bool = True,
                    echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Train Stage 2 over the frozen (EMA target) encoder of ``stage1_checkpoint``; returns its summary.

    ``data`` defaults to the folder the Stage-1 checkpoint was trained on; ``run_dir`` writes into an
    existing run folder (``pretrain`` without ``--stage`` puts both stages in one); the other arguments are
    those of :func:`pretrain_stage1`.
    """
    ckpt = latest = None
    split = "permutation"  # pretrain's episode split; a refit over a learn run's own replay keeps the loop's
    if resume is not None:
        latest, ckpt, cfg = _resume(resume, STAGE2_DIR)
        data, stage1_checkpoint = ckpt["data_dir"], ckpt.get("stage1_checkpoint")
        split = ckpt.get("episode_split", split)
        run_dir = resume
    elif stage1_checkpoint is None:
        raise UserError("stage 2 needs a stage-1 encoder; pass --stage1-checkpoint runs/pretrain/<run>/stage1/best.pt")
    s2 = cfg.vjepa2_world_model.stage2
    device = setup_torch(cfg)
    if cfg.run.threads == 0:
        torch.set_num_threads(1)  # shared machine: one core unless run.threads says otherwise
    grp = distributed.setup(device)
    if not grp.main:  # under torchrun rank 0 alone prints, shows progress and writes
        echo, progress = (lambda msg: None), False
    seed_everything(cfg.run.seed)
    np_rng = np.random.default_rng(cfg.run.seed + 2)

    if ckpt is not None:
        encoder = encoder_from_checkpoint(ckpt, latest).eval().requires_grad_(False)
    else:
        encoder = load_stage1_encoder(stage1_checkpoint, cfg)
        source = load_checkpoint(stage1_checkpoint)
        if data is None:
            data = source.get("data_dir")
            if not data:
                raise UserError(f"stage-1 checkpoint {stage1_checkpoint} does not record its data folder; pass --data")
        split = refit_split(source, data, cfg)
    encoder = encoder.to(device)
    enc_fp = encoder_fingerprint(encoder)

    with open_run(cfg, "pretrain", run_dir=run_dir, resume=run_dir is not None) as run:
        echo(f"run folder: {run.dir}")
        data = Path(data)
        if split != "permutation":
            echo(f"stage 2: the {split} episode split of the run that wrote {stage1_checkpoint} (its validation "
                 "episodes stay unseen)")
        train_seq, val_seq, cache = load_sequences(cfg, data, encoder, device, progress, split=split)  # shared
        echo(f"stage 2: latents {'encoded' if cache['rebuilt'] else 'loaded from cache'} in {cache['seconds']:.1f}s "
             f"({cache['path']}); {len(train_seq)} train / {len(val_seq)} val sequences of {s2.sequence_length}")
        extra = {"data_dir": str(data), "stage1_checkpoint": str(stage1_checkpoint) if stage1_checkpoint else "",
                 "episode_split": split, "encoder_kwargs": encoder.vit.kwargs, "encoder_fingerprint": enc_fp,
                 "encoder": {k: v.detach().cpu() for k, v in encoder.vit.state_dict().items()}}
        task = Stage2Task(cfg, train_seq, val_seq, device, np_rng, extra)
        state = TrainState()
        if ckpt is not None:
            task.load_state_dict(ckpt, latest)
            state = restore(ckpt, task, run)
            run.log({"stage2/resumed_from_epoch": state.epoch, "stage2/resumed_from_step": state.step},
                    step=state.step)
            echo(f"resumed from {latest}: epoch {state.epoch}, step {state.step}")

        ckpt_dir = run.dir / STAGE2_DIR
        task.model.train()
        state = fit(task, state, run, ckpt_dir, cfg.run.checkpoint_every_steps, max_epochs, max_steps, progress,
                    echo)
        result = _summary(task, state, run, ckpt_dir, ckpt, data_dir=str(data),
                          stage1_checkpoint=str(stage1_checkpoint or ""))
        result["latent_cache"] = cache
        run.write_json("stage2_summary.json", result)
        return result


def pretrain_both(cfg: Config, data: str | Path | None = None, resume: str | Path | None = None,
                  progress: bool = True, echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """The seed's "train both stages sequentially": collection (unless ``data``), Stage 1, then Stage 2 on the
    best Stage-1 checkpoint, all in one run folder. ``resume`` continues whichever stage was interrupted."""
    if resume is not None and (Path(resume) / STAGE2_DIR / "latest.pt").is_file():
        return pretrain_stage2(cfg, resume=resume, progress=progress, echo=echo)
    r1 = pretrain_stage1(cfg, data=data, resume=resume, progress=progress, echo=echo)
    r1 = distributed.broadcast(r1)  # the other ranks learn rank 0's paths and best checkpoint
    if resume is not None:  # the stage-1 checkpoint's config is the run's config
        cfg = config_from_dict(load_checkpoint(r1["latest_checkpoint"], kind="stage1")["config"])
    echo(f"stage 1 done: best val loss {r1['best_val_loss']:.4f} (epoch {r1['best_epoch']}); starting stage 2")
    return pretrain_stage2(cfg, stage1_checkpoint=r1["best_checkpoint"], data=r1["data_dir"], run_dir=r1["run_dir"],
                           progress=progress, echo=echo)

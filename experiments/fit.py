"""The one training loop: Stage 1, Stage 2 and the actor-critic are small tasks on it.

A :class:`Task` says how to build a batch order, take one training step, validate at the end of an
epoch and what its checkpoint adds. :func:`fit` owns everything else, once:

- the :class:`TrainState` (step, epoch, best, patience, history, the epoch's batch order and
  position, per-step values of the running epoch) and the RNG states (torch, the task's numpy
  generator), saved and restored in one place;
- checkpoints, written atomically every ``checkpoint_every_steps`` steps and at each epoch end
  (``latest.pt``; ``best.pt`` when validation improves), so a kill anywhere, even inside the first
  epoch, resumes to the same weights as an uninterrupted run;
- a non-finite guard: a loss or weight that is not finite stops training with one sentence and a
  hint (lower the learning rate), before anything is written, so a good checkpoint is never
  overwritten by a diverged one;
- progress (a bar redrawn at most every 30 s when stderr is not a terminal) and metric logging.

``fit`` can be called again on the same task and state with more epochs (``task.num_epochs``) or
``max_steps``: it trains N more updates from a warm state, which the closed loop needs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from envs.errors import UserError
from experiments.runlog import RunLogger, tqdm
from worldmodel.checkpoint import save_checkpoint


class TrainingDiverged(UserError):
    """A loss or weight became NaN or infinite; nothing was written after it."""


@dataclass
class TrainState:
    """Everything about a run's progress that is not a module, optimizer or RNG."""

    step: int = 0  # optimizer steps so far
    epoch: int = 0  # completed epochs
    best: float = math.inf  # best validation score (lower is better)
    bad_epochs: int = 0  # epochs since the best one
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per completed epoch
    batch_in_epoch: int = 0  # steps done in the running epoch (0 = at an epoch boundary)
    order: np.ndarray | None = None  # the running epoch's batch order (drawn by the task)
    values: dict[str, list[float]] = field(default_factory=dict)  # per-step values of the running epoch
    epoch_seconds: float = 0.0  # training time spent in the running epoch

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "history": self.history,
                "early_stopping": {"best_val": self.best, "bad_epochs": self.bad_epochs,
                                   "best_epoch": self.best_epoch},
                "in_epoch": {"batch": self.batch_in_epoch, "values": self.values, "seconds": self.epoch_seconds,
                             "order": None if self.order is None else torch.from_numpy(np.asarray(self.order))}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        es, ie = d["early_stopping"], d.get("in_epoch") or {}
        order = ie.get("order")
        return cls(step=int(d["step"]), epoch=int(d["epoch"]), best=float(es["best_val"]),
                   bad_epochs=int(es["bad_epochs"]), best_epoch=int(es["best_epoch"]), history=list(d["history"]),
                   batch_in_epoch=int(ie.get("batch", 0)), order=None if order is None else order.numpy(),
                   values={k: list(v) for k, v in (ie.get("values") or {}).items()},
                   epoch_seconds=float(ie.get("seconds", 0.0)))


class Task(Protocol):
    """What :func:`fit` needs to train one thing."""

    name: str  # "stage-1", "stage-2", "actor-critic": progress bars and messages
    lr_hint: str  # the config key to lower when training diverges
    num_epochs: int
    steps_per_epoch: int
    patience: int  # epochs without improvement before stopping (0 = never stop early)
    log_every: int  # steps between train/* metric rows
    rng: np.random.Generator  # the task's numpy generator (its state is checkpointed)

    def epoch_order(self) -> np.ndarray | None:
        """The batch order of a new epoch (drawn from ``rng``), or None."""

    def train_step(self, i: int, order: np.ndarray | None, state: TrainState) -> tuple[dict[str, float],
                                                                                       dict[str, float]]:
        """Step ``i`` of the epoch: ``(values, log_row)``; ``values["loss"]`` is checked for finiteness and every
        value is kept for the epoch's means, ``log_row`` goes to the metrics every ``log_every`` steps."""

    def end_epoch(self, state: TrainState) -> tuple[float | None, dict[str, Any], dict[str, Any], str]:
        """After each epoch: ``(score, history_row, metrics, line)``; lower ``score`` is better (None: no
        validation, so no best checkpoint and no early stopping)."""

    def parameters_to_check(self) -> list[torch.Tensor]:
        """Tensors that must be finite before a checkpoint is written."""

    def state_dict(self) -> dict[str, Any]:
        """What this task's checkpoint adds (modules, optimizers, config...), as ``weights_only`` types."""


def rng_state(np_rng: np.random.Generator) -> dict[str, Any]:
    """The torch and numpy RNG states, as checkpoint-safe values."""
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(np_rng.bit_generator.state)}


def set_rng_state(state: dict[str, Any], np_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np_rng.bit_generator.state = json.loads(state["numpy"])


def restore(ckpt: dict[str, Any], task: Task, run: RunLogger | None = None) -> TrainState:
    """The TrainState of a checkpoint written by :func:`fit`, with the RNG states put back; with ``run``, the
    metrics rows logged after the checkpoint are dropped (the resumed run logs those steps again)."""
    set_rng_state(ckpt["rng"], task.rng)
    if run is not None:
        run.rewind(ckpt.get("metrics_offset"))
    return TrainState.from_dict(ckpt)


def _check_finite(task: Task, what: str, value: float | None, step: int) -> None:
    if value is not None and math.isfinite(value):
        return
    raise TrainingDiverged(f"{task.name} training diverged: the {what} became {value} at step {step}; nothing was "
                           f"saved after the last good checkpoint; lower {task.lr_hint} (e.g. by 10x) and start again")


def save(task: Task, state: TrainState, path: Path, summary: dict[str, Any] | None = None,
         run: RunLogger | None = None) -> Path:
    """Write a checkpoint atomically, after checking every weight is finite (with ``run``: where its metrics
    stand, for :func:`restore`). In a torchrun group only rank 0 writes."""
    from experiments import distributed

    for t in task.parameters_to_check():
        if not bool(torch.isfinite(t).all()):
            _check_finite(task, "weights", float("nan"), state.step)
    offset = {} if run is None else {"metrics_offset": run.metrics_offset}
    if not distributed.group().main:
        return path
    return save_checkpoint({**task.state_dict(), **state.to_dict(), "rng": rng_state(task.rng),
                            "summary": summary or {}, **offset}, path)


def fit(task: Task, state: TrainState, run: RunLogger, ckpt_dir: Path, checkpoint_every_steps: int = 0,
        max_epochs: int | None = None, max_steps: int | None = None, progress: bool = True,
        echo: Callable[[str], None] = print, latest: str = "latest.pt") -> TrainState:
    """Train ``task`` from ``state`` until ``task.num_epochs`` epochs, early stopping, or this call's caps.

    Args:
        task: what to train.
        state: where training stands (a fresh :class:`TrainState` or :func:`restore` of a checkpoint).
        run: the run's logger (metrics.jsonl and wandb).
        ckpt_dir: ``latest`` and ``best.pt`` go here.
        checkpoint_every_steps: also write ``latest.pt`` every this many steps inside an epoch (0 = only at
            epoch ends).
        max_epochs: stop after this many epochs in this call (None = no cap).
        max_steps: stop after this many steps in this call, checkpointing where it stops (None = no cap).
        progress: show a progress bar per epoch.
        echo: where the per-epoch line goes.
        latest: file name of the resumable checkpoint.

    Returns:
        The state after training (also in ``ckpt_dir/latest``).
    """
    epochs_this_call, steps_this_call = 0, 0
    stopped = task.patience > 0 and state.bad_epochs >= task.patience
    while state.epoch < task.num_epochs and not stopped:
        if (max_epochs is not None and epochs_this_call >= max_epochs) or \
                (max_steps is not None and steps_this_call >= max_steps):
            break  # at an epoch boundary, whose checkpoint is already written
        if state.batch_in_epoch == 0:
            state.order, state.values, state.epoch_seconds = task.epoch_order(), {}, 0.0
        t0 = time.perf_counter()
        bar = tqdm(range(state.batch_in_epoch, task.steps_per_epoch), total=task.steps_per_epoch,
                   initial=state.batch_in_epoch, desc=f"{task.name} epoch {state.epoch + 1}/{task.num_epochs}",
                   unit="step", disable=not progress, leave=False)
        interrupted = False
        for i in bar:
            if max_steps is not None and steps_this_call >= max_steps:
                interrupted = True
                break
            values, row = task.train_step(i, state.order, state)
            _check_finite(task, "loss", values.get("loss"), state.step + 1)
            state.step += 1
            state.batch_in_epoch = i + 1
            steps_this_call += 1
            for k, v in values.items():
                state.values.setdefault(k, []).append(v)
            bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
            if row and (state.step % task.log_every == 0 or i == task.steps_per_epoch - 1):
                run.log(row, step=state.step)
            if checkpoint_every_steps and state.step % checkpoint_every_steps == 0 and i + 1 < task.steps_per_epoch:
                state.epoch_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                save(task, state, ckpt_dir / latest, run=run)
        bar.close()
        state.epoch_seconds += time.perf_counter() - t0
        if interrupted:
            save(task, state, ckpt_dir / latest, run=run)
            break
        state.epoch += 1
        state.batch_in_epoch = 0
        epochs_this_call += 1
        score, hist_row, metrics, line = task.end_epoch(state)
        improved = score is not None and score < state.best
        if improved:
            state.best, state.bad_epochs, state.best_epoch = score, 0, state.epoch
        elif score is not None:
            state.bad_epochs += 1
        stopped = task.patience > 0 and state.bad_epochs >= task.patience
        state.history.append(hist_row)
        if metrics:
            run.log(metrics, step=state.step)
        if line:
            echo(line)
        state.order, state.values = None, {}
        summary = {"epoch": state.epoch, "step": state.step, "best_epoch": state.best_epoch,
                   "best_val_loss": state.best}
        if improved:
            save(task, state, ckpt_dir / "best.pt", summary, run)
        save(task, state, ckpt_dir / latest, summary, run)
        if stopped:
            echo(f"early stopping: no validation improvement for {state.bad_epochs} epochs "
                 f"(best epoch {state.best_epoch})")
    return state


def finished(task: Task, state: TrainState) -> bool:
    """Whether training is over: all epochs done, or stopped early."""
    return state.epoch >= task.num_epochs or (task.patience > 0 and state.bad_epochs >= task.patience)


def lr_lambda(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_step(loss: torch.Tensor, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
                   sched: torch.optim.lr_scheduler.LRScheduler | None, grad_clip: float) -> float:
    """Backward, clip the global grad norm, step optimizer (and scheduler); returns the grad norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    if sched is not None:
        sched.step()
    return float(grad_norm)

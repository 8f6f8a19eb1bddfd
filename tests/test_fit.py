"""The one training loop: exact resume (in process and after SIGKILL), the non-finite guard, warm restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from envs.errors import UserError
from experiments.config import load_config
from experiments.fit import TrainingDiverged, TrainState, fit, lr_lambda, optimizer_step, restore
from experiments.runlog import RunLogger
from worldmodel.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class ToyTask:
    """Noisy linear regression: uses the numpy generator (batch order) and torch's RNG (noise), like the stages."""

    name, lr_hint, log_every, num_epochs, steps_per_epoch, patience = "toy", "toy.lr", 2, 3, 5, 2

    def __init__(self, seed: int = 0, lr: float = 0.1, nan_at: int | None = None):
        torch.manual_seed(seed)
        self.net = nn.Linear(3, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(20, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]])
        self.nan_at = nan_at
        self.also_checked: list[torch.Tensor] = []

    def epoch_order(self):
        return self.rng.permutation(20)

    def train_step(self, i, order, state):
        idx = torch.from_numpy(order[i * 4:(i + 1) * 4])
        loss = ((self.net(self.x[idx]) - self.y[idx]) ** 2).mean() + 0.01 * torch.randn(())
        if self.nan_at is not None and state.step + 1 >= self.nan_at:
            loss = loss * float("nan")
        optimizer_step(loss, list(self.net.parameters()), self.opt, None, 10.0)
        return {"loss": loss.item()}, {"train/loss": loss.item()}

    def end_epoch(self, state):
        with torch.no_grad():
            val = float(((self.net(self.x) - self.y) ** 2).mean())
        return val, {"epoch": state.epoch, "val": val, "train": float(np.mean(state.values["loss"]))}, {"val": val}, ""

    def parameters_to_check(self):
        return list(self.net.parameters()) + self.also_checked

    def state_dict(self):
        return {"kind": "toy", "net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, ckpt):
        self.net.load_state_dict(ckpt["net"])
        self.opt.load_state_dict(ckpt["opt"])


def _run(tmp_path: Path, name: str) -> RunLogger:
    cfg = load_config("tiny", [f"run.runs_dir={tmp_path}", "run.wandb=disabled"])
    return RunLogger(cfg, name)


def test_fit_trains_checkpoints_and_tracks_best(tmp_path):
    task = ToyTask()
    with _run(tmp_path, "a") as run:
        state = fit(task, TrainState(), run, run.dir / "ckpt", progress=False)
    assert state.epoch == 3 and state.step == 15 and len(state.history) == 3
    assert state.best == min(h["val"] for h in state.history)
    assert state.history[-1]["val"] < 0.5 * state.history[0]["val"]
    best = load_checkpoint(run.dir / "ckpt" / "best.pt", kind="toy")
    assert best["epoch"] == state.best_epoch


@pytest.mark.parametrize("cut", [3, 7, 10])  # inside epoch 1, inside epoch 2, at the epoch-2 boundary
def test_interrupted_fit_resumes_to_the_same_weights(tmp_path, cut):
    ref = ToyTask()
    with _run(tmp_path, "ref") as run:
        ref_state = fit(ref, TrainState(), run, run.dir / "ckpt", progress=False)
    first = ToyTask()
    with _run(tmp_path, "cut") as run:
        fit(first, TrainState(), run, run.dir / "ckpt", checkpoint_every_steps=0, max_steps=cut, progress=False)
        ckpt_dir = run.dir / "ckpt"
    torch.manual_seed(999)  # whatever the process did in between, the checkpoint's RNG states are put back
    second = ToyTask(seed=5)  # other initial weights and generator: all overwritten by the checkpoint
    ckpt = load_checkpoint(ckpt_dir / "latest.pt", kind="toy")
    second.load_state_dict(ckpt)
    state = restore(ckpt, second)
    assert state.step == cut
    with _run(tmp_path, "resumed") as run:
        state = fit(second, state, run, ckpt_dir, progress=False)
    assert state.step == ref_state.step and state.history == ref_state.history
    for a, b in zip(ref.net.parameters(), second.net.parameters()):
        assert torch.equal(a, b)


def test_fit_trains_more_from_a_warm_state(tmp_path):
    """The closed loop's use: call fit again with more epochs on the same task and state."""
    task = ToyTask()
    with _run(tmp_path, "warm") as run:
        state = fit(task, TrainState(), run, run.dir / "ckpt", progress=False)
        task.num_epochs = 5
        task.patience = 0
        state = fit(task, state, run, run.dir / "ckpt", progress=False)
    assert state.epoch == 5 and state.step == 25


def test_non_finite_loss_stops_with_one_sentence_and_keeps_the_last_checkpoint(tmp_path):
    task = ToyTask(nan_at=9)
    with _run(tmp_path, "nan") as run:
        ckpt_dir = run.dir / "ckpt"
        with pytest.raises(TrainingDiverged) as err:
            fit(task, TrainState(), run, ckpt_dir, checkpoint_every_steps=2, progress=False)
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg
    assert "diverged" in msg and "step 9" in msg and "lower toy.lr" in msg
    latest = load_checkpoint(ckpt_dir / "latest.pt", kind="toy")
    assert latest["step"] == 8 and all(torch.isfinite(v).all() for v in latest["net"].values())
    assert load_checkpoint(ckpt_dir / "best.pt", kind="toy")["epoch"] == 1


def test_non_finite_weights_are_never_saved(tmp_path):
    task = ToyTask()
    with _run(tmp_path, "w") as run:
        fit(task, TrainState(), run, run.dir / "ckpt", max_steps=5, progress=False)
        before = (run.dir / "ckpt" / "latest.pt").read_bytes()
        task.also_checked = [torch.tensor([1.0, float("inf")])]  # a weight the loss does not see went bad
        with pytest.raises(TrainingDiverged, match="weights became nan"):
            fit(task, TrainState.from_dict(load_checkpoint(run.dir / "ckpt" / "latest.pt")), run,
                run.dir / "ckpt", checkpoint_every_steps=1, progress=False)
        assert (run.dir / "ckpt" / "latest.pt").read_bytes() == before


def test_lr_schedule_warms_up_then_decays():
    assert lr_lambda(0, 10, 100) == pytest.approx(0.1)
    assert lr_lambda(9, 10, 100) == pytest.approx(1.0)
    assert lr_lambda(55, 10, 100) == pytest.approx(0.5)
    assert lr_lambda(100, 10, 100) == pytest.approx(0.0)


# ----------------------------------------------------------------------------------------- SIGKILL
# The child process trains with a checkpoint every 2 steps; after the first checkpoint inside the first epoch it
# takes one more step, says so, and waits to be killed (so the kill always lands inside the first epoch, with a
# step done after the checkpoint that the resumed run must redo).
CHILD = """
import os, sys, time
sys.path.insert(0, {root!r})
import experiments.fit as fit_mod
ready = {ready!r}
orig_save, seen = fit_mod.save, {{"ckpt": False}}
def save(task, state, path, summary=None, run=None):
    out = orig_save(task, state, path, summary, run)
    if state.epoch == 0 and state.batch_in_epoch > 0:
        seen["ckpt"] = True
    return out
fit_mod.save = save
orig_check = fit_mod._check_finite
def check(task, what, value, step):
    orig_check(task, what, value, step)
    if seen["ckpt"] and what == "loss":
        open(ready + ".tmp", "w").write(str(step))
        os.replace(ready + ".tmp", ready)  # the parent never reads a half-written file
        time.sleep(600)
fit_mod._check_finite = check
{body}
"""


def _kill_when_ready(module: str, call: str, sets: list[str], tmp_path: Path) -> int:
    """Run ``from module import *; call`` with ``cfg = load_config('tiny', sets)`` (runs under tmp_path/killed)
    in a child process, SIGKILL it at the kill point, and return the step it was killed in."""
    child_sets = [*sets, f"run.runs_dir={tmp_path / 'killed'}"]
    body = (f"from experiments.config import load_config\nfrom {module} import *\n"
            f"cfg = load_config('tiny', {child_sets!r})\n{call}\n")
    ready = tmp_path / "ready"
    code = CHILD.format(root=str(ROOT), ready=str(ready), body=body)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended before the kill point: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, "child never reached the kill point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return int(ready.read_text())


def _only_run(folder: Path) -> Path:
    runs = [p for p in folder.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_stage1_killed_in_its_first_epoch_resumes_to_the_same_weights(tiny_data, tmp_path):
    from experiments.pretrain import pretrain_stage1

    sets = ["run.wandb=disabled", "run.checkpoint_every_steps=2"]
    killed_at = _kill_when_ready("experiments.pretrain", f"pretrain_stage1(cfg, data={str(tiny_data)!r}, "
                                 "progress=False, echo=lambda s: None)", sets, tmp_path)
    run_dir = _only_run(tmp_path / "killed" / "pretrain")
    saved = load_checkpoint(run_dir / "stage1" / "latest.pt", kind="stage1")
    assert saved["epoch"] == 0 and saved["step"] == killed_at - 1  # a mid-epoch checkpoint, one step behind
    resumed = pretrain_stage1(load_config("tiny"), resume=run_dir, progress=False, echo=lambda s: None)
    full = pretrain_stage1(load_config("tiny", sets + [f"run.runs_dir={tmp_path / 'full'}"]), data=tiny_data,
                           progress=False, echo=lambda s: None)
    assert resumed["resumed_from"] == {"epoch": 0, "step": killed_at - 1} and resumed["finished"]
    a = load_checkpoint(resumed["latest_checkpoint"], kind="stage1")
    b = load_checkpoint(full["latest_checkpoint"], kind="stage1")
    for part in ("online", "target", "predictor"):
        for key in b[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert resumed["history"] == full["history"]


def test_actor_critic_killed_mid_training_resumes_to_the_same_weights(tiny_data, tmp_path):
    from experiments.train_agent import train_agent
    from tests.conftest import save_untrained_world_model

    wm = save_untrained_world_model(tmp_path / "wm.pt", data_dir=tiny_data)
    sets = ["run.wandb=disabled", "agent.checkpoint_every=4", "agent.updates=12", "agent.start_latents=200"]
    killed_at = _kill_when_ready("experiments.train_agent", f"train_agent(cfg, {str(wm)!r}, progress=False)", sets,
                                 tmp_path)
    run_dir = _only_run(tmp_path / "killed" / "train-agent")
    assert load_checkpoint(run_dir / "agent.pt", kind="agent")["step"] == killed_at - 1
    resumed = train_agent(load_config("tiny"), resume=run_dir, progress=False)
    full = train_agent(load_config("tiny", sets + [f"run.runs_dir={tmp_path / 'full'}"]), wm, progress=False)
    assert resumed["updates"] == full["updates"] == 12 and resumed["resumed_from"] == killed_at - 1
    a = load_checkpoint(resumed["checkpoint"], kind="agent")["state"]
    b = load_checkpoint(full["checkpoint"], kind="agent")["state"]
    for part in ("actor", "critic", "slow_critic"):
        for key in b[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"

"""A world model per training seed, for `compare-baselines`: collect, pretrain, train the actor-critic.

``compare-baselines --agents cem,actor-critic`` without ``--world-model`` trains, for every seed ``s``,
its own stack in ``<out>/world-models/s<s>/``::

    data/                  random-policy replay (min(data.collect_steps, baselines.agent_steps) steps,
                           game seeds from the training range of seed s)
    pretrain/<run>/        Stage 1 and Stage 2 (`run.py pretrain` on that data, run.seed = s)
    train-agent/<run>/     the actor-critic in imagination (`run.py train-agent`, run.seed = s)
    stack.json             paths, env steps, wall-clock of each phase and the settings it was trained with

Each phase resumes where it stopped (collection restarts, pretraining and the actor-critic continue from
their last checkpoint), and a finished stack is reused by every world-model agent of that seed. A stack
trained with other settings than the comparison's is refused (one sentence) instead of mixed in.

The seed is the largest source of variance we know for these agents (a different Stage-1 seed moves the
actor-critic from 8.4 to 5.6 on the quick preset), so a table over seeds needs a world model per seed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import click

from envs.errors import UserError
from experiments.config import Config
from experiments.runlog import write_json

STACK_FILE = "stack.json"
# The config sections that decide what a stack is (the comparison folder's marker covers the rest).
STACK_SECTIONS = ("data", "models", "vjepa2_world_model", "agent", "environment")


def stack_dir(out: Path, seed: int) -> Path:
    return Path(out) / "world-models" / f"s{seed}"


def _settings(cfg: Config) -> dict[str, Any]:
    tree = cfg.to_dict()
    return {k: tree.get(k) for k in STACK_SECTIONS}


def _only_run(folder: Path, marker: str) -> Path | None:
    """The one run folder under ``folder`` holding ``marker`` (None when there is none)."""
    runs = sorted(p.parent for p in folder.glob(f"*/{marker}")) if folder.is_dir() else []
    return runs[-1] if runs else None


def world_model_stack(cfg: Config, seed: int, out: Path, progress: bool = True) -> dict[str, Any]:
    """The finished stack of ``seed`` under ``out`` (trained now, or resumed, when it is not finished)."""
    root = stack_dir(out, seed)
    done = root / STACK_FILE
    settings = _settings(cfg)
    if done.is_file():
        stack = json.loads(done.read_text())
        if stack.get("settings") != json.loads(json.dumps(settings)):
            raise UserError(f"the world model of seed {seed} in {root} was trained with other settings than this "
                            "comparison's; pass a new --out folder or the settings it was started with")
        return stack
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed, runs_dir=str(root)))
    root.mkdir(parents=True, exist_ok=True)
    echo = (lambda msg: click.echo(f"      [world model s{seed}] {msg}")) if progress else (lambda msg: None)
    phases = json.loads((root / "phases.json").read_text()) if (root / "phases.json").is_file() else {}

    def lap(name: str, t0: float) -> None:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
        write_json(root / "phases.json", phases)

    steps = min(cfg.data.collect_steps, cfg.baselines.agent_steps)
    data = root / "data"
    if not (root / "data.done").is_file():
        from experiments.collect import collect

        t0 = time.perf_counter()
        if data.exists():  # an interrupted collection: start it again
            shutil.rmtree(data)
        echo(f"collecting {steps:,} random-policy steps into {data}")
        collect(cfg, data, steps, policy="random", seed=seed, progress=progress)
        (root / "data.done").write_text(str(steps))
        lap("collect_s", t0)

    from experiments.pretrain import pretrain_both

    t0 = time.perf_counter()
    pre = _only_run(root / "pretrain", "stage2_summary.json")
    if pre is None:
        started = _only_run(root / "pretrain", "config.yaml")
        if started is not None and not (started / "stage1" / "latest.pt").is_file():
            shutil.rmtree(started)  # stopped before its first checkpoint: nothing to resume
            started = None
        pretrain_both(cfg, data=None if started else data, resume=started, progress=progress, echo=echo)
        pre = _only_run(root / "pretrain", "stage2_summary.json")
        assert pre is not None, f"pretraining in {root / 'pretrain'} wrote no stage2_summary.json"
        lap("pretrain_s", t0)
    world_model = pre / "stage2" / "best.pt"

    from experiments.train_agent import train_agent

    t0 = time.perf_counter()
    trained = _only_run(root / "train-agent", "summary.json")
    if trained is None:
        started = _only_run(root / "train-agent", "agent.pt")
        for run in (root / "train-agent").glob("*/"):
            if run != started:
                shutil.rmtree(run)  # stopped before its first checkpoint
        train_agent(cfg, world_model=None if started else world_model, data=data, resume=started, progress=progress)
        trained = _only_run(root / "train-agent", "summary.json")
        assert trained is not None, f"train-agent in {root / 'train-agent'} wrote no summary.json"
        lap("agent_s", t0)
    stack = {"seed": seed, "data": str(data), "env_steps": steps, "world_model": str(world_model),
             "agent_checkpoint": str(trained / "agent.pt"), "pretrain_run": str(pre), "agent_run": str(trained),
             "wall_clock_s": phases, "wall_clock_s_total": float(sum(phases.values())), "settings": settings}
    write_json(done, stack)
    return stack

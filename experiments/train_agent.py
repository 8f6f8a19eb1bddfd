"""`run.py train-agent`: train the actor-critic purely in imagination on a Stage-2 world model.

Start states are latents of replay frames (the data the world model was trained on, or ``--data``),
encoded once. Each update imagines ``agent.imagine_horizon`` steps from ``agent.batch_size`` of
them (see ``agent/actor_critic.py``). The actor-critic is a task on the one training loop
(``experiments/fit.py``): the run folder ``runs/train-agent/<time>-<preset>-s<seed>/`` holds ``agent.pt``
(everything resuming needs, written atomically every ``agent.checkpoint_every`` updates and at the end;
never with non-finite weights), ``metrics.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from agent.actor_critic import (
    ActorCritic,
    AgentConfig,
    ImaginationStarts,
    RealTransitions,
    check_imagine_context,
    history_frames,
)
from agent.player import CHECKPOINT_KIND, ActorCriticAgent, load_agent_checkpoint
from envs.errors import UserError
from envs.replay import load_episodes
from experiments.agents import check_frames
from experiments.config import Config, config_from_dict
from experiments.data import world_model_data_dir
from experiments.fit import TrainState, fit, restore
from experiments.play import evaluate, summarize_returns
from experiments.runlog import RunLogger, seed_everything, setup_torch
from worldmodel.checkpoint import load_error_detail, require

LatentModel = Any  # the world model, used through its protocol (encode, imagine, imagine_policy)


@torch.no_grad()
def encode_start_latents(model: LatentModel, data_dir: str | Path, count: int, seed: int, frame_stack: int,
                         agent: AgentConfig, chunk: int = 256) -> tuple[ImaginationStarts, RealTransitions]:
    """Up to ``count`` replay observations drawn uniformly without replacement as imagination starts, each with the
    ``agent.imagine_context`` real steps before it (their latents encoded too), and the same frames as
    :class:`RealTransitions` for self-imitation (those with an action: each episode's last is left out)."""
    from envs.dataset import EpisodeStore

    episodes, _ = load_episodes(data_dir)  # UserError on a missing, empty or corrupt folder
    store = EpisodeStore(episodes, frame_stack)
    rng = np.random.default_rng(seed)
    n = min(count, store.num_frames)
    idx = np.sort(rng.choice(store.num_frames, size=n, replace=False))
    rows, actions = history_frames(episodes, idx, agent.imagine_context)  # [n, K] global frames, actions
    # Encode every frame the starts and their histories use; the starts' tables index into that sorted set.
    need = np.unique(np.concatenate([idx, rows.ravel()])) if agent.imagine_context else idx
    out = [model.encode(store.obs(need[i:i + chunk])).float().cpu() for i in range(0, len(need), chunk)]
    z = torch.cat(out)  # [M, D]
    assert z.shape == (len(need), model.latent_dim), (
        f"encoded latents {tuple(z.shape)}, expected [{len(need)}, {model.latent_dim}]")
    starts = ImaginationStarts(z, torch.from_numpy(np.searchsorted(need, idx)),
                               torch.from_numpy(np.searchsorted(need, rows)), torch.from_numpy(actions))
    return starts, RealTransitions.from_episodes(episodes, z[starts.start_rows], agent, frame_index=idx)


def _evaluate(model: LatentModel, ac: ActorCritic, cfg: Config, episodes: int, desc: str) -> dict[str, float]:
    agent = ActorCriticAgent(model, ac.play_actor, ac.critic, deterministic=cfg.agent.greedy_eval,
                           seed=cfg.run.seed, temperature=cfg.agent.eval_temperature)
    try:
        return summarize_returns(evaluate(agent, cfg, episodes=episodes, desc=desc, progress=False))
    finally:
        ac.actor.train()
        ac.critic.train()


INPUTS_FILE = "train_agent_inputs.json"  # config, world model and data a run started with (restart before agent.pt)


class ActorCriticTask:
    """The actor-critic on the training loop: ``agent.updates`` updates in one epoch, no validation."""

    name, lr_hint, num_epochs, patience = "actor-critic", "agent.actor_lr and agent.critic_lr", 1, 0

    def __init__(self, cfg: Config, ac: ActorCritic, model: LatentModel, starts: ImaginationStarts, world_model: Path,
                 data: Path, run: RunLogger, real: RealTransitions | None = None):
        self.cfg, self.ac, self.model, self.starts, self.world_model, self.data, self.run = (
            cfg, ac, model, starts, world_model, data, run)
        self.real = real  # replay transitions for self-imitation (agent.self_imitation > 0)
        self.steps_per_epoch = cfg.agent.updates
        self.log_every = max(1, cfg.agent.checkpoint_every // 10)
        self.rng = np.random.default_rng(cfg.run.seed)  # unused: the actor-critic draws from its own generator
        self.acc: dict[str, list[float]] = {}
        self.last_metrics: dict[str, float] = {}
        self.last_log_t, self.last_log_step = time.perf_counter(), ac.updates

    def epoch_order(self) -> None:
        return None

    def train_step(self, i: int, order: None, state: TrainState) -> tuple[dict[str, float], dict[str, float]]:
        a, ac = self.cfg.agent, self.ac
        idx = torch.randint(len(self.starts), (a.batch_size,), generator=ac.generator)
        b = self.starts.batch(idx, self.starts.latents.device)
        metrics = self.last_metrics = ac.update(self.model, b["z0"], self.real, b["context"], b["context_actions"])
        for k, v in metrics.items():
            self.acc.setdefault(k, []).append(v)
        step, row = ac.updates, {}
        if step % self.log_every == 0 or step == a.updates:
            now = time.perf_counter()
            row = {k: float(np.mean(v)) for k, v in self.acc.items()}
            row["perf/updates_per_s"] = (step - self.last_log_step) / max(now - self.last_log_t, 1e-9)
            row["perf/imagined_transitions_per_s"] = row["perf/updates_per_s"] * a.batch_size * a.imagine_horizon
            self.acc, self.last_log_t, self.last_log_step = {}, now, step
        if a.eval_every and step % a.eval_every == 0 and step < a.updates:
            ev = _evaluate(self.model, ac, self.cfg, a.eval_episodes, f"eval@{step}")
            self.run.log({f"eval/return_{k}": v for k, v in ev.items()}, step=step)
        return {"loss": metrics["train/actor_loss"] + metrics["train/critic_loss"]}, row

    def end_epoch(self, state: TrainState) -> tuple[None, dict[str, Any], dict[str, Any], str]:
        return None, {"updates": self.ac.updates}, {}, ""

    def parameters_to_check(self) -> list[torch.Tensor]:
        return [*self.ac.actor.parameters(), *self.ac.critic.parameters()]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": CHECKPOINT_KIND, "state": self.ac.training_state(), "config": self.cfg.to_dict(),
                "world_model": str(self.world_model), "data_dir": str(self.data)}


def train_agent(cfg: Config, world_model: str | Path | None = None, data: str | Path | None = None,
                resume: str | Path | None = None, model: LatentModel | None = None, progress: bool = True,
                max_steps: int | None = None) -> dict[str, Any]:
    """Train (or resume) the actor-critic; returns the summary written to ``summary.json``.

    Args:
        cfg: the run config (ignored on resume: the run folder's own config is used).
        world_model: a Stage-2 checkpoint (ignored on resume: the checkpoint's recorded path is used).
        data: replay folder for start states (default: the world model's training data).
        resume: a train-agent run folder to continue.
        model: an already loaded world model (tests); otherwise loaded from ``world_model``.
        progress: show a progress bar.
        max_steps: stop after this many updates in this call, checkpointed (None = all of ``agent.updates``).
    """
    ckpt = None
    if resume is not None and not (Path(resume) / "agent.pt").is_file() and (Path(resume) / INPUTS_FILE).is_file():
        # Killed before its first checkpoint: start again in the same folder with the inputs it was given.
        try:
            inputs = json.loads((Path(resume) / INPUTS_FILE).read_text())
            cfg, world_model = config_from_dict(inputs["config"]), inputs["world_model"]
            data = inputs["data"] if data is None else data
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"cannot resume: {Path(resume) / INPUTS_FILE} is damaged; start a new run") from None
        click.echo(f"{resume} has no agent.pt yet: starting again there with the run's config")
    elif resume is not None:
        ckpt = load_agent_checkpoint(Path(resume) / "agent.pt")
        require(ckpt, Path(resume) / "agent.pt", ("rng", "history", "early_stopping"), "to resume")
        cfg = config_from_dict(ckpt["config"])
        world_model = ckpt["world_model"]
        data = ckpt.get("data_dir") if data is None else data
    if world_model is None:
        raise UserError("train-agent needs --world-model PATH (a Stage-2 checkpoint from `run.py pretrain`)")
    world_model = Path(world_model)
    device = setup_torch(cfg)
    seed_everything(cfg.run.seed)
    if model is None:
        from worldmodel import load_world_model

        model = load_world_model(world_model, device=device)
    check_frames(model, cfg.environment, world_model)
    check_imagine_context(cfg.agent, model)
    data = world_model_data_dir(world_model) if data is None else Path(data)

    ac = ActorCritic(model.latent_dim, model.num_actions, cfg.agent, device)
    ac.seed(cfg.run.seed)
    if ckpt is not None:
        try:
            ac.load_training_state(ckpt["state"])
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            raise UserError(f"agent checkpoint in {resume} does not fit this world model ({load_error_detail(err)}); "
                            "start a new run") from None
    a = cfg.agent
    t0 = time.perf_counter()
    # Start latents (before the run folder exists, so bad data leaves nothing behind); a resumed run
    # draws them again with the same seed, so they are the same set.
    starts, real = encode_start_latents(model, data, a.start_latents, cfg.run.seed,
                                        cfg.environment.frame_stack_size, a)  # N starts; the same frames
    starts = starts.to(device)
    encode_s = time.perf_counter() - t0
    with RunLogger(cfg, "train-agent", run_dir=resume, resume=resume is not None) as run:
        click.echo(f"run folder: {run.dir}")
        if ckpt is None:
            run.rewind(0)  # a restart logs from the beginning
            run.write_json(INPUTS_FILE, {"config": cfg.to_dict(), "world_model": str(world_model), "data": str(data)})
        task = ActorCriticTask(cfg, ac, model, starts, world_model, data, run,
                              real if a.self_imitation > 0 else None)
        state = TrainState() if ckpt is None else restore(ckpt, task, run)
        if ckpt is None:  # a resumed run found these rows in its metrics already
            run.log({"data/start_latents": len(starts), "perf/encode_s": encode_s}, step=ac.updates)
        start_step = ac.updates
        fit(task, state, run, run.dir, a.checkpoint_every, max_steps=max_steps, progress=progress,
            latest="agent.pt")
        train_s = time.perf_counter() - t0
        last_eval = _evaluate(model, ac, cfg, a.eval_episodes, "final eval")
        run.log({f"eval/return_{k}": v for k, v in last_eval.items()}, step=ac.updates)
        summary = {"run_dir": str(run.dir), "checkpoint": str(run.dir / "agent.pt"), "world_model": str(world_model),
                   "data_dir": str(data), "updates": ac.updates, "resumed_from": start_step if ckpt else None,
                   "train_seconds": train_s, "final_eval": last_eval,
                   "final_train": dict(task.last_metrics) if ac.updates > start_step else {}}
        run.write_json("summary.json", summary)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    ev, tr = s["final_eval"], s["final_train"]
    lines = [f"agent checkpoint: {s['checkpoint']}",
             f"updates: {s['updates']} ({s['train_seconds']:.1f} s this session)"]
    if tr:
        lines.append(f"imagined return {tr['train/imagined_return']:.3f}, entropy {tr['train/entropy']:.3f}, "
                     f"return scale {tr['train/return_scale']:.3f}")
    lines.append(f"real-env return over {ev['episodes']} game(s): mean {ev['mean']:.1f} (min {ev['min']:.0f}, "
                 f"max {ev['max']:.0f}, mean length {ev['length_mean']:.0f})")
    return "\n".join(lines)

"""`run.py train-agent`: train the actor-critic purely in imagination on a Stage-2 world model.

Start states are latents of replay frames (the data the world model was trained on, or ``--data``),
encoded once. Each update imagines ``agent.imagine_horizon`` steps from ``agent.batch_size`` of
them (see ``agent/actor_critic.py``). The run folder ``runs/train-agent/<time>-<preset>-s<seed>/``
holds ``agent.pt`` (everything resuming needs, written atomically every ``agent.checkpoint_every``
updates and at the end), ``metrics.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from agent.actor_critic import ActorCritic, LatentModel
from agent.player import CHECKPOINT_KIND, ActorCriticAgent, load_agent_checkpoint
from envs.errors import UserError
from envs.replay import load_episodes
from experiments.config import Config, config_from_dict
from experiments.play import evaluate, summarize_returns
from experiments.runlog import RunLogger, seed_everything, setup_torch
from worldmodel.checkpoint import save_checkpoint


def find_data_dir(world_model_path: str | Path) -> Path | None:
    """The replay folder a world-model checkpoint was trained on, when it can be told from the checkpoint.

    Looks at the checkpoint's ``data_dir`` entry, then for a ``data/`` folder holding a ``manifest.json``
    in the checkpoint's folder and the folders above it (``pretrain`` keeps its collected data in its
    run folder).
    """
    path = Path(world_model_path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        entry = ckpt.get("data_dir") if isinstance(ckpt, dict) else None
    except Exception:  # the world-model loader reports unreadable files; here it just means "not found"
        entry = None
    if isinstance(entry, str) and (Path(entry) / "manifest.json").is_file():
        return Path(entry)
    for folder in [path.parent, *path.parent.parents][:4]:
        for cand in (folder, folder / "data"):
            if (cand / "manifest.json").is_file():
                return cand
    return None


@torch.no_grad()
def encode_start_latents(model: LatentModel, data_dir: str | Path, count: int, seed: int, frame_stack: int = 4,
                         chunk: int = 256) -> torch.Tensor:
    """Latents ``[N, D]`` of up to ``count`` replay observations drawn uniformly without replacement."""
    from envs.dataset import EpisodeStore

    episodes, _ = load_episodes(data_dir)  # UserError on a missing, empty or corrupt folder
    store = EpisodeStore(episodes, frame_stack)
    rng = np.random.default_rng(seed)
    n = min(count, store.num_frames)
    idx = np.sort(rng.choice(store.num_frames, size=n, replace=False))
    out = [model.encode(store.obs(idx[i:i + chunk])).float().cpu() for i in range(0, n, chunk)]  # [chunk, D] each
    z = torch.cat(out)
    assert z.shape == (n, model.latent_dim), f"encoded latents {tuple(z.shape)}, expected [{n}, {model.latent_dim}]"
    return z


def _checkpoint(ac: ActorCritic, cfg: Config, world_model: Path, data_dir: Path, run: RunLogger) -> Path:
    return save_checkpoint({
        "kind": CHECKPOINT_KIND, "state": ac.training_state(), "config": cfg.to_dict(),
        "world_model": str(world_model), "data_dir": str(data_dir), "torch_rng": torch.get_rng_state(),
    }, run.dir / "agent.pt")


def _evaluate(model: LatentModel, ac: ActorCritic, cfg: Config, episodes: int, desc: str) -> dict[str, float]:
    agent = ActorCriticAgent(model, ac.actor, ac.critic, deterministic=False, seed=cfg.run.seed)
    try:
        return summarize_returns(evaluate(agent, cfg, episodes=episodes, desc=desc, progress=False))
    finally:
        ac.actor.train()
        ac.critic.train()


def train_agent(cfg: Config, world_model: str | Path | None = None, data: str | Path | None = None,
                resume: str | Path | None = None, model: LatentModel | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the actor-critic; returns the summary written to ``summary.json``.

    Args:
        cfg: the run config (ignored on resume: the run folder's own config is used).
        world_model: a Stage-2 checkpoint (ignored on resume: the checkpoint's recorded path is used).
        data: replay folder for start states (default: the world model's training data).
        resume: a train-agent run folder to continue.
        model: an already loaded world model (tests); otherwise loaded from ``world_model``.
        progress: show a progress bar.
    """
    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        ckpt = load_agent_checkpoint(run_dir / "agent.pt")
        cfg = config_from_dict(ckpt["config"])
        world_model = ckpt["world_model"]
        data = ckpt["data_dir"] if data is None else data
    if world_model is None:
        raise UserError("train-agent needs --world-model PATH (a Stage-2 checkpoint from `run.py pretrain`)")
    world_model = Path(world_model)
    device = setup_torch(cfg)
    seed_everything(cfg.run.seed)
    if model is None:
        from worldmodel import load_world_model

        model = load_world_model(world_model, device=device)
    if data is None:
        data = find_data_dir(world_model)
        if data is None:
            raise UserError(f"cannot tell which replay data {world_model} was trained on; pass --data DIR "
                            "(a folder written by `run.py collect`)")
    data = Path(data)

    ac = ActorCritic(model.latent_dim, model.num_actions, cfg.agent, device)
    ac.seed(cfg.run.seed)
    if ckpt is not None:
        try:
            ac.load_training_state(ckpt["state"])
        except (ValueError, RuntimeError, KeyError) as err:
            raise UserError(f"agent checkpoint in {resume} does not fit this world model ({err}); "
                            "start a new run") from None
        torch.set_rng_state(ckpt["torch_rng"])
    a = cfg.agent
    t0 = time.perf_counter()
    # Start latents (before the run folder exists, so bad data leaves nothing behind); a resumed run
    # draws them again with the same seed, so they are the same set.
    starts = encode_start_latents(model, data, a.start_latents, cfg.run.seed,
                                  cfg.environment.frame_stack_size).to(device)  # [N, D]
    encode_s = time.perf_counter() - t0
    with RunLogger(cfg, "train-agent", run_dir=resume, resume=resume is not None) as run:
        click.echo(f"run folder: {run.dir}")
        run.log({"data/start_latents": len(starts), "perf/encode_s": encode_s}, step=ac.updates)
        start_step = ac.updates
        log_every = max(1, a.checkpoint_every // 10)
        acc: dict[str, list[float]] = {}
        last_log_t, last_log_step = time.perf_counter(), ac.updates
        bar = click.progressbar(length=a.updates, label="train-agent", show_pos=True) if progress else None
        if bar is not None:
            bar.update(ac.updates)
        last_eval: dict[str, float] = {}
        try:
            while ac.updates < a.updates:
                idx = torch.randint(len(starts), (a.batch_size,), generator=ac.generator)
                metrics = ac.update(model, starts[idx.to(device)])
                for k, v in metrics.items():
                    acc.setdefault(k, []).append(v)
                if bar is not None:
                    bar.update(1)
                step = ac.updates
                if step % log_every == 0 or step == a.updates:
                    now = time.perf_counter()
                    row = {k: float(np.mean(v)) for k, v in acc.items()}
                    row["perf/updates_per_s"] = (step - last_log_step) / max(now - last_log_t, 1e-9)
                    row["perf/imagined_transitions_per_s"] = row["perf/updates_per_s"] * a.batch_size * \
                        a.imagine_horizon
                    run.log(row, step=step)
                    acc, last_log_t, last_log_step = {}, now, step
                if a.eval_every and step % a.eval_every == 0 and step < a.updates:
                    last_eval = _evaluate(model, ac, cfg, a.eval_episodes, f"eval@{step}")
                    run.log({f"eval/return_{k}": v for k, v in last_eval.items()}, step=step)
                if step % a.checkpoint_every == 0:
                    _checkpoint(ac, cfg, world_model, data, run)
        finally:
            if bar is not None:
                bar.render_finish()
            _checkpoint(ac, cfg, world_model, data, run)  # interrupted runs keep their progress
        train_s = time.perf_counter() - t0
        last_eval = _evaluate(model, ac, cfg, a.eval_episodes, "final eval")
        run.log({f"eval/return_{k}": v for k, v in last_eval.items()}, step=ac.updates)
        summary = {"run_dir": str(run.dir), "checkpoint": str(run.dir / "agent.pt"), "world_model": str(world_model),
                   "data_dir": str(data), "updates": ac.updates, "resumed_from": start_step if ckpt else None,
                   "train_seconds": train_s, "final_eval": last_eval,
                   "final_train": {k: v for k, v in metrics.items()} if ac.updates > start_step else {}}
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

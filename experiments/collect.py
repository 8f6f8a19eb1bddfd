"""Collect Breakout episodes with a behaviour policy into a replay folder, and summarise a folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from envs.breakout import NUM_ACTIONS, labels_array, make_env
from envs.errors import UserError
from envs.replay import Episode, ReplayWriter, load_episodes, read_manifest, split_episodes
from envs.seeds import training_seed
from experiments.agents import AgentInputs, check_needs, get_spec
from experiments.config import Config
from experiments.runlog import setup_torch, tqdm

# The flag that supplies each input a behaviour policy may need (experiments.agents.check_needs).
FLAGS = {"world_model": "--checkpoint", "agent_checkpoint": "--agent"}


class _EpisodeBuffer:
    def __init__(self, obs: np.ndarray, info: dict[str, Any]):
        self.frames = [obs[-1].copy()]
        self.labels = [labels_array(info)]
        self.actions: list[int] = []
        self.rewards: list[float] = []
        self.terminated: list[bool] = []
        self.truncated: list[bool] = []
        self.life_loss: list[bool] = []

    def add(self, obs, reward, terminated, truncated, info) -> None:
        self.actions.append(int(info["action"]))  # the executed action (FIRE on the pipeline's serve steps)
        self.rewards.append(float(reward))
        self.terminated.append(bool(terminated))
        self.truncated.append(bool(truncated))
        self.life_loss.append(bool(info["life_loss"]))
        self.frames.append(obs[-1].copy())
        self.labels.append(labels_array(info))

    def __len__(self) -> int:
        return len(self.actions)

    def episode(self, cut: bool = False) -> Episode:
        truncated = np.array(self.truncated, dtype=bool)
        if cut and len(truncated):
            truncated[-1] = True  # the step budget (or an interrupt) cut this episode short
        return Episode(
            frames=np.stack(self.frames).astype(np.uint8),
            actions=np.array(self.actions, dtype=np.int64),
            rewards=np.array(self.rewards, dtype=np.float32),
            terminated=np.array(self.terminated, dtype=bool),
            truncated=truncated,
            life_loss=np.array(self.life_loss, dtype=bool),
            labels=np.stack(self.labels).astype(np.int16),
        )


def collect(cfg: Config, out: str | Path, steps: int, policy: str = "random", append: bool = False,
            seed: int | None = None, progress: bool = True, checkpoint: str | Path | None = None,
            agent: str | Path | None = None) -> dict[str, Any]:
    """Play ``steps`` agent steps with ``policy`` and write every episode to ``out``.

    ``policy`` is a registry agent that acts without env-step training (:mod:`experiments.agents`);
    ``checkpoint`` (world model) and ``agent`` (train-agent checkpoint) are what cem and actor-critic
    need. Returns the numbers of episodes written and steps played; ``summarize(out)`` describes the folder.

    With ``data.num_envs = K > 1``, K collector processes play at once (:func:`_collect_parallel`).
    A step budget that ends inside an episode writes that episode too, marked truncated. On
    Ctrl-C the episode in progress is written the same way before the interrupt propagates.
    """
    if steps < 1:
        raise UserError(f"--steps must be a positive number of agent steps, got {steps}")
    spec = get_spec(policy, acting_only=True, what="collection policy")
    inputs = AgentInputs(setup_torch(cfg), world_model=None if checkpoint is None else Path(checkpoint),
                         agent_checkpoint=None if agent is None else Path(agent))
    check_needs(spec, inputs, f"--policy {policy}", FLAGS)
    seed = cfg.run.seed if seed is None else seed
    player = spec.build(cfg, inputs, seed).agent  # before the folder is written: a bad checkpoint leaves nothing
    num_envs = min(cfg.data.num_envs, steps)
    if num_envs > 1:
        try:
            player.reset(None)
        except ValueError:
            raise UserError(f"--policy {policy} reads the emulator it plays, which runs in another process when "
                            f"data.num_envs={num_envs}; collect it with --set data.num_envs=1") from None
    meta = {"env": dataclasses.asdict(cfg.environment), "policy": policy, "seed": seed}
    writer = ReplayWriter(out, meta=meta, append=append, streams=num_envs)
    if num_envs > 1:
        return _collect_parallel(cfg, writer, inputs, steps, policy, seed, num_envs, progress)
    env = make_env(cfg.environment, seed=seed)
    # Game seeds from the training range (never an evaluation game); each writer gets a fresh stream, so
    # that appending (even several appenders at once) replays no game.
    done_steps = _play(env, player, writer, steps, policy, training_seed(seed, writer.stream), progress)
    return {"path": str(out), "episodes_written": writer.num_episodes, "steps": done_steps}


def _play(env, player, writer: ReplayWriter, steps: int, policy: str, first_game_seed: int, progress: bool,
          counter: Any = None) -> int:
    """One env's collection loop: ``steps`` steps from game seed ``first_game_seed`` (later games continue the
    env's random stream), every finished game written to ``writer``; the game in progress at the end (or at
    Ctrl-C) is written marked truncated. ``counter``: a shared step count that a parent process reads."""
    obs, info = env.reset(seed=first_game_seed)
    player.reset(env)
    buf = _EpisodeBuffer(obs, info)
    done_steps = 0
    try:
        with tqdm(total=steps, desc="collect", unit="step", disable=not progress, leave=False) as bar:
            while done_steps < steps:
                action = player.act(obs)
                obs, reward, terminated, truncated, info = env.step(action)
                buf.add(obs, reward, terminated, truncated, info)
                done_steps += 1
                bar.update(1)
                if counter is not None and done_steps % 100 == 0:
                    counter.value = done_steps
                if terminated or truncated:
                    writer.add(buf.episode(), {"policy": policy})
                    obs, info = env.reset()
                    player.reset(env)
                    buf = _EpisodeBuffer(obs, info)
            if len(buf):
                writer.add(buf.episode(cut=True), {"policy": policy})
    except KeyboardInterrupt:
        if len(buf):
            writer.add(buf.episode(cut=True), {"policy": policy})
        raise
    finally:
        env.close()
        if counter is not None:
            counter.value = done_steps
    return done_steps


POLICY_SEED_STRIDE = 100_000  # collector i > 0 draws its policy's randomness from seed + this * i


def _collector(cfg: Config, inputs: AgentInputs, policy: str, seed: int, index: int, stream: int, steps: int,
               out: str, counter: Any, results: Any) -> None:
    """One collector process of :func:`_collect_parallel`: its own env and copy of the policy, writing into a
    private folder ``out``; puts ``(index, steps played, error or None)`` on ``results``."""
    import torch

    try:
        setup_torch(cfg)
        torch.set_num_threads(1)
        player_seed = seed + POLICY_SEED_STRIDE * index
        player = get_spec(policy, acting_only=True).build(cfg, inputs, player_seed).agent
        writer = ReplayWriter(out, meta={"env": dataclasses.asdict(cfg.environment), "policy": policy})
        env = make_env(cfg.environment, seed=player_seed)
        results.put((index, _play(env, player, writer, steps, policy, training_seed(seed, stream), False, counter),
                     None))
    except KeyboardInterrupt:
        results.put((index, counter.value, "interrupted"))
    except Exception as err:  # reported by the parent, which stops the other collectors
        results.put((index, counter.value, f"{type(err).__name__}: {err}"))


def _collect_parallel(cfg: Config, writer: ReplayWriter, inputs: AgentInputs, steps: int, policy: str, seed: int,
                      num_envs: int, progress: bool) -> dict[str, Any]:
    """:func:`collect` with ``num_envs`` collector processes, each running the one-env loop on its share of the
    steps with its own env, game-seed stream (``writer.stream + i``) and copy of the policy, into a private
    folder. Their episodes are then added to the replay collector by collector, so the folder's content and
    order depend on the seed alone, not on timing.

    Why processes and not gymnasium's AsyncVectorEnv: with one ~1 ms env step, the vector env's lock-step round
    trips cost more than the second core gives (2 async envs 954-1040 steps/s against 941 for one env in one
    process, measured on a 2-core machine), while two whole loops run side by side at full speed.
    """
    import multiprocessing as mp
    import os
    import queue
    import shutil
    import signal
    import tempfile

    shares = [steps // num_envs + (1 if i < steps % num_envs else 0) for i in range(num_envs)]
    tmp = Path(tempfile.mkdtemp(prefix="collect-"))
    ctx = mp.get_context("spawn")  # no fork of a process that holds torch (and maybe a process group) threads
    counters = [ctx.Value("l", 0) for _ in range(num_envs)]
    results = ctx.Queue()
    procs = [ctx.Process(target=_collector, args=(cfg, inputs, policy, seed, i, writer.stream + i, shares[i],
                                                  str(tmp / f"c{i}"), counters[i], results), daemon=True)
             for i in range(num_envs)]
    done: dict[int, int] = {}
    errors: list[str] = []
    interrupted = False
    try:
        for p in procs:
            p.start()
        try:
            with tqdm(total=steps, desc=f"collect ({num_envs} processes)", unit="step", disable=not progress,
                      leave=False) as bar:
                while len(done) < num_envs:
                    try:
                        index, played, error = results.get(timeout=0.5)
                        done[index] = played
                        if error:
                            errors.append(error)
                    except queue.Empty:
                        if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs):
                            errors.append("a collector process died")
                            break
                    bar.update(sum(c.value for c in counters) - bar.n)
        except KeyboardInterrupt:
            interrupted = True
            for p in procs:  # a Ctrl-C in a terminal reaches them too; a signal sent to this process alone does not
                if p.is_alive():
                    os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        if errors and not interrupted and "interrupted" not in errors:
            raise RuntimeError(f"collection failed in a collector process: {errors[0]}")
        for i in range(num_envs):  # collector by collector: the order does not depend on timing
            if (tmp / f"c{i}" / "manifest.json").is_file():
                episodes, _ = load_episodes(tmp / f"c{i}", verify=False)
                for ep in episodes:
                    writer.add(ep, {"policy": policy})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if interrupted or "interrupted" in errors:
        raise KeyboardInterrupt
    return {"path": str(writer.root), "episodes_written": writer.num_episodes, "steps": sum(done.values())}


def summarize(root: str | Path, val_fraction: float = 0.1, seed: int = 0, verify: bool = True) -> dict[str, Any]:
    """Dataset summary: sizes, returns, life losses, label ranges and the train/val split."""
    root = Path(root)
    manifest = read_manifest(root)
    episodes, _ = load_episodes(root, verify=verify)
    lengths = np.array([len(e) for e in episodes])
    returns = np.array([float(e.rewards.sum()) for e in episodes])
    complete = np.array([bool(e.terminated[-1]) if len(e) else False for e in episodes])
    labels = np.concatenate([e.labels for e in episodes])
    rewards = np.concatenate([e.rewards for e in episodes])
    actions = np.concatenate([e.actions for e in episodes])
    disk = sum(f.stat().st_size for f in (root / "episodes").glob("*.npz"))
    frames = int(sum(len(e.frames) for e in episodes))
    h, w = episodes[0].frames.shape[1:]
    summary: dict[str, Any] = {
        "path": str(root),
        "episodes": len(episodes),
        "complete_games": int(complete.sum()),
        "transitions": int(lengths.sum()),
        "frames_on_disk": frames,
        "disk_bytes": int(disk),
        "disk_vs_raw_frames": round(disk / max(1, frames * h * w), 4),
        "episode_length": {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max())},
        "episode_return": {"mean": float(returns.mean()), "min": float(returns.min()), "max": float(returns.max())},
        "complete_game_return_mean": float(returns[complete].mean()) if complete.any() else None,
        "nonzero_reward_fraction": float((rewards != 0).mean()),
        "life_losses": int(sum(int(e.life_loss.sum()) for e in episodes)),
        "action_counts": np.bincount(actions, minlength=NUM_ACTIONS).tolist(),
        "ball_in_play_fraction": float((labels[:, 2] != 0).mean()),
        "paddle_x_range": [int(labels[:, 0].min()), int(labels[:, 0].max())],
        "policy": manifest.get("policy"),
    }
    if len(episodes) >= 2:
        tr, va = split_episodes(len(episodes), val_fraction, seed)
        summary["split"] = {"train_episodes": len(tr), "val_episodes": len(va),
                            "train_transitions": int(lengths[tr].sum()), "val_transitions": int(lengths[va].sum())}
    return summary


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"dataset {s['path']}",
        f"  episodes          {s['episodes']} ({s['complete_games']} complete games)",
        f"  transitions       {s['transitions']}",
        f"  episode length    mean {s['episode_length']['mean']:.1f}, min {s['episode_length']['min']}, "
        f"max {s['episode_length']['max']}",
        f"  episode return    mean {s['episode_return']['mean']:.2f}, min {s['episode_return']['min']:.0f}, "
        f"max {s['episode_return']['max']:.0f}",
        f"  life losses       {s['life_losses']}",
        f"  non-zero rewards  {100 * s['nonzero_reward_fraction']:.2f}% of steps",
        f"  ball in play      {100 * s['ball_in_play_fraction']:.1f}% of frames",
        f"  actions           {dict(zip(('NOOP', 'FIRE', 'RIGHT', 'LEFT'), s['action_counts']))}",
        f"  disk              {s['disk_bytes'] / 1e6:.1f} MB ({s['disk_vs_raw_frames']:.3f}x raw frames)",
    ]
    if "split" in s:
        sp = s["split"]
        lines.append(f"  split             train {sp['train_episodes']} episodes / {sp['train_transitions']} steps, "
                     f"val {sp['val_episodes']} episodes / {sp['val_transitions']} steps")
    return "\n".join(lines)

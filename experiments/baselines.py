"""Model-free baselines: SB3 PPO, DQN and A2C, on the project's own Breakout pipeline (``dqn``, ``ppo``,
``a2c``) or on SB3's own Atari stack (``dqn-sb3``, ``ppo-sb3``: :mod:`experiments.sb3_atari`).

On the project's pipeline the baselines see exactly the observations the world-model agents see
(``envs.breakout.make_env``: uint8 ``[4, 64, 64]``, channel-first, so SB3 applies no ``VecTransposeImage``).
Training uses SB3's usual Atari treatment: a lost life ends the training episode (``terminal_on_life_loss``; the next
reset continues the same game) and rewards are clipped to their sign. Evaluation is the project's one
protocol (:func:`experiments.play.evaluate`: whole games, raw score).

Hyperparameters are RL-Zoo's Atari settings (``hyperparams/{ppo,dqn,a2c}.yml``, section ``atari``)
scaled to the env-step budget ``baselines.agent_steps`` (agent steps, frame skip 4):

- DQN: the zoo only starts learning after 100k steps, so ``learning_starts`` = budget / 5, the
  replay buffer holds the whole budget and epsilon decays over the first 10% of the budget.
- PPO / A2C: the zoo's rollout shapes; a rollout never runs past the budget (PPO's ``n_steps`` is
  shrunk for tiny budgets) and training stops at the last whole rollout within the budget.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from envs.breakout import make_env
from envs.errors import UserError
from envs.seeds import training_seed
from experiments.agents import BuiltAgent
from experiments.config import Config
from experiments.play import evaluate, summarize_returns
from experiments.runlog import setup_torch

SB3_ALGOS = ("ppo", "dqn", "a2c")

# RL-Zoo's Atari sections, as published (reference values before scaling; lin_X = linear decay from X).
ZOO_ATARI: dict[str, dict[str, Any]] = {
    "ppo": {"n_envs": 8, "n_steps": 128, "n_epochs": 4, "batch_size": 256, "learning_rate": "lin_2.5e-4",
            "clip_range": "lin_0.1", "vf_coef": 0.5, "ent_coef": 0.01, "n_timesteps": 10_000_000},
    "dqn": {"n_envs": 1, "buffer_size": 10_000, "learning_rate": 1e-4, "batch_size": 32,
            "learning_starts": 100_000, "target_update_interval": 1000, "train_freq": 4, "gradient_steps": 1,
            "exploration_fraction": 0.1, "exploration_final_eps": 0.01, "optimize_memory_usage": True,
            "n_timesteps": 10_000_000},
    "a2c": {"n_envs": 16, "ent_coef": 0.01, "vf_coef": 0.25, "optimizer": "RMSpropTFLike(eps=1e-5)",
            "n_timesteps": 10_000_000},
}


def scaled_hyperparams(algo: str, agent_steps: int) -> dict[str, Any]:
    """The zoo's Atari hyperparameters scaled to a budget of ``agent_steps`` env steps (JSON-able)."""
    if algo not in SB3_ALGOS:
        raise UserError(f"unknown SB3 algorithm '{algo}'; accepted: {', '.join(SB3_ALGOS)}")
    if agent_steps < 16:
        raise UserError(f"baselines.agent_steps={agent_steps} is too small to train {algo}; use at least 16")
    if algo == "ppo":
        z = ZOO_ATARI["ppo"]
        n_envs = z["n_envs"]
        n_steps = min(z["n_steps"], max(2, agent_steps // n_envs))  # one rollout must fit in the budget
        rollout = n_envs * n_steps
        return {"algo": "ppo", "policy": "CnnPolicy", "n_envs": n_envs, "n_steps": n_steps,
                "n_epochs": z["n_epochs"], "batch_size": min(z["batch_size"], rollout),
                "learning_rate": z["learning_rate"], "clip_range": z["clip_range"], "vf_coef": z["vf_coef"],
                "ent_coef": z["ent_coef"], "gamma": 0.99, "gae_lambda": 0.95, "max_grad_norm": 0.5,
                "total_timesteps": (agent_steps // rollout) * rollout, "eval_policy": "sample"}
    if algo == "dqn":
        z = ZOO_ATARI["dqn"]
        return {"algo": "dqn", "policy": "CnnPolicy", "n_envs": 1, "buffer_size": agent_steps,
                "learning_rate": z["learning_rate"], "batch_size": z["batch_size"],
                "learning_starts": agent_steps // 5,
                "target_update_interval": min(z["target_update_interval"], max(1, agent_steps // 10)),
                "train_freq": z["train_freq"], "gradient_steps": z["gradient_steps"],
                "exploration_fraction": z["exploration_fraction"], "exploration_initial_eps": 1.0,
                "exploration_final_eps": z["exploration_final_eps"], "gamma": 0.99, "max_grad_norm": 10.0,
                # The zoo's memory-saving buffer; it cannot tell time-limit truncation from termination,
                # which only matters for the rare 108k-frame cap.
                "optimize_memory_usage": z["optimize_memory_usage"], "handle_timeout_termination": False,
                "total_timesteps": agent_steps, "eval_policy": "epsilon-greedy (exploration_final_eps)"}
    z = ZOO_ATARI["a2c"]
    n_envs = min(z["n_envs"], max(1, agent_steps // 5))
    rollout = n_envs * 5
    return {"algo": "a2c", "policy": "CnnPolicy", "n_envs": n_envs, "n_steps": 5, "learning_rate": 7e-4,
            "ent_coef": z["ent_coef"], "vf_coef": z["vf_coef"], "gamma": 0.99, "gae_lambda": 1.0,
            "max_grad_norm": 0.5, "optimizer": z["optimizer"], "total_timesteps": (agent_steps // rollout) * rollout,
            "eval_policy": "sample"}


def training_env_config(cfg: Config):
    """Training environments: the run's settings plus SB3's episodic-life trick."""
    return dataclasses.replace(cfg.environment, terminal_on_life_loss=True)


class ClipReward(gym.RewardWrapper):
    """Rewards clipped to their sign (SB3's ``ClipRewardEnv``): training only, never in evaluation."""

    def reward(self, reward) -> float:
        return float(np.sign(reward))


PIPELINES = ("project", "sb3-atari")


def make_training_env(cfg: Config, n_envs: int, seed: int) -> VecEnv:
    """``n_envs`` training copies of the pipeline in a DummyVecEnv, game seeds from the training range
    (``envs.seeds.training_seed``: never an evaluation game).

    ``Monitor`` sits below ``ClipReward`` so that its episode statistics are raw scores (of one life).
    """
    env_cfg = training_env_config(cfg)
    first = training_seed(seed)
    fns = [lambda i=i: ClipReward(Monitor(make_env(env_cfg, seed=first + i))) for i in range(n_envs)]
    vec = DummyVecEnv(fns)
    vec.seed(first)
    assert vec.observation_space.shape == (cfg.environment.frame_stack_size, cfg.environment.image_height,
                                           cfg.environment.image_width), vec.observation_space.shape
    return vec


def _schedule(value: Any) -> Any:
    """``"lin_X"`` -> SB3 schedule decaying linearly from X to 0 over training; numbers pass through."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


def build_model(algo: str, hp: dict[str, Any], env: VecEnv, seed: int, device: torch.device | str = "cpu"):
    """An SB3 model from scaled hyperparameters (see :func:`scaled_hyperparams`)."""
    from stable_baselines3 import A2C, DQN, PPO

    common = {"policy": hp["policy"], "env": env, "seed": seed, "device": device, "verbose": 0,
              "learning_rate": _schedule(hp["learning_rate"]), "gamma": hp["gamma"]}
    if algo == "ppo":
        return PPO(n_steps=hp["n_steps"], batch_size=hp["batch_size"], n_epochs=hp["n_epochs"],
                   clip_range=_schedule(hp["clip_range"]), vf_coef=hp["vf_coef"], ent_coef=hp["ent_coef"],
                   gae_lambda=hp["gae_lambda"], max_grad_norm=hp["max_grad_norm"], **common)
    if algo == "dqn":
        return DQN(buffer_size=hp["buffer_size"], batch_size=hp["batch_size"], learning_starts=hp["learning_starts"],
                   target_update_interval=hp["target_update_interval"], train_freq=hp["train_freq"],
                   gradient_steps=hp["gradient_steps"], exploration_fraction=hp["exploration_fraction"],
                   exploration_initial_eps=hp["exploration_initial_eps"],
                   exploration_final_eps=hp["exploration_final_eps"], max_grad_norm=hp["max_grad_norm"],
                   optimize_memory_usage=hp["optimize_memory_usage"],
                   replay_buffer_kwargs={"handle_timeout_termination": hp["handle_timeout_termination"]}, **common)
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    return A2C(n_steps=hp["n_steps"], ent_coef=hp["ent_coef"], vf_coef=hp["vf_coef"], gae_lambda=hp["gae_lambda"],
               max_grad_norm=hp["max_grad_norm"],
               policy_kwargs={"optimizer_class": RMSpropTFLike, "optimizer_kwargs": {"eps": 1e-5}}, **common)


class SB3Agent:
    """An SB3 model behind the evaluation interface (``reset(env)``, ``act(obs) -> int``).

    PPO and A2C sample from their policy (RL-Zoo evaluates Atari stochastically); DQN acts
    epsilon-greedily with its final training epsilon, independent of where training stands, so that
    learning-curve points mid-training measure the greedy policy rather than the exploration schedule.
    """

    def __init__(self, model, algo: str, epsilon: float = 0.0, seed: int = 0, pipeline: str = "project",
                 size: int | None = None):
        self.model = model
        self.algo = algo
        self.observation_pipeline = pipeline  # experiments.play.evaluate builds the matching env
        self.observation_size = size  # frame size of the sb3-atari pipeline (None: its default 84)
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)

    def reset(self, env=None) -> None:
        pass

    def act(self, obs: np.ndarray) -> int:
        assert obs.ndim == 3 and obs.dtype == np.uint8, (obs.shape, obs.dtype)  # [4, 64, 64] or [4, 84, 84]
        if self.algo == "dqn":
            if self.rng.random() < self.epsilon:
                return int(self.rng.integers(self.model.action_space.n))
            action, _ = self.model.predict(obs, deterministic=True)
        else:
            action, _ = self.model.predict(obs, deterministic=False)
        return int(action)


def make_sb3_agent(model, algo: str, hp: dict[str, Any], seed: int) -> SB3Agent:
    return SB3Agent(model, algo, epsilon=hp.get("exploration_final_eps", 0.0) if algo == "dqn" else 0.0, seed=seed,
                    pipeline=hp.get("pipeline", "project"), size=hp.get("screen_size"))


class LearningCurve(BaseCallback):
    """Evaluate every ``eval_every`` env steps with the shared protocol; report training progress."""

    def __init__(self, cfg: Config, algo: str, hp: dict[str, Any], seed: int,
                 on_point: Callable[[dict[str, Any]], None] | None = None,
                 on_progress: Callable[[int], None] | None = None):
        super().__init__()
        self.cfg, self.algo, self.hp, self.seed = cfg, algo, hp, seed
        self.on_point, self.on_progress = on_point, on_progress
        self.next_eval = cfg.baselines.eval_every
        self.points: list[dict[str, Any]] = []
        self.eval_seconds = 0.0

    def _on_step(self) -> bool:
        if self.on_progress is not None:
            self.on_progress(self.num_timesteps)
        if self.num_timesteps >= self.hp["total_timesteps"]:
            return True  # the end of training: the final evaluation (evaluation.episodes games) is that point
        if self.cfg.baselines.eval_every > 0 and self.num_timesteps >= self.next_eval:
            self.next_eval += self.cfg.baselines.eval_every
            t0 = time.perf_counter()
            agent = make_sb3_agent(self.model, self.algo, self.hp, self.seed)
            results = evaluate(agent, self.cfg, episodes=self.cfg.baselines.eval_episodes, progress=False)
            self.eval_seconds += time.perf_counter() - t0
            point = {"env_steps": int(self.num_timesteps), "returns": [r["return"] for r in results],
                     **summarize_returns(results)}
            self.points.append(point)
            if self.on_point is not None:
                self.on_point(point)
        return True


def train_sb3(algo: str, cfg: Config, seed: int | None = None, device: torch.device | str | None = None,
              on_point: Callable[[dict[str, Any]], None] | None = None,
              on_progress: Callable[[int], None] | None = None, pipeline: str = "project",
              sb3_screen_size: int | None = None) -> BuiltAgent:
    """Train one SB3 baseline within ``baselines.agent_steps`` env steps.

    Args:
        algo: one of :data:`SB3_ALGOS`.
        pipeline: ``"project"`` (the 64x64 pipeline every world-model agent sees) or ``"sb3-atari"``
            (SB3's ``make_atari_env`` + ``VecFrameStack(4)`` at 84x84, :mod:`experiments.sb3_atari`).
        sb3_screen_size: another frame size for the ``"sb3-atari"`` pipeline (benchmarks/dqn_gap.py).
        cfg: the run's config (``baselines.*``, ``environment.*``, ``evaluation.*``).
        seed: training seed (default ``run.seed``).
        device: torch device (default: :func:`experiments.runlog.setup_torch`).
        on_point: called with each learning-curve point.
        on_progress: called with the env steps trained so far.

    Returns:
        The agent (evaluation interface) with its ``model``, ``hyperparams``, ``env_steps`` (steps
        actually taken, never above the budget), ``curve`` (learning-curve points) and
        ``train_seconds`` (wall-clock of training without the learning-curve evaluations).
    """
    seed = cfg.run.seed if seed is None else seed
    hp = scaled_hyperparams(algo, cfg.baselines.agent_steps)
    hp["pipeline"] = pipeline
    if hp["total_timesteps"] < 1:
        raise UserError(f"baselines.agent_steps={cfg.baselines.agent_steps} is smaller than one {algo} rollout; "
                        "raise it")
    device = setup_torch(cfg) if device is None else device
    if pipeline == "sb3-atari":
        from experiments.sb3_atari import SB3_ATARI_ID, make_sb3_training_env

        if sb3_screen_size is not None:
            hp["screen_size"] = sb3_screen_size
        size = hp.get("screen_size", 84)
        env = make_sb3_training_env(cfg.environment, hp["n_envs"], seed, screen_size=size)
        hp["env"] = f"make_atari_env({SB3_ATARI_ID!r}) + VecFrameStack(4): AtariWrapper defaults, {size}x{size}"
    elif pipeline == "project":
        env = make_training_env(cfg, hp["n_envs"], seed)
        hp["env"] = "project pipeline (envs.breakout.make_env), episodic life, clipped reward"
    else:
        raise ValueError(f"unknown pipeline {pipeline!r}; accepted: {PIPELINES}")
    model = build_model(algo, hp, env, seed, device=device)
    callback = LearningCurve(cfg, algo, hp, seed, on_point=on_point, on_progress=on_progress)
    t0 = time.perf_counter()
    try:
        model.learn(total_timesteps=hp["total_timesteps"], callback=callback, progress_bar=False)
    finally:
        env.close()
    wall = time.perf_counter() - t0
    assert model.num_timesteps <= cfg.baselines.agent_steps, (model.num_timesteps, cfg.baselines.agent_steps)
    return BuiltAgent(make_sb3_agent(model, algo, hp, seed), int(model.num_timesteps), hp, curve=callback.points,
                      model=model, train_seconds=wall - callback.eval_seconds)

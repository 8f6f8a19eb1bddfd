"""One evaluation protocol for every agent: full-game Breakout episodes, raw score.

Every agent (random, tracker, oracle, CEM, actor-critic, SB3 models through an adapter) follows
the same small interface (``planners.base.Agent``)::

    agent.reset(env)      # start of an episode; env is the evaluation env (only emulator-reading
                          # references such as the tracker and the oracle look at it)
    agent.act(obs) -> int # obs: uint8 [4, 64, 64] (the project's pipeline)

An agent trained on another observation pipeline says so with an ``observation_pipeline`` attribute
(``"sb3-atari"``: SB3's ``AtariWrapper`` frames, uint8 ``[4, 84, 84]``); it is evaluated on that
pipeline over the same emulator settings. Evaluation always plays whole games (all lives:
``terminal_on_life_loss`` is forced off), raw score, with the configured sticky actions, no-ops, frame
cap and serve (``envs.breakout.BreakoutRules``), on the seeds of the configured evaluation block
(``evaluation.block``: ``envs.seeds.evaluation_seeds``), which training and collection never reach.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from envs.breakout import make_env
from envs.seeds import evaluation_seeds
from experiments.config import Config
from experiments.runlog import tqdm
from planners.base import Agent


def eval_env_config(cfg: Config):
    """The evaluation environment: the run's settings with whole games (no terminal on life loss)."""
    return dataclasses.replace(cfg.environment, terminal_on_life_loss=False)


def eval_seeds(cfg: Config, episodes: int) -> list[int]:
    """The game seeds of the run's training seed in its evaluation block (``evaluation.block``)."""
    return evaluation_seeds(cfg.evaluation.block, cfg.run.seed, episodes)


PIPELINES = ("project", "sb3-atari")


def make_eval_env(cfg: Config, pipeline: str = "project", seed: int | None = None, screen_size: int | None = None):
    """The evaluation env of an observation pipeline: whole games, raw score, the run's emulator settings
    (``screen_size``: the SB3 stack's frame size, 84 unless an agent says otherwise)."""
    if pipeline == "project":
        return make_env(eval_env_config(cfg), seed=seed)
    if pipeline == "sb3-atari":
        from experiments.sb3_atari import SCREEN, make_sb3_eval_env

        return make_sb3_eval_env(cfg.environment, seed=seed, screen_size=screen_size or SCREEN)
    raise ValueError(f"unknown observation pipeline {pipeline!r}; accepted: {PIPELINES}")


def play_episode(agent: Agent, env, seed: int, on_step: Callable[[dict[str, Any]], None] | None = None,
                 max_steps: int | None = None) -> dict[str, Any]:
    """Play one full game; returns its raw score, length, lives lost and decision latencies."""
    obs, info = env.reset(seed=seed)
    agent.reset(env)
    total, steps, latencies = 0.0, 0, []
    done = False
    while not done:
        t0 = time.perf_counter()
        action = int(agent.act(obs))
        latencies.append(time.perf_counter() - t0)
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        steps += 1
        done = terminated or truncated or (max_steps is not None and steps >= max_steps)
        if on_step is not None:
            on_step({"obs": obs, "action": action, "reward": reward, "info": info, "step": steps})
    lat = np.array(latencies)
    return {
        "seed": seed,
        "return": float(total),
        "length": steps,
        "score_ram": int(info["score"]),
        "truncated": bool(truncated),
        "game_over": bool(terminated),
        "latency_mean_s": float(lat.mean()),
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
    }


def evaluate(agent: Agent, cfg: Config, episodes: int | None = None, seeds: list[int] | None = None,
             desc: str = "eval", progress: bool = True, max_steps: int | None = None,
             on_episode: Callable[[dict[str, Any]], None] | None = None,
             on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Play ``episodes`` full games (default ``evaluation.episodes``) and return one dict per game.

    ``on_step`` is passed to :func:`play_episode` for every game (e.g. to record a video). Under torchrun the
    games are split over the ranks (game ``i`` on rank ``i % world``, each rank with its own copy of the agent)
    and every rank returns all of them, in game order; ``on_episode`` then runs on every rank once the games
    are gathered.
    """
    from experiments import distributed

    grp = distributed.group()
    episodes = cfg.evaluation.episodes if episodes is None else episodes
    seeds = eval_seeds(cfg, episodes) if seeds is None else seeds
    mine = list(range(grp.rank, len(seeds), grp.world))
    results = []
    if mine:
        env = make_eval_env(cfg, getattr(agent, "observation_pipeline", "project"), seed=seeds[mine[0]],
                            screen_size=getattr(agent, "observation_size", None))
        try:
            for i in tqdm(mine, desc=desc, unit="game", disable=not (progress and grp.main), leave=False):
                res = play_episode(agent, env, seeds[i], on_step=on_step, max_steps=max_steps)
                res["episode"] = i
                results.append(res)
                if on_episode is not None and not grp.active:
                    on_episode(res)
        finally:
            env.close()
    if grp.active:
        results = sorted((r for part in distributed.gather(results) for r in part), key=lambda r: r["episode"])
        if on_episode is not None:
            for res in results:
                on_episode(res)
    return results


def summarize_returns(results: list[dict[str, Any]]) -> dict[str, float]:
    r = np.array([x["return"] for x in results], dtype=np.float64)
    return {"episodes": len(r), "mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()),
            "max": float(r.max()), "median": float(np.median(r)),
            "length_mean": float(np.mean([x["length"] for x in results]))}

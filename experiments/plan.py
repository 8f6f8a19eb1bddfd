"""`run.py plan-in-env`: a planner plays full Breakout games through the one evaluation protocol.

Planners: ``cem`` (CEM/MPC over a Stage-2 world model), ``oracle`` (the same CEM over the emulator
itself), ``random`` and ``tracker`` (references). The run folder gets ``episodes.jsonl`` (one line
per game: return, length, decision latency), ``summary.json``, ``metrics.jsonl`` and wandb; with a
video, ``video.gif`` of the first game with the planner's predicted return on each frame.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.errors import UserError
from experiments.config import Config
from experiments.play import eval_seeds, evaluate, summarize_returns
from experiments.runlog import RunLogger, seed_everything, setup_torch
from planners.cem import CEMPlanner, PolicyFn, ValueFn
from planners.oracle import OraclePlanner
from planners.reference import RandomPolicy, TrackerPolicy

PLANNERS = ("cem", "oracle", "random", "tracker", "actor-critic")


def build_planner(name: str, cfg: Config, checkpoint: str | Path | None = None, model: Any = None,
                  value_fn: ValueFn | None = None, policy_fn: PolicyFn | None = None, seed: int | None = None,
                  agent: str | Path | None = None):
    """The agent called ``name`` (one of :data:`PLANNERS`).

    ``cem`` plans over ``model`` if given, else over the world model loaded from ``checkpoint``
    (``value_fn`` / ``policy_fn``: an actor-critic's critic and actor, see :class:`CEMPlanner`).
    ``agent`` is a train-agent checkpoint: ``actor-critic`` plays with it, and ``cem`` takes its critic
    as ``value_fn`` and its actor as ``policy_fn`` (used when ``planner.use_value`` / ``policy_samples``).
    Without ``checkpoint``, the world model the agent was trained on is used.
    """
    seed = cfg.run.seed if seed is None else seed
    if name == "actor-critic" and agent is None:
        raise UserError("--planner actor-critic needs --agent PATH (an agent.pt written by `run.py train-agent`)")
    if agent is not None and name in ("cem", "actor-critic"):
        from agent.actor_critic import policy_prior
        from agent.player import load_agent, load_agent_checkpoint

        if model is None:
            from worldmodel import load_world_model

            checkpoint = checkpoint or load_agent_checkpoint(agent)["world_model"]
            model = load_world_model(checkpoint, device=setup_torch(cfg))
        ac = load_agent(agent, model, seed=seed, device=setup_torch(cfg))
        if name == "actor-critic":
            return ac
        value_fn = value_fn or ac.critic
        policy_fn = policy_fn or policy_prior(ac.actor, model, torch.Generator().manual_seed(seed))
    if name == "cem":
        if model is None:
            if checkpoint is None:
                raise UserError("--planner cem needs a world model: pass --checkpoint PATH to a stage-2 checkpoint")
            from worldmodel import load_world_model

            model = load_world_model(checkpoint, device=setup_torch(cfg))
        return CEMPlanner(model, cfg.planner, value_fn=value_fn, policy_fn=policy_fn, seed=seed)
    if name == "oracle":
        return OraclePlanner(cfg.planner, cfg.environment.frame_skip, cfg.environment.fire_on_life_loss, seed=seed)
    if name == "random":
        return RandomPolicy(seed=seed)
    if name == "tracker":
        return TrackerPolicy(seed=seed)
    raise UserError(f"unknown planner '{name}'; accepted: {', '.join(PLANNERS)}")


class VideoRecorder:
    """Frames of the first game, upscaled, with the planner's predicted return drawn on each."""

    def __init__(self, agent: Any, scale: int = 4):
        self.agent, self.scale = agent, scale
        self.frames: list[np.ndarray] = []
        self.active = True
        self.score = 0.0

    def on_step(self, step: dict[str, Any]) -> None:
        if not self.active:
            return
        import cv2

        self.score += float(step["reward"])
        frame = np.asarray(step["obs"])[-1]  # [64, 64] newest frame
        big = cv2.resize(frame, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_NEAREST)
        big = cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)  # [64s, 64s, 3]
        big = cv2.copyMakeBorder(big, 36, 0, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))  # [64s+36, 64s, 3] text band
        pred = getattr(self.agent, "last_info", {}).get("predicted_return")
        text = f"pred {pred:+.2f}" if pred is not None else "pred n/a"
        cv2.putText(big, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        cv2.putText(big, f"score {self.score:.0f}", (4, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1,
                    cv2.LINE_AA)
        self.frames.append(big)

    def on_episode(self, _result: dict[str, Any]) -> None:
        self.active = False

    def save(self, path: Path, fps: int = 15) -> Path:
        import imageio.v2 as imageio

        imageio.mimsave(path, self.frames, duration=1.0 / fps, loop=0)
        return path


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    out = summarize_returns(results)
    out["latency_mean_s"] = float(np.mean([r["latency_mean_s"] for r in results]))
    out["latency_p50_s"] = float(np.median([r["latency_p50_s"] for r in results]))
    out["latency_p95_s"] = float(np.max([r["latency_p95_s"] for r in results]))
    out["decisions_per_s"] = 1.0 / max(out["latency_mean_s"], 1e-9)
    out["capped_episodes"] = int(sum(r["capped"] for r in results))
    return out


def plan_in_env(cfg: Config, planner: str = "cem", checkpoint: str | Path | None = None, episodes: int | None = None,
                video: bool = False, max_steps: int | None = None, compare_random: bool = True,
                progress: bool = True, value_fn: ValueFn | None = None, policy_fn: PolicyFn | None = None,
                agent: str | Path | None = None) -> dict[str, Any]:
    """Play ``episodes`` full games (default ``evaluation.episodes``) with ``planner``; returns the summary.

    ``max_steps`` caps each game (capped games are counted in the summary); ``compare_random``
    also plays the random policy on the same seeds so the two means sit side by side.
    """
    if planner not in PLANNERS:
        raise UserError(f"unknown planner '{planner}'; accepted: {', '.join(PLANNERS)}")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be a positive number of agent steps, got {max_steps}")
    episodes = cfg.evaluation.episodes if episodes is None else episodes
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    torch.set_num_threads(cfg.run.threads or 1)
    seed_everything(cfg.run.seed)
    agent_path = agent
    agent = build_planner(planner, cfg, checkpoint, value_fn=value_fn, policy_fn=policy_fn, agent=agent_path)
    seeds = eval_seeds(cfg, episodes)
    with RunLogger(cfg, "plan-in-env") as run:
        ep_file = open(run.dir / "episodes.jsonl", "w")
        recorder = VideoRecorder(agent) if video else None

        def on_episode(res: dict[str, Any]) -> None:
            res["capped"] = bool(not res["game_over"] and not res["truncated"])
            ep_file.write(json.dumps({"planner": planner, **res}) + "\n")
            ep_file.flush()
            run.log({"eval/return": res["return"], "eval/length": res["length"],
                     "perf/decision_latency_mean_s": res["latency_mean_s"],
                     "perf/decision_latency_p95_s": res["latency_p95_s"]}, step=res["episode"])
            if recorder is not None:
                recorder.on_episode(res)

        t0 = time.perf_counter()
        try:
            results = evaluate(agent, cfg, seeds=seeds, desc=f"plan-in-env {planner}", progress=progress,
                               max_steps=max_steps, on_episode=on_episode,
                               on_step=recorder.on_step if recorder is not None else None)
        finally:
            ep_file.close()
        summary: dict[str, Any] = {"planner": planner, "checkpoint": str(checkpoint) if checkpoint else None,
                                   "agent": str(agent_path) if agent_path else None,
                                   "seeds": seeds, "max_steps": max_steps, "wall_s": time.perf_counter() - t0,
                                   "planner_config": cfg.to_dict()["planner"], planner: _summary(results)}
        if compare_random and planner != "random":
            ref = evaluate(RandomPolicy(seed=cfg.run.seed), cfg, seeds=seeds, desc="plan-in-env random",
                           progress=progress, max_steps=max_steps)
            for r in ref:
                r["capped"] = bool(not r["game_over"] and not r["truncated"])
            summary["random"] = _summary(ref)
            summary["ratio_to_random"] = summary[planner]["mean"] / max(summary["random"]["mean"], 1e-9)
            run.log({"eval/random_return_mean": summary["random"]["mean"]}, step=episodes)
        run.log({"eval/return_mean": summary[planner]["mean"]}, step=episodes)
        if recorder is not None and recorder.frames:
            summary["video"] = str(recorder.save(run.dir / "video.gif"))
            summary["video_frames"] = len(recorder.frames)
        summary["run_dir"] = str(run.dir)
        run.write_json("summary.json", summary)
    return summary


def format_plan_summary(s: dict[str, Any]) -> str:
    """The table `plan-in-env` prints: the planner's returns beside random's."""
    lines = [f"run folder: {s['run_dir']}"]
    cap = f" (games capped at {s['max_steps']} steps)" if s.get("max_steps") else ""
    lines.append(f"{'agent':<10}{'episodes':>9}{'mean':>9}{'std':>8}{'min':>7}{'max':>7}{'length':>9}"
                 f"{'lat p50 ms':>12}{'lat p95 ms':>12}{cap}")
    for name in (s["planner"], "random"):
        if name not in s:
            continue
        r = s[name]
        lines.append(f"{name:<10}{r['episodes']:>9}{r['mean']:>9.2f}{r['std']:>8.2f}{r['min']:>7.0f}{r['max']:>7.0f}"
                     f"{r['length_mean']:>9.1f}{1e3 * r['latency_p50_s']:>12.2f}{1e3 * r['latency_p95_s']:>12.2f}")
    if "ratio_to_random" in s:
        lines.append(f"{s['planner']} / random mean return: {s['ratio_to_random']:.2f}x")
    if s.get("video"):
        lines.append(f"video: {s['video']}")
    return "\n".join(lines)

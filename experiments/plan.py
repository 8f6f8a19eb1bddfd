"""`run.py plan-in-env`: a planner plays full Breakout games through the one evaluation protocol.

Planners are the registry's agents that act without env-step training (:mod:`experiments.agents`):
``cem`` (CEM/MPC over a Stage-2 world model), ``oracle`` (the same CEM over the emulator itself),
``actor-critic`` (the train-agent actor), ``random`` and ``tracker`` (references). The run folder
gets ``episodes.jsonl`` (one line per game: return, length, decision latency), ``summary.json``,
``metrics.jsonl`` and wandb; with a video, ``video.gif`` of the first game with the planner's
predicted return on each frame.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.errors import UserError
from experiments.agents import AgentInputs, build_agent, check_needs, get_spec
from experiments.config import Config
from experiments.play import eval_seeds, evaluate, summarize_returns
from experiments.runlog import RunLogger, seed_everything, setup_torch

# The flag that supplies each input an agent may need (experiments.agents.check_needs).
FLAGS = {"world_model": "--checkpoint", "agent_checkpoint": "--agent"}


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
                progress: bool = True, agent: str | Path | None = None) -> dict[str, Any]:
    """Play ``episodes`` full games (default ``evaluation.episodes``) with ``planner``; returns the summary.

    ``planner`` is a registry agent that acts without env-step training (:mod:`experiments.agents`);
    ``checkpoint`` is its world model and ``agent`` a train-agent checkpoint (the actor-critic, or the
    critic value and policy prior of ``cem``). ``max_steps`` caps each game (capped games are counted in
    the summary); ``compare_random`` also plays the random policy on the same seeds so the two means
    sit side by side.
    """
    spec = get_spec(planner, acting_only=True, what="planner")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be a positive number of agent steps, got {max_steps}")
    episodes = cfg.evaluation.episodes if episodes is None else episodes
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    torch.set_num_threads(cfg.run.threads or 1)
    inputs = AgentInputs(setup_torch(cfg), world_model=None if checkpoint is None else Path(checkpoint),
                         agent_checkpoint=None if agent is None else Path(agent))
    check_needs(spec, inputs, f"--planner {planner}", FLAGS)
    seed_everything(cfg.run.seed)
    player = spec.build(cfg, inputs, cfg.run.seed).agent
    seeds = eval_seeds(cfg, episodes)
    with RunLogger(cfg, "plan-in-env") as run:
        ep_file = open(run.dir / "episodes.jsonl", "w")
        recorder = VideoRecorder(player) if video else None

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
            results = evaluate(player, cfg, seeds=seeds, desc=f"plan-in-env {planner}", progress=progress,
                               max_steps=max_steps, on_episode=on_episode,
                               on_step=recorder.on_step if recorder is not None else None)
        finally:
            ep_file.close()
        summary: dict[str, Any] = {"planner": planner, "checkpoint": str(checkpoint) if checkpoint else None,
                                   "agent": str(agent) if agent else None,
                                   "seeds": seeds, "evaluation_block": cfg.evaluation.block, "max_steps": max_steps,
                                   "wall_s": time.perf_counter() - t0,
                                   "planner_config": cfg.to_dict()["planner"], planner: _summary(results)}
        if compare_random and planner != "random":
            ref = evaluate(build_agent("random", cfg, inputs).agent, cfg, seeds=seeds, desc="plan-in-env random",
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

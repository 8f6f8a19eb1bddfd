#!/usr/bin/env python
"""Why SB3 DQN scores lower on the project's pipeline than on SB3's own Atari stack. Prints JSON.

The same SB3 DQN (RL-Zoo Atari settings scaled to the budget: experiments/baselines.py) is trained under
observation pipelines that differ in one thing at a time, ``--seeds`` seeds each, and every model is scored
by the one evaluation protocol (whole games, raw score, the preset's evaluation block):

- ``project-64``: the project's pipeline (what `compare-baselines --agents dqn` trains; the world model
  sees the same 64x64 frames);
- ``project-84``: the project's pipeline at 84x84 (resolution only);
- ``sb3-64``: SB3's ``make_atari_env`` + ``VecFrameStack(4)`` at 64x64 (everything else SB3's: its reset,
  episodic life with FIRE reset instead of the project's serve, zero-padded frame stack at a continued game);
- ``sb3-84``: SB3's stack as SB3 users run it (what `compare-baselines --agents dqn-sb3` trains).

Resolution is ``project-64`` vs ``project-84`` and ``sb3-64`` vs ``sb3-84``; the rest of the stack is
``project-84`` vs ``sb3-84``. Every run is a JSON file in ``--out`` and a rerun skips finished ones;
``--from-compare FOLDER`` reuses the ``dqn`` and ``dqn-sb3`` pairs of a comparison folder made with the same
preset (the same training and evaluation code), so they are not trained twice.

Example (hours on a 2-core CPU: one run took 2.1-2.6 h of one core here, two runs side by side):
    python benchmarks/dqn_gap.py --preset atari100k --seeds 3 --from-compare runs/compare-baselines/atari100k
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from experiments.baselines import train_sb3  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.play import evaluate, summarize_returns  # noqa: E402
from experiments.results import bootstrap_ci  # noqa: E402
from experiments.runlog import seed_everything  # noqa: E402

# variant -> (pipeline, frame size, the compare-baselines agent that trains exactly this variant)
VARIANTS = {"project-64": ("project", 64, "dqn"), "project-84": ("project", 84, None),
            "sb3-64": ("sb3-atari", 64, None), "sb3-84": ("sb3-atari", 84, "dqn-sb3")}


def run_one(variant: str, cfg, seed: int) -> dict:
    pipeline, size, _ = VARIANTS[variant]
    if pipeline == "project":
        cfg = dataclasses.replace(cfg, environment=dataclasses.replace(cfg.environment, image_height=size,
                                                                       image_width=size))
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))
    seed_everything(seed)
    t0 = time.perf_counter()
    built = train_sb3("dqn", cfg, seed=seed, device="cpu", pipeline=pipeline,
                      sb3_screen_size=size if pipeline == "sb3-atari" else None)
    episodes = evaluate(built.agent, cfg, progress=False)
    return {"variant": variant, "seed": seed, "returns": [e["return"] for e in episodes],
            "eval_seeds": [e["seed"] for e in episodes], "env_steps": built.env_steps,
            "final": summarize_returns(episodes), "wall_clock_s": time.perf_counter() - t0,
            "hyperparams": built.hyperparams, "source": "benchmarks/dqn_gap.py"}


def from_compare(folder: Path, agent: str, seed: int, preset: str) -> dict | None:
    path = folder / agent / f"s{seed}" / "result.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    if res.get("preset") != preset:
        return None
    return {"returns": res["returns"], "eval_seeds": res["eval_seeds"], "env_steps": res["env_steps"],
            "final": res["final"], "wall_clock_s": res["wall_clock_s"], "hyperparams": res["hyperparams"],
            "source": str(path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="atari100k")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=Path("runs/dqn-gap"))
    ap.add_argument("--from-compare", type=Path, default=None, help="comparison folder with dqn / dqn-sb3 pairs")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; accepted: {', '.join(VARIANTS)}")
    cfg = load_config(args.preset, ["run.threads=1", *args.overrides])
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"benchmark": "dqn_gap", "preset": args.preset, "agent_steps": cfg.baselines.agent_steps,
                    "evaluation_block": cfg.evaluation.block, "episodes_per_seed": cfg.evaluation.episodes,
                    "variants": {}}
    for variant in variants:
        runs = []
        for seed in range(cfg.run.seed, cfg.run.seed + args.seeds):
            path = args.out / variant / f"s{seed}.json"
            if path.is_file():
                runs.append(json.loads(path.read_text()))
                continue
            agent = VARIANTS[variant][2]
            res = from_compare(args.from_compare, agent, seed, args.preset) if args.from_compare and agent else None
            res = {"variant": variant, "seed": seed, **res} if res else run_one(variant, cfg, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_text(json.dumps(res, indent=1))
            os.replace(path.with_suffix(".tmp"), path)
            runs.append(res)
            print(f"{variant} seed {seed}: {np.mean(res['returns']):.2f}", file=sys.stderr)
        returns = np.concatenate([r["returns"] for r in runs])
        report["variants"][variant] = {
            "seeds": [r["seed"] for r in runs], "mean": float(returns.mean()),
            "ci95_mean": list(bootstrap_ci(returns, "mean")),
            "seed_means": [float(np.mean(r["returns"])) for r in runs],
            "episodes": int(returns.size), "wall_clock_s": float(sum(r["wall_clock_s"] for r in runs)),
            "sources": sorted({r["source"] for r in runs})}
    v = report["variants"]
    gaps = {"resolution_on_project_pipeline": ("project-84", "project-64"),
            "resolution_on_sb3_stack": ("sb3-84", "sb3-64"), "rest_of_stack_at_84": ("sb3-84", "project-84"),
            "total": ("sb3-84", "project-64")}
    report["differences_of_means"] = {k: v[a]["mean"] - v[b]["mean"] for k, (a, b) in gaps.items() if a in v and b in v}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

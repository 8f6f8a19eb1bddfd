#!/usr/bin/env python
"""Where one `run.py learn` run spends its wall-clock. Prints JSON.

Runs (or reads, with ``--run``) one closed-loop run and splits its wall-clock into env steps (prefill and
collection), Stage 1, Stage 2 (the prefill fit and the loop's updates), actor-critic updates, encoding of new
frames, evaluation games and checkpoint writes. The reference measured in the same run is plain random play of the
same number of env steps through the same pipeline, so ``env_over_random_play`` says what acting with the
encoder and the actor costs over the emulator alone, on this machine, now.

The target of the closed-loop issue: one ``atari100k`` seed in at most 75 minutes on one thread
(``--set run.threads=1``), so two seeds run side by side on a 2-core machine.

Example (one thread; atari100k takes about an hour):
    python benchmarks/bench_learn.py --preset tiny --set baselines.agent_steps=600
    python benchmarks/bench_learn.py --preset atari100k --set run.threads=1
    python benchmarks/bench_learn.py --run runs/learn/<run>       # the split of a finished run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

TARGET_MIN = 75.0


def random_play_seconds(cfg, steps: int) -> float:
    """Wall-clock of ``steps`` uniformly random env steps through the project's pipeline."""
    from envs.breakout import NUM_ACTIONS, make_env
    from envs.seeds import training_seed

    env = make_env(cfg.environment, seed=cfg.run.seed)
    rng = np.random.default_rng(0)
    env.reset(seed=training_seed(cfg.run.seed, 99_999))
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(int(rng.integers(NUM_ACTIONS)))
        if term or trunc:
            env.reset()
    env.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    ap.add_argument("--run", type=Path, default=None, help="a finished learn run folder to read instead")
    ap.add_argument("--reference-steps", type=int, default=5000, help="random-play steps timed as the reference")
    args = ap.parse_args()
    from experiments.config import load_config

    if args.run is not None:
        summary = json.loads((args.run / "summary.json").read_text())
        import yaml

        from experiments.config import config_from_dict

        cfg = config_from_dict(yaml.safe_load((args.run / "config.yaml").read_text()))
    else:
        from experiments.learn import learn

        tmp = tempfile.mkdtemp(prefix="bench-learn-")
        cfg = load_config(args.preset, ["run.wandb=disabled", f"run.runs_dir={tmp}", *args.overrides])
        summary = learn(cfg, progress=False, echo=lambda s: print(s, file=sys.stderr))
    t = summary["timings_s"]
    total = float(sum(t.values()))
    ref_steps = min(args.reference_steps, summary["env_steps"])
    ref = random_play_seconds(cfg, ref_steps) * summary["env_steps"] / max(1, ref_steps)
    report = {
        "benchmark": "bench_learn", "preset": cfg.preset, "threads": cfg.run.threads, "run_dir": summary["run_dir"],
        "env_steps": summary["env_steps"], "iterations": summary["iterations"],
        "wall_clock_min": total / 60, "split_min": {k: v / 60 for k, v in t.items()},
        "split_fraction": {k: v / max(total, 1e-9) for k, v in t.items()},
        "random_play_same_steps_min": ref / 60, "env_over_random_play": t.get("env", 0.0) / max(ref, 1e-9),
        "final_return_mean": summary["final"]["mean"], "reward_head": summary["heads"],
        "target_min_atari100k_one_thread": TARGET_MIN,
    }
    if cfg.preset == "atari100k":
        report["meets_target"] = report["wall_clock_min"] <= TARGET_MIN
    print(json.dumps(report, indent=1, default=str).replace("NaN", "null"))


if __name__ == "__main__":
    main()

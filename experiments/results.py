"""Score statistics of a comparison: per agent over seeds x episodes, written as results.json and results.md.

Per agent: mean, median, interquartile mean (IQM: the mean of the middle 50% of the pooled
returns, as rliable recommends), a 95% percentile-bootstrap confidence interval of the mean and
of the IQM (resampling the pooled seeds x episodes returns), the human-normalised score
``(score - random) / (human - random)`` with Breakout's human 30.5 and random 1.7, env steps used
and wall-clock.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

HUMAN_SCORE = 30.5  # Breakout human score used for normalisation (Atari 100k convention)
RANDOM_SCORE = 1.7  # Breakout random-policy score used for normalisation


def human_normalised(score: float) -> float:
    return (score - RANDOM_SCORE) / (HUMAN_SCORE - RANDOM_SCORE)


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along ``axis``: drop the lowest and highest quarter, average the rest."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    cut = int(np.floor(0.25 * n))
    kept = np.take(x, np.arange(cut, n - cut), axis=axis)
    return kept.mean(axis=axis)


def bootstrap_ci(returns: np.ndarray, stat: str = "mean", reps: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``stat`` ("mean" or "iqm") of pooled returns, all resamples in one array."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size == 1:
        return float(r[0]), float(r[0])
    rng = np.random.default_rng(seed)
    samples = r[rng.integers(0, r.size, size=(reps, r.size))]  # [reps, n]
    values = samples.mean(axis=1) if stat == "mean" else iqm(samples, axis=1)  # [reps]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize_agent(name: str, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of one agent from its per-seed results.

    Args:
        name: agent name.
        per_seed: one dict per training seed with ``seed``, ``returns`` (final evaluation, one per
            episode), ``env_steps``, ``wall_clock_s`` and optionally ``hyperparams``.
    """
    returns = np.concatenate([np.asarray(s["returns"], dtype=np.float64) for s in per_seed])
    mean, med, q = float(returns.mean()), float(np.median(returns)), float(iqm(returns))
    ci = bootstrap_ci(returns, "mean")
    ci_iqm = bootstrap_ci(returns, "iqm")
    out = {
        "agent": name,
        "seeds": [s["seed"] for s in per_seed],
        "episodes": int(returns.size),
        "mean": mean,
        "median": med,
        "iqm": q,
        "std": float(returns.std()),
        "min": float(returns.min()),
        "max": float(returns.max()),
        "ci95_mean": list(ci),
        "ci95_iqm": list(ci_iqm),
        "human_normalised_mean": human_normalised(mean),
        "human_normalised_iqm": human_normalised(q),
        "env_steps": [int(s["env_steps"]) for s in per_seed],
        "env_steps_mean": float(np.mean([s["env_steps"] for s in per_seed])),
        # A world-model agent's wall-clock includes its seed's world-model stack (shared with the other
        # world-model agents of that seed).
        "wall_clock_s": [float(s["wall_clock_s"] + s.get("stack_wall_clock_s", 0.0)) for s in per_seed],
        "wall_clock_s_total": float(np.sum([s["wall_clock_s"] + s.get("stack_wall_clock_s", 0.0) for s in per_seed])),
        "seed_means": [float(np.mean(s["returns"])) for s in per_seed],
        "seed_means_std": float(np.std([np.mean(s["returns"]) for s in per_seed])),
        "world_model_per_seed": per_seed[0].get("world_model_per_seed"),
        "evaluation_seeds": sorted({int(x) for s in per_seed for x in s.get("eval_seeds", [])}),
    }
    hps = [s.get("hyperparams") for s in per_seed if s.get("hyperparams")]
    if hps:
        out["hyperparams"] = hps[0]
    return out


def format_table(summaries: list[dict[str, Any]]) -> str:
    """A markdown table, one row per agent."""
    lines = [
        "| agent | seeds | episodes | mean | IQM | 95% CI (mean) | per-seed means (std) | human-norm. (mean) "
        "| env steps | wall-clock |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for s in summaries:
        lo, hi = s["ci95_mean"]
        per_seed = " / ".join(f"{m:.2f}" for m in s["seed_means"])
        lines.append(
            f"| {s['agent']} | {len(s['seeds'])} | {s['episodes']} | {s['mean']:.2f} | "
            f"{s['iqm']:.2f} | [{lo:.2f}, {hi:.2f}] | {per_seed} ({s['seed_means_std']:.2f}) | "
            f"{s['human_normalised_mean']:.3f} | {s['env_steps_mean']:,.0f} | {s['wall_clock_s_total'] / 60:.1f} min |")
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out_dir: str | Path, summaries: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """``results.json`` (everything, hyperparameters included) and ``results.md`` (the table)."""
    out_dir = Path(out_dir)
    data = {"meta": {**meta, "human_score": HUMAN_SCORE, "random_score": RANDOM_SCORE}, "agents": summaries}
    _atomic_write(out_dir / "results.json", json.dumps(data, indent=2))
    md = [f"# Comparison: preset `{meta.get('preset')}`", ""]
    if meta.get("command"):
        md += ["Command:", "", f"    {meta['command']}", ""]
    block = (meta.get("evaluation") or {}).get("block")
    whole = meta.get("wall_clock_s_whole_run")
    md += [f"Returns are raw full-game scores over seeds x episodes ({meta.get('episodes_per_seed')} evaluation "
           f"episodes per training seed, on the '{block}' evaluation block of game seeds, which training never "
           f"reaches: envs/seeds.py); human-normalised with human {HUMAN_SCORE}, random {RANDOM_SCORE}; 95% CI: "
           "percentile bootstrap of the mean over the pooled seeds x episodes; per-seed means and their standard "
           "deviation show the spread between training seeds. World-model agents: "
           + ("a world model per seed." if any(s.get("world_model_per_seed") for s in summaries)
              else "see their hyperparameters.")
           + (f" Wall-clock of the whole comparison: {whole / 60:.1f} min." if whole else ""), "",
           format_table(summaries), "", "## Hyperparameters", ""]
    for s in summaries:
        if "hyperparams" in s:
            md.append(f"- **{s['agent']}**: " + ", ".join(f"{k}={v}" for k, v in s["hyperparams"].items()))
    _atomic_write(out_dir / "results.md", "\n".join(md) + "\n")
    return {"json": out_dir / "results.json", "md": out_dir / "results.md"}

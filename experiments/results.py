"""Score statistics of a comparison: per agent over seeds x episodes, written as results.json and results.md.

Per agent: mean, median, interquartile mean (IQM: the mean of the middle 50% of the pooled
returns, as rliable recommends), a 95% percentile-bootstrap confidence interval of the mean and
of the IQM (resampling the pooled seeds x episodes returns), a 95% CI of the mean over training seeds (a two-level
bootstrap: resample the seeds, then each drawn seed's episodes; it counts the spread between training runs, world
model and agent, which the pooled-returns CI leaves out), the human-normalised score
``(score - random) / (human - random)`` with Breakout's human 30.5 and random 1.7, env steps used
and wall-clock.
"""

from __future__ import annotations

import json
import os
import sys
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


def _resampled_seed_means(groups: list[np.ndarray], rng: np.random.Generator, reps: int) -> np.ndarray:
    """[reps, k]: each seed's mean over its games drawn with replacement, ``reps`` times (a one-game seed: itself),
    used wherever that seed is drawn."""
    means = np.empty((reps, len(groups)))
    for j, g in enumerate(groups):
        means[:, j] = g[rng.integers(0, g.size, size=(reps, g.size))].mean(axis=1) if g.size > 1 else g[0]
    return means


def seed_bootstrap_ci(per_seed_returns: list[np.ndarray], reps: int = 4000, level: float = 0.95, seed: int = 0
                      ) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean over training seeds, resampling at both levels: draw the seeds with
    replacement, then each drawn seed's episodes, and average the drawn seeds' means (a hierarchical bootstrap).

    The pooled-returns CI (:func:`bootstrap_ci`) treats every episode as independent, so it holds each seed's
    trained agent fixed and says how precisely its games measure *that* agent. Two training runs of one setting
    differ by more than that (world model and actor-critic draws), and this interval includes that spread. With
    one seed it is the pooled CI of that seed; with few seeds it is wide, as it should be."""
    groups = [np.asarray(r, dtype=np.float64) for r in per_seed_returns]
    if len(groups) == 1:
        return bootstrap_ci(groups[0], "mean", reps=reps, level=level, seed=seed)
    rng = np.random.default_rng(seed)
    k = len(groups)
    pick = rng.integers(0, k, size=(reps, k))  # [reps, k] seeds drawn
    values = np.take_along_axis(_resampled_seed_means(groups, rng, reps), pick, axis=1).mean(axis=1)  # [reps]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def seed_bootstrap_diff_ci(a: list[np.ndarray], b: list[np.ndarray], paired: bool = True, reps: int = 4000,
                           level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` over training seeds and its percentile-bootstrap CI, resampling seeds and then each
    drawn seed's games (as :func:`seed_bootstrap_ci`). ``paired``: ``a[i]`` and ``b[i]`` share seed ``i``'s
    training run up to the setting compared (the same prefill, or the same loop before a final phase), so one
    draw of seeds serves both arms; otherwise each arm's seeds are drawn on their own. Returns (difference, lo, hi).
    """
    ga = [np.asarray(r, dtype=np.float64) for r in a]
    gb = [np.asarray(r, dtype=np.float64) for r in b]
    if paired and len(ga) != len(gb):
        raise ValueError(f"a paired difference needs as many seeds in both arms ({len(ga)} against {len(gb)})")
    rng = np.random.default_rng(seed)
    ma, mb = _resampled_seed_means(ga, rng, reps), _resampled_seed_means(gb, rng, reps)
    pa = rng.integers(0, len(ga), size=(reps, len(ga)))
    pb = pa if paired else rng.integers(0, len(gb), size=(reps, len(gb)))
    values = np.take_along_axis(ma, pa, axis=1).mean(axis=1) - np.take_along_axis(mb, pb, axis=1).mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    diff = float(np.mean([g.mean() for g in ga]) - np.mean([g.mean() for g in gb]))
    return diff, float(lo), float(hi)


def games_bootstrap_diff_ci(a: list[np.ndarray], b: list[np.ndarray], reps: int = 4000, level: float = 0.95,
                            seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` over seeds with each seed's games resampled and the seeds held fixed: how precisely
    these games measure *these* trained agents (narrower than :func:`seed_bootstrap_diff_ci`, which also counts the
    spread between training runs). Returns (difference, lo, hi)."""
    ga = [np.asarray(r, dtype=np.float64) for r in a]
    gb = [np.asarray(r, dtype=np.float64) for r in b]
    rng = np.random.default_rng(seed)
    values = _resampled_seed_means(ga, rng, reps).mean(axis=1) - _resampled_seed_means(gb, rng, reps).mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    diff = float(np.mean([g.mean() for g in ga]) - np.mean([g.mean() for g in gb]))
    return diff, float(lo), float(hi)


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
    ci_seeds = seed_bootstrap_ci([np.asarray(s["returns"], dtype=np.float64) for s in per_seed])
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
        "ci95_mean_over_seeds": list(ci_seeds),
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
        "| agent | seeds | episodes | mean | IQM | 95% CI (mean, games) | 95% CI (mean, seeds) | per-seed means (std) "
        "| human-norm. (mean) | env steps | wall-clock |",
        "|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|",
    ]
    for s in summaries:
        lo, hi = s["ci95_mean"]
        seeds_ci = (f"[{s['ci95_mean_over_seeds'][0]:.2f}, {s['ci95_mean_over_seeds'][1]:.2f}]"
                    if "ci95_mean_over_seeds" in s else "-")  # older results.json files lack it
        per_seed = " / ".join(f"{m:.2f}" for m in s["seed_means"])
        lines.append(
            f"| {s['agent']} | {len(s['seeds'])} | {s['episodes']} | {s['mean']:.2f} | "
            f"{s['iqm']:.2f} | [{lo:.2f}, {hi:.2f}] | {seeds_ci} | {per_seed} ({s['seed_means_std']:.2f}) | "
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
           "percentile bootstrap of the mean, (games) over the pooled seeds x episodes, which holds each seed's "
           "trained agent fixed, and (seeds) resampling the training seeds and then each one's episodes, which also "
           "counts the spread between training runs: compare agents by the seeds interval; per-seed means and their "
           "standard deviation show that spread. World-model agents: "
           + ("a world model per seed." if any(s.get("world_model_per_seed") for s in summaries)
              else "see their hyperparameters.")
           + (f" Wall-clock of the whole comparison: {whole / 60:.1f} min." if whole else ""), "",
           format_table(summaries), "", "## Hyperparameters", ""]
    for s in summaries:
        if "hyperparams" in s:
            md.append(f"- **{s['agent']}**: " + ", ".join(f"{k}={v}" for k, v in s["hyperparams"].items()))
    _atomic_write(out_dir / "results.md", "\n".join(md) + "\n")
    return {"json": out_dir / "results.json", "md": out_dir / "results.md"}


def table_from_episodes(paths: list[str | Path]) -> str:
    """The comparison table of one or more ``episodes.json`` files (compare-baselines' per-episode records), agents
    in the order they first appear; a pair of the same agent and seed in a later file replaces the earlier one."""
    pairs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable episodes.json ({type(e).__name__}); pass the episodes.json "
                             "of a compare-baselines folder") from None
        if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
            raise ValueError(f"{path} has no 'pairs' list; pass the episodes.json of a compare-baselines folder")
        try:
            for p in data["pairs"]:
                pairs.setdefault(p["agent"], {})[int(p["seed"])] = p
            summaries = [summarize_agent(name, [by_seed[k] for k in sorted(by_seed)])
                         for name, by_seed in pairs.items()]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} has a pair without its agent, seed, returns, env_steps or wall_clock_s "
                             f"({type(e).__name__}: {e}); pass the episodes.json of a compare-baselines "
                             "folder") from None
    return format_table(summaries)


def _run_seed(jsonl: Path) -> int | None:
    """The training seed of a plan-in-env run (``run.seed`` of the ``config.yaml`` beside its episodes), or None."""
    import yaml

    try:
        cfg = yaml.safe_load((jsonl.parent / "config.yaml").read_text())
        return int(cfg["run"]["seed"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def load_seed_returns(spec: str) -> list[tuple[str, np.ndarray, int | None]]:
    """Per-seed returns named by ``spec``: a glob of files, each a compare-baselines ``episodes.json`` (with
    ``:AGENT`` after the glob, every seed of that agent in it) or a plan-in-env run's ``episodes.jsonl`` (one
    seed; a run folder names its own). Files in sorted order, seeds in file order. Returns (label, returns,
    training seed), the seed None where the file does not say it (a plan-in-env run without its config.yaml)."""
    import glob

    pattern, _, agent = spec.partition(":")
    paths = sorted(glob.glob(pattern)) or [pattern]
    out: list[tuple[str, np.ndarray, int | None]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            path = path / "episodes.jsonl"
        try:
            if path.suffix == ".jsonl":
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                planners = sorted({str(r.get("planner")) for r in rows})
            else:
                pairs = json.loads(path.read_text())["pairs"]
                agents = sorted({str(p["agent"]) for p in pairs})
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{raw} is not a readable compare-baselines episodes.json or plan-in-env episodes.jsonl "
                             f"({type(e).__name__}); pass one of those, or a plan-in-env run folder") from None
        if path.suffix == ".jsonl":
            if not agent and len(planners) > 1:
                raise ValueError(f"{path} holds the games of {', '.join(planners)}: add ':PLANNER' to name one")
            returns = [float(r["return"]) for r in rows if not agent or r.get("planner") == agent]
            if not returns:
                raise ValueError(f"{path} has no game of planner '{agent}'; it holds {', '.join(planners)}")
            out.append((str(path), np.asarray(returns), _run_seed(path)))
        else:
            if agent not in agents:
                raise ValueError(f"{path} holds the agents {', '.join(agents)}: add ':AGENT' naming one of them")
            out += [(f"{path}:{agent}:s{p['seed']}", np.asarray(p["returns"], dtype=np.float64), int(p["seed"]))
                    for p in pairs if p["agent"] == agent]
    return out


def pair_by_seed(a: list[tuple[str, np.ndarray, int | None]], b: list[tuple[str, np.ndarray, int | None]]
                 ) -> tuple[list[tuple[str, np.ndarray, int | None]], str]:
    """Arm ``b`` reordered so that its i-th entry has the training seed of ``a``'s i-th, for a paired difference.

    Where every entry of both arms names its training seed, the arms must hold the same seeds once each (a seed
    missing from one arm, or run twice, is an error naming it: pairing by position would silently compare
    different training runs). Where some entry does not say its seed, the arms pair by position, as given.
    Returns (b in a's order, "training seed" or "position")."""
    if any(s is None for _, _, s in a + b):
        return b, "position"
    for name, arm in (("a", a), ("b", b)):
        seeds = [s for _, _, s in arm]
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            raise ValueError(f"arm {name} holds training seed {', '.join(map(str, twice))} more than once; a paired "
                             "difference needs one run a seed in each arm: narrow its glob")
    sa, sb = [s for _, _, s in a], {e[2]: e for e in b}
    if set(sa) != set(sb):
        only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
        parts = ([f"only a has seed {', '.join(map(str, only_a))}"] if only_a else []) + (
            [f"only b has seed {', '.join(map(str, only_b))}"] if only_b else [])
        raise ValueError(f"the paired arms hold different training seeds ({'; '.join(parts)}): give both arms the "
                         "same seeds, or drop --paired")
    return [sb[s] for s in sa], "training seed"


def seeds_for_power(a_means: np.ndarray, b_means: np.ndarray, paired: bool, difference: float,
                    z_alpha: float = 1.959964, z_beta: float = 0.841621) -> int | None:
    """Training seeds an arm that a two-sided 5% test needs to find ``difference`` with 80% power, from these arms'
    spread between seeds (a normal approximation): ``ceil(((z_alpha + z_beta) * sd / difference)^2)``, where ``sd^2``
    is the variance of the per-seed differences (``paired``) or the sum of the two arms' per-seed variances. Each
    per-seed mean carries its own games' noise, so the figure holds for that many games a seed. None where it cannot
    be told: a difference of 0 or fewer than 2 seeds in an arm."""
    a_means, b_means = np.asarray(a_means, dtype=np.float64), np.asarray(b_means, dtype=np.float64)
    if difference == 0 or a_means.size < 2 or b_means.size < 2:
        return None
    var = (np.var(a_means - b_means, ddof=1) if paired
           else np.var(a_means, ddof=1) + np.var(b_means, ddof=1))
    return max(2, int(np.ceil(((z_alpha + z_beta) ** 2) * var / difference ** 2)))


def probability_of_improvement(a_means: np.ndarray, b_means: np.ndarray) -> float:
    """P(A > B) of rliable (Agarwal et al. 2021) for one task: the chance that a training seed of arm a scores above
    one of arm b, ties counting half, over all pairs of their per-seed means (the Mann-Whitney U statistic over
    ``m * n``). 0.5 when neither arm tends to beat the other, whatever their means."""
    a_means = np.asarray(a_means, dtype=np.float64).ravel()
    b_sorted = np.sort(np.asarray(b_means, dtype=np.float64).ravel())
    below = np.searchsorted(b_sorted, a_means, side="left")  # seeds of b under each seed of a
    tied = np.searchsorted(b_sorted, a_means, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (a_means.size * b_sorted.size))


def probability_of_improvement_ci(a: list[np.ndarray], b: list[np.ndarray], reps: int = 4000, level: float = 0.95,
                                  seed: int = 0) -> tuple[float, float, float]:
    """:func:`probability_of_improvement` of the per-seed means and its percentile-bootstrap CI, resampling each
    arm's seeds and then each drawn seed's games (as :func:`seed_bootstrap_ci`; the arms' seeds are drawn apart, as
    rliable's stratified bootstrap draws each algorithm's runs). Returns (P(A > B), lo, hi)."""
    ga = [np.asarray(r, dtype=np.float64) for r in a]
    gb = [np.asarray(r, dtype=np.float64) for r in b]
    rng = np.random.default_rng(seed)
    ma, mb = _resampled_seed_means(ga, rng, reps), _resampled_seed_means(gb, rng, reps)
    pa, pb = rng.integers(0, len(ga), size=(reps, len(ga))), rng.integers(0, len(gb), size=(reps, len(gb)))
    da, db = np.take_along_axis(ma, pa, axis=1), np.take_along_axis(mb, pb, axis=1)  # [reps, m], [reps, n]
    values = np.array([probability_of_improvement(x, y) for x, y in zip(da, db)])  # O((m + n) log n) a draw
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    point = probability_of_improvement(np.array([g.mean() for g in ga]), np.array([g.mean() for g in gb]))
    return point, float(lo), float(hi)


def compare_arms(a: list[np.ndarray], b: list[np.ndarray], paired: bool = False, reps: int = 4000
                 ) -> dict[str, Any]:
    """Both arms' per-seed means and means, and ``mean(a) - mean(b)`` with its games-only and seeds-then-games 95%
    bootstrap intervals (:func:`games_bootstrap_diff_ci`, :func:`seed_bootstrap_diff_ci`); the spread between seeds
    (SD of each arm's per-seed means, and of their differences when paired) and the seeds an arm that would show
    this difference with 80% power (:func:`seeds_for_power`); and rliable's probability that a seed of a beats a
    seed of b, with its seeds-then-games interval (:func:`probability_of_improvement_ci`; unpaired either way)."""
    def arm(g: list[np.ndarray]) -> dict[str, Any]:
        lo, hi = seed_bootstrap_ci(g, reps=reps)
        return {"per_seed": [round(float(x.mean()), 2) for x in g], "games": [int(x.size) for x in g],
                "mean": round(float(np.mean([x.mean() for x in g])), 2), "ci_seeds": [round(lo, 2), round(hi, 2)]}

    d, glo, ghi = games_bootstrap_diff_ci(a, b, reps=reps)
    _, slo, shi = seed_bootstrap_diff_ci(a, b, paired=paired, reps=reps)
    ma, mb = np.array([x.mean() for x in a]), np.array([x.mean() for x in b])
    sd = {"a": round(float(np.std(ma, ddof=1)), 2) if ma.size > 1 else None,
          "b": round(float(np.std(mb, ddof=1)), 2) if mb.size > 1 else None}
    if paired and ma.size > 1:
        sd["difference"] = round(float(np.std(ma - mb, ddof=1)), 2)
    poi, plo, phi = probability_of_improvement_ci(a, b, reps=reps)
    return {"a": arm(a), "b": arm(b), "difference": round(d, 2), "ci_games_only": [round(glo, 2), round(ghi, 2)],
            "ci_seeds_then_games": [round(slo, 2), round(shi, 2)], "paired": paired, "seed_sd": sd,
            "seeds_for_80pct_power": seeds_for_power(ma, mb, paired, float(ma.mean() - mb.mean())),
            "probability_a_beats_b": {"value": round(poi, 3), "ci_seeds_then_games": [round(plo, 3), round(phi, 3)]}}


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m experiments.results",
        description="The comparison table of compare-baselines episodes.json files, or with 'diff' the difference "
                    "of two arms' means with both bootstrap intervals (JSON).",
        epilog="examples: python -m experiments.results docs/results/atari100k_episodes.json | "
               "python -m experiments.results diff 'runs/x/s*/episodes.json:learn' "
               "'runs/plan-in-env/*-quick-s*' [--paired]")
    if argv[:1] == ["diff"]:
        parser.add_argument("mode", choices=["diff"])
        parser.add_argument("a", help="arm a: a glob of episodes.json files with :AGENT, or of plan-in-env runs")
        parser.add_argument("b", help="arm b, the same way")
        parser.add_argument("--paired", action="store_true",
                            help="seed i of a and of b share a training run up to the setting compared; the arms "
                                 "pair by training seed where every file names it (else by position)")
        args = parser.parse_args(argv)
        try:
            a, b = load_seed_returns(args.a), load_seed_returns(args.b)
            paired_by = None
            if args.paired:
                b, paired_by = pair_by_seed(a, b)
            result = compare_arms([r for _, r, _ in a], [r for _, r, _ in b], paired=args.paired)
        except ValueError as err:
            sys.stderr.write(f"error: {err}\n")
            return 2
        result["a"]["sources"], result["b"]["sources"] = [n for n, _, _ in a], [n for n, _, _ in b]
        result["a"]["seeds"], result["b"]["seeds"] = [s for _, _, s in a], [s for _, _, s in b]
        if paired_by:
            result["paired_by"] = paired_by
        print(json.dumps(result, indent=1))
        return 0
    parser.add_argument("episodes", nargs="+", help="compare-baselines episodes.json files")
    args = parser.parse_args(argv)
    try:
        print(table_from_episodes(args.episodes))
    except ValueError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":  # python -m experiments.results docs/results/atari100k_episodes.json
    try:
        code = _main(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing of ours failed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush does not fail too
        code = 0
    raise SystemExit(code)

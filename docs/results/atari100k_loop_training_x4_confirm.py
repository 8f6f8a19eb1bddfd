"""Write or extend docs/results/atari100k_loop_training_x4_confirm.json, the record of the R4 confirmatory test.

The rule: docs/research_log.md, "Four times the loop's training per env step: a confirmatory test on new seeds"
(commits b142f70 and 67459c3, before any run or game). Each session runs both arms of its seeds on one machine into
RUNS (default runs/cf): ``preS`` / ``r4S`` (compare-baselines folders, their held-out games), ``tune_preS`` /
``tune_r4S`` (plan-in-env runs, 100 tuning games each) and ``time_preS.txt`` / ``time_r4S.txt`` (``/usr/bin/time -f
"%U %S %e"``). A seed enters the record only with both arms' 100 tuning games; pairs already recorded (other
sessions, other machines) are kept. The running difference is an interim figure until 18 seeds: it decides nothing.

    python docs/results/atari100k_loop_training_x4_confirm.py [--runs runs/cf] [--machine LABEL]
    python docs/results/atari100k_loop_training_x4_confirm.py --markdown   # docs/results.md's table and bullets
    python -m experiments.results diff 'docs/results/atari100k_loop_training_x4_confirm.json:r4' \
        'docs/results/atari100k_loop_training_x4_confirm.json:preset' --paired      # the same interim figure
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.results import _atomic_write, compare_arms  # noqa: E402

RECORD = ROOT / "docs/results/atari100k_loop_training_x4_confirm.json"
NINE = ROOT / "docs/results/atari100k_nine_seeds_episodes.json"  # acceptance 1's nine seeds, quoted beside
ARMS = {"pre": "preset", "r4": "r4"}
GAMES = 100
SEEDS_FOR_READING = 18
COST_BOUND_MIN = 75


def _one(pattern: str) -> Path | None:
    found = sorted(glob.glob(pattern))
    return Path(found[-1]) if found else None


def machine_of(cmp: dict, fallback: str) -> str:
    """The machine as the run's own provenance names it (CPU model, its SIMD level), else the hand-given label."""
    plat = next((p.get("platform", {}) for p in cmp["pairs"] if p["agent"] == "learn"), {})
    if not plat.get("cpu"):
        return fallback
    return (f"{plat.get('cpu_count', '?')}-core {plat['cpu']} ({plat.get('cpu_capability')}), two runs side by side, "
            "one thread each")


def arm_entry(runs: Path, arm: str, seed: int, machine: str) -> dict | None:
    """One arm of one seed from the run folders, or None while its 100 tuning games are not all played."""
    tune = _one(f"{runs}/tune_{arm}{seed}/plan-in-env/*/episodes.jsonl")
    if tune is None:
        return None
    rows = [json.loads(x) for x in tune.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("planner") == "actor-critic"]
    if len(rows) != GAMES:
        return None
    cmp = json.loads((runs / f"{arm}{seed}" / "episodes.json").read_text())
    pair = next(p for p in cmp["pairs"] if p["agent"] == "learn")
    u, s, e = (float(x) for x in (runs / f"time_{arm}{seed}.txt").read_text().split()[:3])
    return {
        "agent": ARMS[arm], "seed": seed, "returns": [float(r["return"]) for r in rows],
        "game_seeds": [int(r["seed"]) for r in rows], "block": "tuning",
        "held_out_returns": pair["returns"], "held_out_game_seeds": pair["eval_seeds"],
        "env_steps": pair["env_steps"], "wall_clock_s": pair["wall_clock_s"],
        "cost": {"cpu_min": round((u + s) / 60, 1), "wall_min": round(e / 60, 1),
                 "learn_split_min": {k: round(v / 60, 1) for k, v in pair["hyperparams"]["learn_timings_s"].items()}},
        "reward_head": {k: round(v, 3) for k, v in pair["hyperparams"]["reward_head"].items()},
        "commit": pair["platform"]["commit"], "machine": machine_of(cmp, machine),
        "recorded_from": str(runs / f"{arm}{seed}"),
    }


def per(d: dict) -> str:
    """An arm's per-seed means, ``a / b / c``."""
    return " / ".join(f"{x:.2f}" for x in d["per_seed"])


def ci(c: list) -> str:
    """A difference's interval, ``-a to +b``."""
    return f"{c[0]:+.2f} to {c[1]:+.2f}"


def row(label: str, d: dict, bold: bool) -> str:
    """One table row of a :func:`experiments.results.compare_arms` result: both arms, the difference, both CIs."""
    diff = f"**{d['difference']:+.2f}**" if bold else f"{d['difference']:+.2f}"
    return (f"| {label} | {per(d['a'])} | {d['a']['mean']:.2f} | {per(d['b'])} | {d['b']['mean']:.2f} | {diff} | "
            f"{ci(d['ci_games_only'])} | {ci(d['ci_seeds_then_games'])} |")


def markdown(rec: dict) -> str:
    """docs/results.md's table rows and figure bullets for the confirmatory test, from the record alone."""
    t, h = rec["tuning_r4_minus_preset"], rec["held_out_r4_minus_preset"]
    seeds = rec["seeds"]
    sl = " / ".join(str(s) for s in seeds)

    def span(c: list) -> str:
        return f"{c[0]:.2f}-{c[1]:.2f}"

    by = {(p["agent"], p["seed"]): p for p in rec["pairs"]}

    def costs(agent: str) -> str:
        wall = " / ".join(f"{by[agent, s]['cost']['wall_min']:.1f}" for s in seeds)
        cpu = " / ".join(f"{by[agent, s]['cost']['cpu_min']:.1f}" for s in seeds)
        return f"{wall} ({cpu})"

    def heads(agent: str) -> str:
        return " / ".join(f"{by[agent, s]['reward_head']['reward_recall']:.2f} at "
                          f"{by[agent, s]['reward_head']['reward_precision']:.2f}" for s in seeds)

    nine = json.loads(NINE.read_text())["outcome"]["nine_seeds"]
    final = rec["reading"].startswith("final")
    lines = [
        "### Four times the loop's training per env step: the confirmatory test on new seeds (atari100k; "
        + (f"read at {len(seeds)} seeds)" if final else rec["reading"].split(";")[0].replace("interim: ", "interim, ")
           + ")"),
        "",
        f"| games | R4 (64, 1200), seeds {sl} | mean | the preset (16, 300) | mean | difference | games-only 95% CI "
        "| seeds then games |",
        "|---|---|---:|---|---:|---:|---|---|",
        row(f"tuning, {t['a']['games'][0]} a seed ({'the reading' if final else 'interim'})", t, True),
        row(f"held out, {h['a']['games'][0]} a seed (chooses nothing)", h, False),
        "",
        f"- The paired differences' SD over seeds (tuning games): {t['seed_sd']['difference']:.2f}; 1.81 on seeds 5-8, "
        "which the rule's 18 seeds were sized on.",
        f"- Cost (wall-minutes, CPU-minutes in brackets), seeds {sl}: R4 {costs('r4')}, the preset {costs('preset')}.",
        f"- Reward heads on the final world models (recall at precision), seeds {sl}: R4 {heads('r4')}; the preset "
        f"{heads('preset')}.",
        f"- Held-out games alone (10 a seed, choosing nothing; mean over seeds, seeds-then-games 95% CI): R4 "
        f"{h['a']['mean']:.2f} ({span(h['a']['ci_seeds'])}), the preset {h['b']['mean']:.2f} "
        f"({span(h['b']['ci_seeds'])}); "
        f"on seeds 0-8 the preset read {nine['learn_mean']:.2f} and SB3's DQN {nine['dqn_sb3_mean']:.2f} (README, "
        "acceptance 1).",
    ]
    if final:
        lines.append(f"- The reading (the rule of commits b142f70 and 67459c3): {rec['reading']}.")
    return "\n".join(lines)


def verdict(tuning: dict, r4_wall_min: list[float]) -> str:
    """The rule's reading at 18 seeds: the preset takes R4 only if the seeds-then-games interval lies above 0 and a
    seed costs at most 75 wall-minutes two side by side (read on the median seed, since several seeds shared the
    cores with a third process for part of their run: docs/results.md says which and when)."""
    lo, hi = tuning["ci_seeds_then_games"]
    med = float(np.median(r4_wall_min))
    cost = f"R4's median seed {med:.1f} wall-minutes, at most {COST_BOUND_MIN} allowed"
    if lo > 0 and med <= COST_BOUND_MIN:
        return (f"final at {SEEDS_FOR_READING} seeds: R4 is shown to help ({tuning['difference']:+.2f}, seeds then "
                f"games {lo:+.2f} to {hi:+.2f}, above 0; {cost}): the preset takes 64 and 1200")
    why = (f"the seeds-then-games interval {lo:+.2f} to {hi:+.2f} does not lie above 0" if lo <= 0 else
           f"the interval {lo:+.2f} to {hi:+.2f} lies above 0 but {cost}")
    return (f"final at {SEEDS_FOR_READING} seeds: R4 is not shown to help ({tuning['difference']:+.2f}; {why}): the "
            f"preset keeps 16 and 300")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs/cf")
    ap.add_argument("--machine", default="2-core AMD EPYC, two runs side by side, one thread each",
                    help="the machine's label where a run's provenance names no CPU")
    ap.add_argument("--markdown", action="store_true", help="print docs/results.md's figures from the record "
                    "(writes nothing)")
    args = ap.parse_args()
    rec = json.loads(RECORD.read_text()) if RECORD.exists() else {"pairs": []}
    if args.markdown:
        if not rec.get("seeds"):
            print(f"{RECORD} holds no finished pair yet: run this script with --runs first.", file=sys.stderr)
            sys.exit(2)
        print(markdown(rec))
        return
    for p in rec["pairs"]:  # a recorded pair whose run folder is still here takes the machine its provenance names
        if (done := Path(p["recorded_from"]) / "episodes.json").exists():
            p["machine"] = machine_of(json.loads(done.read_text()), p["machine"])
    have = {(p["agent"], p["seed"]) for p in rec["pairs"]}
    seeds = sorted({int(Path(d).name[len(a):]) for a in ARMS for d in glob.glob(f"{args.runs}/{a}[0-9]*")
                    if Path(d).is_dir() and Path(d).name[len(a):].isdigit()})
    left_out = []
    for seed in seeds:
        if all((ARMS[a], seed) in have for a in ARMS):
            continue
        entries = [arm_entry(args.runs, a, seed, args.machine) for a in ARMS]
        if all(entries):
            rec["pairs"] += entries
        else:
            left_out.append({"seed": seed, "finished": [ARMS[a] for a, e in zip(ARMS, entries, strict=True) if e]})
    rec["pairs"].sort(key=lambda p: (p["seed"], p["agent"]))
    by = {a: {p["seed"]: np.array(p["returns"]) for p in rec["pairs"] if p["agent"] == a} for a in ARMS.values()}
    paired = sorted(set(by["r4"]) & set(by["preset"]))[:SEEDS_FOR_READING]  # the rule reads the first 18 seeds
    rec.update({
        "what": "R4 (learn.stage2_train_ratio=64, learn.agent_updates=1200) against the atari100k preset (16, 300) on "
                "new seeds 9+, 100 tuning games an agent (10000+100S..+99, T = 0.5), paired by seed; held-out games "
                "beside (10 a seed, 20000+10S..+9, choosing nothing)",
        "rule": "docs/research_log.md, 'Four times the loop's training per env step: a confirmatory test on new "
                "seeds', commits b142f70 and 67459c3 (before any run or game); reads at 18 seeds",
        "reading": f"interim: {len(paired)} of {SEEDS_FOR_READING} seeds; decides nothing",
        "seeds": paired,
        "left_out_this_session": left_out,
    })
    if paired:
        rec["tuning_r4_minus_preset"] = compare_arms([by["r4"][s] for s in paired], [by["preset"][s] for s in paired],
                                                     paired=True)
        held = {a: [np.array(p["held_out_returns"]) for p in rec["pairs"] if p["agent"] == a and p["seed"] in paired]
                for a in ARMS.values()}
        rec["held_out_r4_minus_preset"] = compare_arms(held["r4"], held["preset"], paired=True)
        if len(paired) == SEEDS_FOR_READING:
            r4_wall = [p["cost"]["wall_min"] for p in rec["pairs"] if p["agent"] == "r4" and p["seed"] in paired]
            rec["reading"] = verdict(rec["tuning_r4_minus_preset"], r4_wall)
    _atomic_write(RECORD, json.dumps(rec, indent=1) + "\n")
    print(json.dumps({k: rec[k] for k in ("reading", "seeds", "left_out_this_session")} | (
        {"difference": rec["tuning_r4_minus_preset"]["difference"],
         "ci_seeds_then_games": rec["tuning_r4_minus_preset"]["ci_seeds_then_games"]} if paired else {}), indent=1))


if __name__ == "__main__":
    main()

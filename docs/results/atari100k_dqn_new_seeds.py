"""Write or extend docs/results/atari100k_dqn_new_seeds_episodes.json: SB3's DQN on the R4 test's seeds 9-26.

The rule: docs/research_log.md, "SB3's DQN on seeds 9-26: acceptance 1 on the confirmatory test's seeds" (written
before any of its runs). Each session runs ``dqn-sb3`` on the next seeds into RUNS (default runs/dq): ``dqnS``
(a compare-baselines folder: its 10 held-out games 20000+10S..+9) and ``time_dqnS.txt`` (``/usr/bin/time -f "%U %S
%e"``). The preset's side is the confirmatory test's preset arm on the same seeds and games
(docs/results/atari100k_loop_training_x4_confirm.json); seeds 0-8 come from the nine-seed record. Seeds already
recorded are kept. The difference is an interim figure until seeds 9-26 are all in: it decides nothing; then
``verdict`` prints the rule's reading from the 27-seed interval (above 0, holding 0, below 0).

    python docs/results/atari100k_dqn_new_seeds.py [--runs runs/dq]
    python docs/results/atari100k_dqn_new_seeds.py --markdown          # docs/results.md's figures, from the record
    python -m experiments.results diff 'docs/results/atari100k_dqn_new_seeds_episodes.json:learn' \\
        'docs/results/atari100k_dqn_new_seeds_episodes.json:dqn-sb3'   # the new seeds' difference
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.results import _atomic_write, compare_arms  # noqa: E402

RECORD = ROOT / "docs/results/atari100k_dqn_new_seeds_episodes.json"
CONFIRM = ROOT / "docs/results/atari100k_loop_training_x4_confirm.json"
NINE = ROOT / "docs/results/atari100k_nine_seeds_episodes.json"
SEEDS = list(range(9, 27))


def dqn_pair(runs: Path, seed: int) -> dict | None:
    """dqn-sb3's pair of one seed from its compare-baselines folder, or None while it has not finished."""
    path = runs / f"dqn{seed}" / "episodes.json"
    if not path.exists():
        return None
    pair = next((p for p in json.loads(path.read_text())["pairs"] if p["agent"] == "dqn-sb3"), None)
    if pair is None or pair.get("env_steps", 0) < pair.get("budget", 1):
        return None
    timing = runs / f"time_dqn{seed}.txt"
    if timing.exists():
        u, s, e = (float(x) for x in timing.read_text().split()[:3])
        pair["cost"] = {"cpu_min": round((u + s) / 60, 1), "wall_min": round(e / 60, 1)}
    pair["recorded_from"] = str(runs / f"dqn{seed}")
    return pair


def preset_pairs() -> dict[int, dict]:
    """The preset's held-out games on seeds 9-26, from the confirmatory test's record (its preset arm)."""
    rec = json.loads(CONFIRM.read_text())
    return {p["seed"]: {"agent": "learn", "seed": p["seed"], "preset": "atari100k", "returns": p["held_out_returns"],
                        "eval_seeds": p["held_out_game_seeds"], "evaluation_block": "heldout",
                        "env_steps": p["env_steps"], "budget": 100000, "wall_clock_s": p["wall_clock_s"],
                        "evaluation": "the confirmatory test's preset arm, its compare-baselines held-out games "
                                      "(T = 0.5)", "commit": p["commit"]}
            for p in rec["pairs"] if p["agent"] == "preset"}


def outcome(pairs: list[dict]) -> dict:
    by = {a: {p["seed"]: np.array(p["returns"], dtype=float) for p in pairs if p["agent"] == a}
          for a in ("learn", "dqn-sb3")}
    seeds = sorted(set(by["learn"]) & set(by["dqn-sb3"]))
    out = {"seeds": seeds, "reading": f"interim: {len(seeds)} of {len(SEEDS)} seeds; decides nothing"}
    if not seeds:
        return out
    out["new_seeds"] = compare_arms([by["learn"][s] for s in seeds], [by["dqn-sb3"][s] for s in seeds])
    nine = json.loads(NINE.read_text())["pairs"]
    old = {a: {p["seed"]: np.array(p["returns"], dtype=float) for p in nine if p["agent"] == a}
           for a in ("learn", "dqn-sb3")}
    both = sorted(set(old["learn"]) & set(old["dqn-sb3"]))
    out["all_seeds"] = compare_arms([old["learn"][s] for s in both] + [by["learn"][s] for s in seeds],
                                    [old["dqn-sb3"][s] for s in both] + [by["dqn-sb3"][s] for s in seeds])
    out["all_seeds"]["seeds"] = both + seeds
    if seeds == SEEDS:
        out["reading"] = verdict(out["all_seeds"])
    return out


def verdict(all_seeds: dict) -> str:
    """The rule's reading once seeds 9-26 are all in: acceptance 1 is the 27-seed seeds-then-games interval of the
    preset minus ``dqn-sb3``; above 0 the loop beats DQN, holding 0 the two are level, below 0 DQN is ahead."""
    lo, hi = all_seeds["ci_seeds_then_games"]
    n = len(all_seeds["a"]["per_seed"])
    ci = f"{all_seeds['difference']:+.2f}, seeds then games {lo:+.2f} to {hi:+.2f}"
    if lo > 0:
        return f"final at {len(SEEDS)} seeds; over {n} seeds the loop beats SB3's DQN ({ci}, above 0)"
    if hi < 0:
        return f"final at {len(SEEDS)} seeds; over {n} seeds SB3's DQN is ahead of the loop ({ci}, below 0)"
    return f"final at {len(SEEDS)} seeds; over {n} seeds the loop and SB3's DQN are level ({ci}, holds 0)"


def markdown(rec: dict) -> str:
    """docs/results.md's rows and bullets for this measurement, from the record alone."""
    o = rec["outcome"]

    def row(label: str, d: dict) -> str:
        ci = d["ci_seeds_then_games"]
        per = lambda x: " / ".join(f"{v:.2f}" for v in x["per_seed"])  # noqa: E731
        return (f"| {label} | {len(d['a']['per_seed'])} | {per(d['a'])} | {d['a']['mean']:.2f} | {per(d['b'])} | "
                f"{d['b']['mean']:.2f} | **{d['difference']:+.2f}** | {ci[0]:+.2f} to {ci[1]:+.2f} |")

    return "\n".join([
        f"| seeds ({o['reading'].split(';')[0]}) | n | the preset, held out | mean | `dqn-sb3`, held out | mean | "
        "difference | seeds then games (unpaired) |",
        "|---|---:|---|---:|---|---:|---:|---|",
        row(f"new, {o['seeds'][0]}-{o['seeds'][-1]}", o["new_seeds"]),
        row(f"all, 0-8 and {o['seeds'][0]}-{o['seeds'][-1]}", o["all_seeds"]),
    ] + ([] if o["reading"].startswith("interim") else ["", f"**Reading ({o['reading'].split('; ')[0]}):** "
                                                          f"{o['reading'].split('; ', 1)[1]}."]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs/dq")
    ap.add_argument("--markdown", action="store_true", help="print docs/results.md's figures (writes nothing)")
    args = ap.parse_args()
    rec = json.loads(RECORD.read_text()) if RECORD.exists() else {"pairs": []}
    if args.markdown:
        if not rec.get("outcome", {}).get("seeds"):
            print(f"{RECORD} holds no finished seed yet: run this script with --runs first.", file=sys.stderr)
            sys.exit(2)
        print(markdown(rec))
        return
    dqn = {p["seed"]: p for p in rec["pairs"] if p["agent"] == "dqn-sb3"}
    for seed in SEEDS:
        if seed not in dqn and (pair := dqn_pair(args.runs, seed)) is not None:
            dqn[seed] = pair
    learn = preset_pairs()
    pairs = [learn[s] for s in sorted(dqn) if s in learn] + [dqn[s] for s in sorted(dqn)]
    rec = {
        "what": "the preset's closed loop (learn, T = 0.5; the R4 confirmatory test's preset arm) and SB3's DQN on "
                "its own stack (dqn-sb3) on seeds 9-26, each on its seed's 10 held-out games 20000+10S..+9; beside "
                "them, every seed 0-26 with seeds 0-8 from atari100k_nine_seeds_episodes.json",
        "rule": "docs/research_log.md, \"SB3's DQN on seeds 9-26: acceptance 1 on the confirmatory test's seeds\"",
        "pairs": pairs,
    }
    rec["outcome"] = outcome(pairs)
    _atomic_write(RECORD, json.dumps(rec, indent=1) + "\n")
    o = rec["outcome"]
    print(json.dumps({"reading": o["reading"], "seeds": o["seeds"]} | (
        {k: {"difference": o[k]["difference"], "ci_seeds_then_games": o[k]["ci_seeds_then_games"]}
         for k in ("new_seeds", "all_seeds")} if o["seeds"] else {}), indent=1))


if __name__ == "__main__":
    main()

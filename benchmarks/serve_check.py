#!/usr/bin/env python
"""Does every serve put the ball in play? Prints JSON.

Plays NOOP every step (an agent that never presses FIRE itself) on the preset's evaluation env (sticky
actions included) and, for every serve due (game start and each life loss), counts the FIRE presses the
pipeline's serve needed (``info["serve"]`` steps) and whether the RAM showed the ball in play within
``--wait`` agent steps. A failed serve would idle the game until the frame cap; a serve of more than
one press is a FIRE that sticky actions swallowed and the serve pressed again.

Example:
    python benchmarks/serve_check.py --games 20
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.breakout import make_env  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.play import eval_env_config  # noqa: E402

NOOP = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--games", type=int, default=20)
    ap.add_argument("--seed", type=int, default=100, help="first game seed (not an evaluation block)")
    ap.add_argument("--wait", type=int, default=60, help="agent steps without a ball that count as a failed serve")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    cfg = load_config(args.preset, args.overrides)
    env = make_env(eval_env_config(cfg), seed=args.seed)
    presses: Counter[int] = Counter()
    failed, failed_at, steps_total = 0, [], 0
    for i in range(args.games):
        seed = args.seed + i
        env.reset(seed=seed)
        done, since, run = False, 0, 0  # since: steps since the serve became due (None once the ball is in play)
        while not done:
            _, _, terminated, truncated, info = env.step(NOOP)
            steps_total += 1
            done = terminated or truncated
            if info["serve"]:
                run += 1
            if since is not None:
                since += 1
                if info["ball_y"] > 0:
                    presses[run] += 1
                    since, run = None, 0
                elif since >= args.wait:  # stuck: this game would idle to the cap
                    failed += 1
                    failed_at.append(seed)
                    break
            if info["life_loss"] and not done:
                since, run = 0, 0
    env.close()
    print(json.dumps({"benchmark": "serve_check", "preset": args.preset, "games": args.games,
                      "repeat_action_probability": cfg.environment.repeat_action_probability,
                      "serves": int(sum(presses.values())) + failed, "failed_serves": failed,
                      "games_with_a_failed_serve": failed_at,
                      "presses_per_serve": {str(k): v for k, v in sorted(presses.items())},
                      "serves_retried": int(sum(v for k, v in presses.items() if k > 1)),
                      "agent_steps": steps_total}, indent=1))


if __name__ == "__main__":
    main()

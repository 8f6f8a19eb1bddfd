#!/usr/bin/env python
"""How often the pipeline's automatic FIRE after a life loss fails to serve the ball. Prints JSON.

Plays NOOP every step (an agent that never presses FIRE itself) on the preset's evaluation env
(sticky actions included) and counts life losses after which the RAM shows no ball in play
(``ball_y == 0``) for ``--wait`` agent steps. Such a game would idle until the frame cap.

Example:
    python benchmarks/serve_check.py --games 20
"""

from __future__ import annotations

import argparse
import json
import sys
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
    ap.add_argument("--seed", type=int, default=100, help="first game seed")
    ap.add_argument("--wait", type=int, default=60, help="agent steps without a ball that count as a failed serve")
    args = ap.parse_args()
    cfg = load_config(args.preset)
    env = make_env(eval_env_config(cfg), seed=args.seed)
    losses, failed, failed_at = 0, 0, []
    for i in range(args.games):
        seed = args.seed + i
        _, info = env.reset(seed=seed)
        done, since = False, None
        while not done:
            _, _, terminated, truncated, info = env.step(NOOP)
            done = terminated or truncated
            if info["life_loss"] and not done:
                losses += 1
                since = 0
            elif since is not None:
                since = None if info["ball_y"] > 0 else since + 1
                if since is not None and since >= args.wait:  # stuck: this game would idle to the cap
                    failed += 1
                    failed_at.append(seed)
                    break
    env.close()
    print(json.dumps({"benchmark": "serve_check", "preset": args.preset, "games": args.games,
                      "repeat_action_probability": cfg.environment.repeat_action_probability,
                      "life_losses_with_a_serve_due": losses, "failed_serves": failed,
                      "games_with_a_failed_serve": failed_at}, indent=1))


if __name__ == "__main__":
    main()

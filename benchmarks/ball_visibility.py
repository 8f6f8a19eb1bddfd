#!/usr/bin/env python
"""How visible is the ball after the resize? Prints JSON.

Plays random actions (FIRE every ``--serve-every`` steps so the ball is in play) on the raw emulator, and on
every ``--every``-th frame where the ball is in play below the bricks (rows 100-188 of the 210x160 screen,
inside the walls), takes the brightest pixel of that region at full resolution (the ball: nothing else is
drawn there) and of the same region after gymnasium's ``AtariPreprocessing`` resize (``cv2.INTER_AREA``) to
each ``--sizes``. The ratio says how much of the ball's contrast survives: the world model and the project's DQN
see 64x64 frames, SB3's Atari stack 84x84 (benchmarks/dqn_gap.py).

Example:
    python benchmarks/ball_visibility.py --steps 3000
"""

from __future__ import annotations

import argparse
import json

import ale_py
import cv2
import gymnasium as gym
import numpy as np

BALL_Y, BALL_X = 101, 99  # RAM: ball y (0 = no ball in play), ball x
ROWS, COLS = (100, 189), (8, 152)  # below the bricks, above the paddle, inside the walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000, help="emulator frames to play")
    ap.add_argument("--every", type=int, default=7, help="measure every this many frames")
    ap.add_argument("--serve-every", type=int, default=50)
    ap.add_argument("--sizes", default="64,84")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0, obs_type="grayscale")
    obs, _ = env.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    raw: list[float] = []
    peaks: dict[int, list[float]] = {s: [] for s in sizes}
    for t in range(args.steps):
        action = 1 if t % args.serve_every == 0 else int(rng.integers(4))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
            continue
        if env.unwrapped.ale.getRAM()[BALL_Y] == 0 or t % args.every:
            continue
        region = obs[ROWS[0]:ROWS[1], COLS[0]:COLS[1]]
        if region.max() < 50:  # the ball is elsewhere (among the bricks or below the paddle)
            continue
        raw.append(float(region.max()))
        for s in sizes:
            small = cv2.resize(obs, (s, s), interpolation=cv2.INTER_AREA)
            r0, r1 = int(ROWS[0] * s / 210), int(ROWS[1] * s / 210)
            c0, c1 = int(COLS[0] * s / 160), int(COLS[1] * s / 160)
            peaks[s].append(float(small[r0:r1, c0:c1].max()))
    env.close()
    raw_med = float(np.median(raw)) if raw else float("nan")
    out = {"frames": len(raw), "raw_peak_median": raw_med,
           "sizes": {str(s): {"peak_median": float(np.median(v)), "peak_p10": float(np.percentile(v, 10)),
                              "contrast_kept_median": float(np.median(v)) / raw_med,
                              "contrast_kept_p10": float(np.percentile(v, 10)) / raw_med}
                     for s, v in peaks.items() if v}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

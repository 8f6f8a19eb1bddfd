"""What a random shift does to the encoder's standardised inputs (JSON).

The encoder standardises each pixel by its mean and std over the training frames (``input_norm="pixel"``, std
floored at ``input_std_floor``). A shift of the raw frames (``stage1.random_shift_space=pixels``) moves walls and
bricks onto pixels whose std is at the floor; a shift of the standardised frames (``=standardised``) moves the
inputs without changing their scale. This prints, for frames of a replay and a Stage-1 checkpoint's statistics,
the mean |input| and the share of inputs above 5 in magnitude: unshifted, shifted raw, shifted standardised.

    python benchmarks/shift_input_scale.py --checkpoint RUN/stage1/best.pt --data RUN/data [--pad 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from envs.replay import load_episodes  # noqa: E402
from worldmodel.checkpoint import load_checkpoint  # noqa: E402
from worldmodel.masked_prediction import random_shift  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a Stage-1 checkpoint (stage1/best.pt)")
    ap.add_argument("--data", required=True, help="a replay folder")
    ap.add_argument("--pad", type=int, default=4)
    ap.add_argument("--frames", type=int, default=2000)
    args = ap.parse_args()
    torch.manual_seed(0)
    online = load_checkpoint(args.checkpoint, kind="stage1")["online"]
    mean, std = online["pixel_mean"].float(), online["pixel_std"].float()  # [1, 1, H, W]
    episodes, _ = load_episodes(args.data, verify=False)
    frames = np.concatenate([e.frames[:200] for e in episodes])[: args.frames]  # [n, H, W], games' openings
    x = torch.from_numpy(frames)[:, None].float() / 255.0  # [n, 1, H, W]
    norm = (x - mean) / std
    arms = {"unshifted": norm, "shifted_raw": (random_shift(x, args.pad)[0] - mean) / std,
            "shifted_standardised": random_shift(norm, args.pad)[0]}
    floor = float(std.min())
    print(json.dumps({
        "frames": int(x.shape[0]), "pad": args.pad,
        "pixels_at_std_floor": round(float((std <= floor + 1e-6).float().mean()), 4),
        **{k: {"mean_abs_input": round(float(v.abs().mean()), 3), "share_abs_above_5": round(float(
            (v.abs() > 5).float().mean()), 4), "max_abs": round(float(v.abs().max()), 2)} for k, v in arms.items()},
    }, indent=1))


if __name__ == "__main__":
    main()

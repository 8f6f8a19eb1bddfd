"""The imagination checks of benchmarks/latent_imitation.py score what they claim to (a fake world model that reads
the future exactly gets a perfect score, and no window crosses into another game)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

_spec = importlib.util.spec_from_file_location(
    "latent_imitation", Path(__file__).resolve().parents[1] / "benchmarks" / "latent_imitation.py")
li = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(li)


def test_auc_is_the_share_of_positive_negative_pairs_ranked_right():
    rng = np.random.default_rng(0)
    score, label = rng.random(200).round(1), (rng.random(200) < 0.3).astype(float)  # rounding makes ties
    pos, neg = score[label > 0], score[label == 0]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert abs(li.auc(score, label) - pairs) < 1e-12
    assert li.auc(np.array([0.9, 0.1]), np.array([1.0, 0.0])) == 1.0


class FutureReader:
    """A 'world model' whose latent is the frame index and which returns the real future of that frame."""

    def __init__(self, traj: dict[str, np.ndarray]):
        self.traj, self.used = traj, []

    def imagine(self, z0: torch.Tensor, actions: torch.Tensor):
        idx = z0[:, 0].long().numpy()
        self.used.append(idx)
        steps = idx[:, None] + np.arange(actions.shape[1])[None]
        cont = torch.as_tensor(1.0 - self.traj["life_loss"][steps], dtype=torch.float32)
        return None, torch.as_tensor(self.traj["reward"][steps]), cont


def test_open_loop_scores_an_exact_model_perfectly_within_games():
    rng = np.random.default_rng(1)
    n = 600
    traj = {"action": rng.integers(0, 4, n), "reward": (rng.random(n) < 0.1).astype(np.float32),
            "life_loss": (rng.random(n) < 0.05).astype(np.int64), "start": np.zeros(n, dtype=np.int64)}
    traj["start"][[0, 200, 410]] = 1
    model = FutureReader(traj)
    out = li.open_loop(model, torch.arange(n, dtype=torch.float32)[:, None], traj, 15, torch.Generator().manual_seed(0))
    assert out["life_loss_auc"] == 1.0 and out["life_loss_brier"] == 0.0
    assert abs(out["pred_life_loss"] - out["real_life_loss_rate"]) < 1e-6 and out["points_corr"] > 0.999
    game = np.cumsum(traj["start"])
    starts = model.used[0]
    assert out["windows"] == len(starts) == n - 3 * 14  # every window that fits inside its game
    assert (game[starts] == game[starts + 14]).all()

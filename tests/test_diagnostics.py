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


_spec_ed = importlib.util.spec_from_file_location(
    "ensemble_disagreement", Path(__file__).resolve().parents[1] / "benchmarks" / "ensemble_disagreement.py")
ed = importlib.util.module_from_spec(_spec_ed)
_spec_ed.loader.exec_module(ed)


def test_window_starts_keep_windows_inside_one_game():
    start = np.zeros(50, dtype=np.int64)
    start[[0, 20, 23]] = 1  # games of 20, 3 and 27 steps: the 3-step game holds no 5-step window
    starts = li.window_starts(start, 5)
    assert list(starts) == list(range(0, 16)) + list(range(23, 46))


def test_disagreement_stats_find_the_windows_where_models_part():
    """Two models that agree except on a set of windows: disagreement ranks exactly those, and the outcome split
    counts the first model's misses among the really lost windows."""
    W, H, D = 40, 3, 4
    real = np.zeros(W)
    real[:10] = 1
    p = np.full((2, W), 0.1)
    p[:, :5] = 0.9  # the first model catches 5 of the 10 losses and misses the other 5
    lat = np.zeros((2, W, H, D))
    lat[1, :10] = 1.0  # the models part exactly on the lost windows
    out = ed.disagreement_stats(p, lat, real, scale=1.0)
    assert out["disagreement_auc"] == 1.0 and out["disagreement_auc_where_safe"] == 1.0
    assert out["first_model_misses"] == 0.5
    assert out["disagreement_by_outcome"]["correct_safe"] == 0.0
    assert out["disagreement_by_outcome"]["missed"] == out["disagreement_by_outcome"]["caught"] == 1.0
    assert out["real_life_loss_rate"] == 0.25 and out["max"]["pred_life_loss"] == out["mean"]["pred_life_loss"]

"""Representation diagnostics: is the encoder's latent informative, or has it collapsed?

* per-dimension standard deviation of the latents (a collapsed encoder outputs a constant);
* effective rank (RankMe, Garrido et al. 2023): ``exp(entropy(s / sum(s)))`` of the singular
  values ``s`` of the latent matrix, between 1 and D. We centre the latents first, so a constant
  offset shared by all frames (which carries no information) does not count as a direction; the
  uncentred value of the paper is reported too;
* a linear probe: ridge regression from the latent to the RAM ground truth ``paddle_x``, ``ball_x``
  and ``ball_y`` (ball only on frames where ``ball_y != 0``, i.e. a ball in play), fitted on
  training episodes and scored by R^2 on validation episodes.

Run the same on a randomly initialised encoder of the same shape to see what training added.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

PROBE_TARGETS = {"paddle_x": 0, "ball_x": 1, "ball_y": 2}  # column in the labels array
BALL_Y = 2


@torch.no_grad()
def encode(encoder: nn.Module, dataset, idx: np.ndarray, batch_size: int = 512) -> tuple[torch.Tensor, np.ndarray]:
    """Pooled latents ``[n, D]`` (float64) and labels ``[n, 5]`` of ``dataset.batch(idx)`` items."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    zs, ys = [], []
    for start in range(0, len(idx), batch_size):
        b = dataset.batch(idx[start:start + batch_size])
        z = encoder(b["obs"].to(device))
        z = z[0] if isinstance(z, tuple) else z  # a MaskedViT returns (pooled, tokens)
        zs.append(z.double().cpu())
        ys.append(b["labels"].cpu().numpy())
    encoder.train(was_training)
    return torch.cat(zs), np.concatenate(ys)


def latent_std(z: torch.Tensor) -> torch.Tensor:
    """Per-dimension standard deviation ``[D]`` of latents ``[n, D]``."""
    return z.std(dim=0)


def effective_rank(z: torch.Tensor, centred: bool = True, eps: float = 1e-12) -> float:
    """RankMe effective rank of latents ``[n, D]``: exp of the entropy of the normalised singular values."""
    z = z.double()
    if centred:
        z = z - z.mean(0, keepdim=True)
    s = torch.linalg.svdvals(z)
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def ridge_r2(z_train: torch.Tensor, y_train: np.ndarray, z_val: torch.Tensor, y_val: np.ndarray,
             alpha: float = 1.0) -> float:
    """R^2 on the validation set of a ridge regression (standardised features, intercept) fitted on train."""
    if len(y_train) < 2 or len(y_val) < 2:
        return float("nan")
    mu, sd = z_train.mean(0), z_train.std(0).clamp_min(1e-8)
    xt, xv = (z_train - mu) / sd, (z_val - mu) / sd  # [n, D]
    yt = torch.as_tensor(y_train, dtype=torch.float64)
    yv = torch.as_tensor(y_val, dtype=torch.float64)
    y_mu = yt.mean()
    D = xt.shape[1]
    w = torch.linalg.solve(xt.T @ xt + alpha * torch.eye(D, dtype=torch.float64), xt.T @ (yt - y_mu))  # [D]
    pred = xv @ w + y_mu
    ss_res = ((yv - pred) ** 2).sum()
    ss_tot = ((yv - yv.mean()) ** 2).sum().clamp_min(1e-12)
    return float(1.0 - ss_res / ss_tot)


def collapse_reason(std_mean: float, rank: float, dim: int) -> str | None:
    """Why the latents look collapsed, or None. Thresholds: mean std < 1e-4 or rank < max(2, D/10).

    The std bound is absolute and low on purpose: the mean of layer-normed tokens varies little even
    for a random encoder (std ~ 3e-3 at D=64), so std is reported for trends and rank decides.
    """
    reasons = []
    if std_mean < 1e-4:
        reasons.append(f"mean per-dimension std {std_mean:.2e} < 1e-4")
    if rank < max(2.0, dim / 10):
        reasons.append(f"effective rank {rank:.1f} < {max(2.0, dim / 10):.1f} of {dim}")
    return "; ".join(reasons) or None


def sample_indices(n: int, max_samples: int, seed: int) -> np.ndarray:
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def representation_diagnostics(encoder: nn.Module, train_ds, val_ds, max_train: int = 5000, max_val: int = 3000,
                               seed: int = 0, batch_size: int = 512) -> dict[str, Any]:
    """Std, RankMe and linear-probe R^2 of ``encoder``'s pooled latents (train episodes -> val episodes)."""
    zt, yt = encode(encoder, train_ds, sample_indices(len(train_ds), max_train, seed), batch_size)
    zv, yv = encode(encoder, val_ds, sample_indices(len(val_ds), max_val, seed + 1), batch_size)
    std = latent_std(zv)
    out: dict[str, Any] = {
        "std_mean": float(std.mean()),
        "std_min": float(std.min()),
        "effective_rank": effective_rank(zv),
        "effective_rank_uncentred": effective_rank(zv, centred=False),
        "latent_dim": int(zv.shape[1]),
        "probe_train_samples": int(len(yt)),
        "probe_val_samples": int(len(yv)),
    }
    for name, col in PROBE_TARGETS.items():
        if col in (1, BALL_Y):  # the ball's position only means something while a ball is in play
            mt, mv = yt[:, BALL_Y] != 0, yv[:, BALL_Y] != 0
        else:
            mt, mv = np.ones(len(yt), bool), np.ones(len(yv), bool)
        out[f"probe_r2/{name}"] = ridge_r2(zt[mt], yt[mt, col], zv[mv], yv[mv, col])
    reason = collapse_reason(out["std_mean"], out["effective_rank"], out["latent_dim"])
    out["collapsed"] = reason is not None
    out["collapse_reason"] = reason or ""
    return out


def warn_if_collapsed(diag: dict[str, Any], echo=None) -> bool:
    """Print a loud warning when the diagnostics show collapse; returns whether they do."""
    if not diag.get("collapsed"):
        return False
    msg = ("\n" + "!" * 88 + "\n!! WARNING: REPRESENTATION COLLAPSE: " + diag["collapse_reason"] +
           "\n!! A low loss does not mean a good encoder: the latents carry little information (see the probe R^2).\n" +
           "!" * 88)
    if echo is not None:
        echo(msg)
    warnings.warn("representation collapse: " + diag["collapse_reason"], stacklevel=2)
    return True

"""Pieces shared by the Stage-1 and Stage-2 training loops."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def optimizer_step(loss: torch.Tensor, params: Iterable[torch.nn.Parameter], opt: torch.optim.Optimizer,
                   sched: torch.optim.lr_scheduler.LRScheduler, grad_clip: float, name: str,
                   step: int) -> tuple[float, float]:
    """Backward, clip the global grad norm, step optimizer and scheduler; returns ``(loss, grad_norm)``.

    Raises ``RuntimeError`` naming ``name`` and ``step`` when the loss is not finite (a programming or
    optimisation error, not a user error).
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    value = loss.item()
    if not math.isfinite(value):
        raise RuntimeError(f"{name} loss became {value} at step {step}")
    return value, float(grad_norm)

"""The planner interface shared by every agent that plays Breakout.

It is the same small protocol as ``experiments.play.Agent`` (kept here too so that
``planners/`` does not import from ``experiments/``): ``reset(env=None)`` at the start of each
game, ``act(obs) -> int`` for each step. ``obs`` is the pipeline's uint8 ``[4, 64, 64]`` frame
stack; ``env`` is the live evaluation env, read only by emulator-reading references (the RAM
tracker, the oracle).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Planner(Protocol):
    def reset(self, env: Any = None) -> None:
        """Start of a game; drop any plan carried over from the previous one."""

    def act(self, obs: np.ndarray) -> int:
        """One action index in ``[0, num_actions)`` for the observation ``uint8 [4, 64, 64]``."""


@runtime_checkable
class WorldModel(Protocol):
    """What the CEM planner needs from a model (``worldmodel.world_model`` and the emulator oracle both qualify)."""

    latent_dim: int
    num_actions: int

    def encode(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 4, 64, 64]`` -> float ``[B, D]``."""

    def imagine(self, z0: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z0 [B, D]``, long ``actions [B, H]`` -> latents ``[B, H, D]``, rewards ``[B, H]``, continue ``[B, H]``."""

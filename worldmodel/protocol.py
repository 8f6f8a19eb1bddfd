"""The world model as planners and the actor-critic see it: a few attributes and verbs, nothing else.

:class:`LatentWorldModel` is what the CEM planner needs; the learned world model
(:class:`worldmodel.world_model.WorldModel`) and the emulator (``planners.oracle.EmulatorModel``) both
provide it. :class:`PolicyWorldModel` adds the step-wise rollout the actor-critic trains on; only the
learned model provides it (the emulator cannot pick actions from a latent it cannot be set to).

``imagine``'s optional ``context [B or 1, K, D]`` / ``context_actions [B or 1, K]`` are real history before
``z0`` (the latents of the previous observations and the actions taken in them, oldest first, ``K <
context_length``); rewards are in game points and continues are probabilities that a step loses no life.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class LatentWorldModel(Protocol):
    """Encode observations, imagine action sequences (what the CEM planner uses).

    Attributes:
        latent_dim: D, the size of a latent.
        num_actions: A, the size of the discrete action set.
        context_length: steps the dynamics attends to, the current one included.
    """

    latent_dim: int
    num_actions: int
    context_length: int

    def encode(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 observations ``[B, 4, 64, 64]`` -> latents float ``[B, D]``."""
        ...

    def imagine(self, z0: torch.Tensor, actions: torch.Tensor, context: torch.Tensor | None = None,
                context_actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z0 [B, D]``, long ``actions [B, H]`` -> latents ``[B, H, D]``, rewards ``[B, H]``, continues ``[B, H]``."""
        ...


@runtime_checkable
class PolicyWorldModel(LatentWorldModel, Protocol):
    """A :class:`LatentWorldModel` that also rolls out a policy step by step (what the actor-critic trains on).

    ``imagine_policy`` calls ``policy_fn`` on ``z0`` and then on each imagined latent, for ``horizon`` H steps;
    the actions, rewards and continues it returns are ``[B, H]``.
    """

    def imagine_policy(self, z0: torch.Tensor, policy_fn: Callable[[torch.Tensor], torch.Tensor], horizon: int,
                       context: torch.Tensor | None = None, context_actions: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z0 [B, D]``, ``policy_fn: z [B, D] -> long [B]`` -> latents ``[B, H, D]``, actions, rewards, continues;
        ``context [B, K, D]`` / ``context_actions [B, K]`` as in ``imagine``."""
        ...

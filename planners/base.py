"""The agent interface shared by everything that plays Breakout (planners, references, the actor-critic).

``reset(env=None)`` at the start of each game, ``act(obs) -> int`` for each step. ``obs`` is the
pipeline's uint8 ``[4, 64, 64]`` frame stack; ``env`` is the live evaluation env, read only by
emulator-reading references (the RAM tracker, the oracle). ``experiments.play`` evaluates any
:class:`Agent`. What planners may use of a world model is ``worldmodel.protocol``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Agent(Protocol):
    def reset(self, env: Any = None) -> None:
        """Start of a game; drop any plan carried over from the previous one."""

    def act(self, obs: np.ndarray) -> int:
        """One action index in ``[0, num_actions)`` for the observation ``uint8 [4, 64, 64]``."""

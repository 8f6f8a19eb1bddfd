"""The emulator as the "world model": CEM over the true game (the planner's ceiling).

:class:`EmulatorModel` has the world model's two verbs (``worldmodel.protocol.LatentWorldModel``), so the
unchanged :class:`CEMPlanner` plans over it:

- ``encode(obs)`` clones the live game's full emulator state (``cloneState(include_rng=True)``,
  so sticky actions replay exactly as they will happen) and returns the 128-byte RAM as the
  "latent" ``[1, 128]``.
- ``imagine(z0, actions)`` plays each action sequence from that state in the real emulator and
  returns the RAM after each step as latents, the real rewards, and ``continue = 0`` on the step
  that loses a life (else 1); the live game is restored afterwards. It can only start from the
  state last encoded (the RAM in ``z0`` is checked against it): the emulator cannot be set to an
  arbitrary latent. Its ``context_length`` is 1: the cloned state already holds the whole history, so
  the planner passes no context.

One imagined step replays the evaluation pipeline's agent step on the raw ALE: ``frame_skip``
emulator frames of the action (``AtariPreprocessing``'s frame skip; its max-pooling only changes
observations, not rewards or lives), with FIRE in place of the action while the RAM shows no ball in
play (``BreakoutRules``' serve after a reset or a life loss; its bound of ``serve_max_presses`` presses
in a row is not modelled, it is never reached in practice). Steps after a lost life cannot change the
score (their weight is ``alive = 0``), so a sequence stops being simulated there, which saves
emulator time; its remaining steps report reward 0 and continue 1.

The emulator runs sequences one after another (it cannot batch), so this model costs about
``samples * horizon * iterations * frame_skip`` emulator frames per decision.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from envs.breakout import FIRE, NUM_ACTIONS
from planners.cem import CEMPlanner, PlannerConfig

RAM_SIZE = 128


class EmulatorModel:
    """``encode``/``imagine`` over the live ALE of an evaluation env (call :meth:`attach` first)."""

    latent_dim = RAM_SIZE
    num_actions = NUM_ACTIONS
    context_length = 1  # the cloned emulator state is the whole history

    def __init__(self, frame_skip: int = 4, serve: bool = True):
        self.frame_skip = frame_skip
        self.serve = serve
        self.ale = None
        self._action_set: list[Any] = []
        self._state = None
        self._ram: torch.Tensor | None = None
        self.frames_simulated = 0

    def attach(self, env) -> None:
        """Plan over ``env``'s emulator (the pipeline from ``envs.breakout.make_env``)."""
        self.ale = env.unwrapped.ale
        self._action_set = list(env.unwrapped._action_set)
        assert len(self._action_set) == NUM_ACTIONS, \
            f"expected Breakout's {NUM_ACTIONS} actions, got {self._action_set}"
        self._state, self._ram = None, None

    def _read_ram(self) -> torch.Tensor:
        return torch.from_numpy(self.ale.getRAM().astype(np.float32))  # [128]

    def encode(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Snapshot the live game; returns its RAM ``[1, 128]`` (``obs`` only fixes the batch size of 1)."""
        if self.ale is None:
            raise RuntimeError("EmulatorModel.attach(env) must be called before encode()")
        assert obs.shape[0] == 1, f"the emulator holds one game: encode takes a batch of 1, got {tuple(obs.shape)}"
        self._state = self.ale.cloneState(include_rng=True)
        self._ram = self._read_ram()
        return self._ram[None].clone()  # [1, 128]

    def _agent_step(self, action) -> tuple[float, bool]:
        """One pipeline step of the raw emulator: (reward, life lost)."""
        ale, lives = self.ale, self.ale.lives()
        if self.serve and int(ale.getRAM()[101]) == 0 and not ale.game_over():
            action = self._action_set[FIRE]  # the pipeline's serve
        reward = 0.0
        for _ in range(self.frame_skip):
            reward += ale.act(action)
            if ale.game_over():
                break
        self.frames_simulated += self.frame_skip
        lost = ale.lives() < lives or ale.game_over()
        return reward, lost

    def imagine(self, z0: torch.Tensor, actions: torch.Tensor, context: torch.Tensor | None = None,
                context_actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Play each row of ``actions [B, H]`` from the encoded state: RAM ``[B, H, 128]``, rewards and continues
        ``[B, H]``. ``context`` must be empty (``context_length`` is 1)."""
        if context is not None and context.shape[1] > 0:
            raise ValueError("the emulator takes no context: its encoded state already holds the history")
        if self._state is None:
            raise RuntimeError("EmulatorModel.encode() must be called before imagine()")
        assert z0.dim() == 2 and actions.dim() == 2 and z0.shape[0] == actions.shape[0], \
            f"z0 {tuple(z0.shape)} and actions {tuple(actions.shape)} must be [B, D] and [B, H]"
        if not torch.equal(z0.cpu(), self._ram.expand_as(z0)):
            raise ValueError("the emulator can only imagine from the state last encoded; z0 differs from its RAM")
        b, h = actions.shape
        acts = actions.cpu().numpy()
        ram = np.zeros((b, h, RAM_SIZE), dtype=np.uint8)
        rewards = np.zeros((b, h), dtype=np.float32)
        continues = np.ones((b, h), dtype=np.float32)
        for i in range(b):  # the emulator plays one game at a time
            self.ale.restoreState(self._state)
            for t in range(h):
                reward, lost = self._agent_step(self._action_set[acts[i, t]])
                rewards[i, t] = reward
                self.ale.getRAM(ram[i, t])
                if lost:
                    continues[i, t] = 0.0
                    ram[i, t + 1:] = ram[i, t]
                    break
        self.ale.restoreState(self._state)  # the live game goes on exactly where it was
        return torch.from_numpy(ram.astype(np.float32)), torch.from_numpy(rewards), torch.from_numpy(continues)


class OraclePlanner(CEMPlanner):
    """CEM (same code, same ``planner.*`` settings and scoring) over the evaluation env's emulator."""

    def __init__(self, cfg: PlannerConfig, frame_skip: int = 4, serve: bool = True, seed: int = 0):
        super().__init__(EmulatorModel(frame_skip, serve), _without_agent(cfg), seed=seed)

    def reset(self, env: Any = None) -> None:
        if env is None:
            raise ValueError("OraclePlanner.reset needs the evaluation env: it plans over that env's emulator")
        self.model.attach(env)
        super().reset(env)


def _without_agent(cfg: PlannerConfig) -> PlannerConfig:
    """The oracle has no latent an actor-critic understands: value bootstrap and policy prior are off."""
    return dataclasses.replace(cfg, use_value=False, policy_samples=0)

"""The one Breakout observation pipeline: collection, training, planning, evaluation and baselines.

``ALE/Breakout-v5`` (frameskip=1, sticky actions and frame cap from config)
-> gymnasium ``AtariPreprocessing`` (64x64 grayscale, frame skip 4, random no-ops)
-> :class:`BreakoutRules` (FIRE after reset / life loss, optional terminal-on-life-loss, RAM labels)
-> ``FrameStackObservation(4)``: observations are uint8 ``[4, 64, 64]``.

Every step's ``info`` carries the emulator's ground truth read from RAM: ``paddle_x``, ``ball_x``,
``ball_y`` (0 when no ball is in play), ``lives``, ``score``, plus ``life_loss`` and ``game_over``.
"""

from __future__ import annotations

from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
from ale_py.env import AtariEnv
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

gym.register_envs(ale_py)

NUM_ACTIONS = 4
ACTION_NAMES = ("NOOP", "FIRE", "RIGHT", "LEFT")
FIRE, RIGHT, LEFT = 1, 2, 3
LABEL_NAMES = ("paddle_x", "ball_x", "ball_y", "lives", "score")


def ram_labels(ram: np.ndarray) -> dict[str, int]:
    """Ground truth from Breakout's RAM (addresses from the ALE community's RAM annotations)."""
    score = (int(ram[77]) & 15) + 10 * (int(ram[77]) >> 4) + 100 * (int(ram[76]) & 15)
    return {
        "paddle_x": int(ram[72]),
        "ball_x": int(ram[99]),
        "ball_y": int(ram[101]),
        "lives": int(ram[57]),
        "score": score,
    }


def labels_array(info: dict[str, Any]) -> np.ndarray:
    """The RAM labels of one step's info as int16 ``[5]`` in LABEL_NAMES order."""
    return np.array([info[k] for k in LABEL_NAMES], dtype=np.int16)


class BreakoutRules(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """FIRE after reset and after a life loss, terminal-on-life-loss, and RAM labels in ``info``.

    The reward of an automatic FIRE step is added to the step that lost the life, so no reward
    is hidden from the agent. With ``terminal_on_life_loss`` a lost life ends the episode, and
    the following ``reset`` continues the same game instead of starting a new one (as SB3's
    ``EpisodicLifeEnv``), so a "game" still spans all lives.
    """

    def __init__(self, env: gym.Env, fire_on_reset: bool = True, fire_on_life_loss: bool = True,
                 terminal_on_life_loss: bool = False):
        gym.utils.RecordConstructorArgs.__init__(self, fire_on_reset=fire_on_reset,
                                                 fire_on_life_loss=fire_on_life_loss,
                                                 terminal_on_life_loss=terminal_on_life_loss)
        gym.Wrapper.__init__(self, env)
        self.fire_on_reset = fire_on_reset
        self.fire_on_life_loss = fire_on_life_loss
        self.terminal_on_life_loss = terminal_on_life_loss
        self._ale = env.unwrapped.ale
        self._lives = 0
        self._game_over = True

    def _info(self, info: dict[str, Any], life_loss: bool = False) -> dict[str, Any]:
        info = dict(info)
        info.update(ram_labels(self._ale.getRAM()))
        info["life_loss"] = life_loss
        info["game_over"] = self._game_over
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.terminal_on_life_loss and not self._game_over and seed is None:
            # Continue the same game after a life loss: serve the ball instead of a real reset.
            obs, _, terminated, truncated, info = self.env.step(FIRE)
            if not (terminated or truncated):
                self._lives = self._ale.lives()
                return obs, self._info(info)
        obs, info = self.env.reset(seed=seed, options=options)
        self._game_over = False
        if self.fire_on_reset:
            obs, _, terminated, truncated, info = self.env.step(FIRE)
            if terminated or truncated:  # cannot happen in Breakout, but never return a dead state
                obs, info = self.env.reset()
        self._lives = self._ale.lives()
        return obs, self._info(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self._ale.lives()
        life_loss = lives < self._lives
        self._lives = lives
        if life_loss and not (terminated or truncated) and self.fire_on_life_loss:
            obs, extra, terminated, truncated, info = self.env.step(FIRE)
            reward += extra
            self._lives = self._ale.lives()
        self._game_over = bool(terminated or truncated)
        if self.terminal_on_life_loss and life_loss:
            terminated = True
        return obs, float(reward), bool(terminated), bool(truncated), self._info(info, life_loss)


class _FrameEnv(AtariEnv):
    """``ALE/Breakout-v5`` at frameskip 1 without the per-frame screen copy.

    ``AtariPreprocessing`` ignores the observation of each inner frame step and reads the screen
    itself on the last two frames of a skip, so this base env returns a fixed empty array instead
    of copying the 210x160 screen on every emulator frame (a quarter of the pipeline's time).
    Everything else (sticky actions, frame cap, rewards, lives) is ALE's own.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._blank = np.zeros(self.observation_space.shape, dtype=self.observation_space.dtype)

    def step(self, action):  # pyright: ignore[reportIncompatibleMethodOverride]
        reward = self.ale.act(self._action_set[action], 1.0)
        return (self._blank, reward, self.ale.game_over(with_truncation=False), self.ale.game_truncated(),
                {"lives": self.ale.lives()})


def make_env(env_cfg, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """Build the pipeline from an ``EnvironmentConfig`` (see ``experiments/configs/default.yaml``)."""
    game = env_cfg.name.split("/")[-1].split("-")[0].lower()  # "ALE/Breakout-v5" -> "breakout"
    base = _FrameEnv(
        game=game,
        obs_type="grayscale",
        frameskip=1,
        repeat_action_probability=env_cfg.repeat_action_probability,
        max_num_frames_per_episode=env_cfg.max_episode_frames,
        full_action_space=False,
        render_mode=render_mode,
    )
    env = AtariPreprocessing(
        base,
        noop_max=env_cfg.noop_max,
        frame_skip=env_cfg.frame_skip,
        screen_size=env_cfg.image_height,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    env = BreakoutRules(env, env_cfg.fire_on_reset, env_cfg.fire_on_life_loss, env_cfg.terminal_on_life_loss)
    env = FrameStackObservation(env, env_cfg.frame_stack_size)
    if seed is not None:
        env.action_space.seed(seed)
    return env


def make_vec_env(env_cfg, num_envs: int, seed: int = 0, asynchronous: bool = False) -> gym.vector.VectorEnv:
    """``num_envs`` copies of the pipeline through gymnasium's vector API (seeds seed, seed+1, ...)."""
    fns = [lambda i=i: make_env(env_cfg, seed + i) for i in range(num_envs)]
    vec = gym.vector.AsyncVectorEnv(fns) if asynchronous else gym.vector.SyncVectorEnv(fns)
    return vec


"""The one Breakout observation pipeline: collection, training, planning, evaluation and baselines.

``ALE/Breakout-v5`` (frameskip=1, sticky actions and frame cap from config)
-> gymnasium ``AtariPreprocessing`` (64x64 grayscale, frame skip 4, random no-ops)
-> :class:`BreakoutRules` (the serve: FIRE until the ball is in play after reset / life loss; optional
   terminal-on-life-loss; RAM labels)
-> ``FrameStackObservation(4)``: observations are uint8 ``[4, 64, 64]``.

Every step's ``info`` carries the emulator's ground truth read from RAM: ``paddle_x``, ``ball_x``,
``ball_y`` (0 when no ball is in play), ``lives``, ``score``, plus ``life_loss``, ``game_over``, ``action``
(the action the emulator executed: FIRE on a serve step) and ``serve`` (whether this step was a serve).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

from envs.errors import check_range

NUM_ACTIONS = 4
ACTION_NAMES = ("NOOP", "FIRE", "RIGHT", "LEFT")
FIRE, RIGHT, LEFT = 1, 2, 3
LABEL_NAMES = ("paddle_x", "ball_x", "ball_y", "lives", "score")


@dataclass
class EnvironmentConfig:
    """The observation pipeline (config section ``environment``; the seed's keys)."""

    name: str = "ALE/Breakout-v5"  # gymnasium id; the pipeline is built for Breakout's RAM layout
    frame_stack_size: int = 4  # frames stacked as channels
    grayscale_conversion: bool = True  # the pipeline is grayscale-only; kept for the seed's contract
    image_height: int = 64  # square resize target (AtariPreprocessing screen_size)
    image_width: int = 64
    frame_skip: int = 4  # agent step = frame_skip emulator frames (max-pooled over the last two)
    noop_max: int = 30  # random no-ops after reset
    repeat_action_probability: float = 0.25  # sticky actions (ALE v5 default; 0 in atari100k)
    max_episode_frames: int = 108_000  # emulator-frame cap of one episode (30 minutes of play)
    fire_on_reset: bool = True  # serve after reset: steps press FIRE until the RAM shows the ball in play
    fire_on_life_loss: bool = True  # serve the same way after a life is lost
    serve_max_presses: int = 16  # bound of one serve: after this many FIRE steps the agent's actions pass through
    terminal_on_life_loss: bool = False  # end the episode at each life loss (training-only trick)

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``; raises :class:`envs.errors.UserError`."""
        check_range(self.name == "ALE/Breakout-v5", f"{path}.name", self.name,
                    "'ALE/Breakout-v5' (RAM labels are Breakout's)")
        check_range(self.grayscale_conversion, f"{path}.grayscale_conversion", self.grayscale_conversion, "true")
        check_range(self.image_height == self.image_width and self.image_height >= 16, f"{path}.image_height",
                    self.image_height, f"a square size >= 16 equal to {path}.image_width")
        check_range(self.frame_stack_size >= 1, f"{path}.frame_stack_size", self.frame_stack_size, "an integer >= 1")
        check_range(self.frame_skip >= 1, f"{path}.frame_skip", self.frame_skip, "an integer >= 1")
        check_range(self.noop_max >= 0, f"{path}.noop_max", self.noop_max, "an integer >= 0")
        check_range(0.0 <= self.repeat_action_probability < 1.0, f"{path}.repeat_action_probability",
                    self.repeat_action_probability, "a probability in [0, 1)")
        check_range(self.serve_max_presses >= 1, f"{path}.serve_max_presses", self.serve_max_presses,
                    "an integer >= 1")
        check_range(self.max_episode_frames > 0, f"{path}.max_episode_frames", self.max_episode_frames,
                    "an integer > 0")


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
    """The serve, terminal-on-life-loss, and RAM labels in ``info``.

    The serve: after a reset (``fire_on_reset``) and after a lost life (``fire_on_life_loss``), every step
    presses FIRE in place of the agent's action until the RAM shows the ball in play (``ball_y > 0``), at
    most ``serve_max_presses`` steps in a row. Sticky actions can swallow a FIRE; the next step presses
    again, so no game stalls with the ball never served. Serve steps are ordinary agent steps: every
    counter of env steps (collection budgets, SB3's ``num_timesteps``, game lengths) counts them, and
    ``info["action"]`` is the action the emulator executed (FIRE on a serve step; replay data records it).

    With ``terminal_on_life_loss`` a lost life ends the episode, and the following ``reset`` (without a
    seed) continues the same game instead of starting a new one (as SB3's ``EpisodicLifeEnv``), so a
    "game" still spans all lives; the serve then happens on the new episode's first steps.
    """

    def __init__(self, env: gym.Env, fire_on_reset: bool = True, fire_on_life_loss: bool = True,
                 terminal_on_life_loss: bool = False, serve_max_presses: int = 16):
        gym.utils.RecordConstructorArgs.__init__(self, fire_on_reset=fire_on_reset,
                                                 fire_on_life_loss=fire_on_life_loss,
                                                 terminal_on_life_loss=terminal_on_life_loss,
                                                 serve_max_presses=serve_max_presses)
        gym.Wrapper.__init__(self, env)
        self.fire_on_reset = fire_on_reset
        self.fire_on_life_loss = fire_on_life_loss
        self.terminal_on_life_loss = terminal_on_life_loss
        self.serve_max_presses = serve_max_presses
        self._ale = env.unwrapped.ale
        self._lives = 0
        self._game_over = True
        self._serving = False  # a serve is due: FIRE until the ball is in play
        self._presses = 0  # FIRE presses of the serve in progress
        self._last: tuple[Any, dict[str, Any]] | None = None  # last observation and info (continued games)

    def _ball_in_play(self) -> bool:
        return int(self._ale.getRAM()[101]) != 0

    def _info(self, info: dict[str, Any], life_loss: bool = False, action: int = 0,
              serve: bool = False) -> dict[str, Any]:
        info = dict(info)
        info.update(ram_labels(self._ale.getRAM()))
        info["life_loss"] = life_loss
        info["game_over"] = self._game_over
        info["action"] = action
        info["serve"] = serve
        return info

    def _start_serve(self, due: bool) -> None:
        self._serving = due and not self._ball_in_play()
        self._presses = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.terminal_on_life_loss and not self._game_over and seed is None and self._last is not None:
            # Continue the same game after a life loss: no emulator reset; the serve follows in step().
            obs, info = self._last
            return obs, info
        obs, info = self.env.reset(seed=seed, options=options)
        self._game_over = False
        self._lives = self._ale.lives()
        self._start_serve(self.fire_on_reset)
        info = self._info(info)
        self._last = (obs, info)
        return obs, info

    def step(self, action):
        action = int(action)
        serve = self._serving and self._presses < self.serve_max_presses and not self._ball_in_play()
        if serve:
            action = FIRE
            self._presses += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self._ale.lives()
        life_loss = lives < self._lives
        self._lives = lives
        self._game_over = bool(terminated or truncated)
        if life_loss:
            self._start_serve(self.fire_on_life_loss and not self._game_over)
        elif self._serving and (self._ball_in_play() or self._presses >= self.serve_max_presses):
            self._serving = False
        info = self._info(info, life_loss, action, serve)
        self._last = (obs, info)
        if self.terminal_on_life_loss and life_loss:
            terminated = True
        return obs, float(reward), bool(terminated), bool(truncated), info


@functools.cache
def _frame_env_class() -> type:
    """The emulator's env class, defined on first use so that importing ``envs`` does not import ``ale_py``
    (models, planners and configs load without the emulator)."""
    import ale_py
    from ale_py.env import AtariEnv

    gym.register_envs(ale_py)

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

    return _FrameEnv


def make_env(env_cfg: EnvironmentConfig, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """Build the pipeline from an :class:`EnvironmentConfig` (the config's ``environment`` section)."""
    game = env_cfg.name.split("/")[-1].split("-")[0].lower()  # "ALE/Breakout-v5" -> "breakout"
    base = _frame_env_class()(
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
    env = BreakoutRules(env, env_cfg.fire_on_reset, env_cfg.fire_on_life_loss, env_cfg.terminal_on_life_loss,
                        env_cfg.serve_max_presses)
    env = FrameStackObservation(env, env_cfg.frame_stack_size)
    if seed is not None:
        env.action_space.seed(seed)
    return env


def make_vec_env(env_cfg: EnvironmentConfig, num_envs: int, seed: int = 0, asynchronous: bool = False
                 ) -> gym.vector.VectorEnv:
    """``num_envs`` copies of the pipeline through gymnasium's vector API (seeds seed, seed+1, ...)."""
    fns = [lambda i=i: make_env(env_cfg, seed + i) for i in range(num_envs)]
    vec = gym.vector.AsyncVectorEnv(fns) if asynchronous else gym.vector.SyncVectorEnv(fns)
    return vec


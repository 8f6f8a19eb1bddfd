"""SB3's own Atari stack, as SB3 and RL-Zoo users run it: the ``dqn-sb3`` / ``ppo-sb3`` baselines.

Training: ``make_atari_env("BreakoutNoFrameskip-v4")`` (SB3's ``AtariWrapper`` defaults: no-op reset up to
30, frame skip 4 with a max-pool over the last two frames, episodic life, FIRE on reset, 84x84 grayscale,
rewards clipped to their sign) + ``VecFrameStack(4)``; SB3 adds ``VecTransposeImage``. The emulator takes
the run's sticky-action probability and frame cap (``environment.*``), so both baseline flavours face the
same game. Nothing of the project's pipeline (64x64 frames, its serve) is in the training env.

Evaluation is the project's one protocol (:func:`experiments.play.evaluate`): whole games, raw score, the
same evaluation seeds and emulator settings, on the same stack without the training-only parts (no
episodic life, no reward clipping) plus the pipeline's serve (``envs.breakout.BreakoutRules``: FIRE after
a life loss until the ball is in play, which SB3's episodic-life training never had to learn), and the
same frame stack as ``VecFrameStack`` (zero-padded at reset): observations uint8 ``[4, 84, 84]``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs.breakout import BreakoutRules, EnvironmentConfig
from envs.seeds import training_seed

SB3_ATARI_ID = "BreakoutNoFrameskip-v4"
SCREEN = 84


def _emulator_kwargs(env_cfg: EnvironmentConfig) -> dict:
    return {"repeat_action_probability": env_cfg.repeat_action_probability,
            "max_num_frames_per_episode": env_cfg.max_episode_frames}


def make_sb3_training_env(env_cfg: EnvironmentConfig, n_envs: int, seed: int, screen_size: int = SCREEN):
    """SB3's Atari training env: ``make_atari_env`` + ``VecFrameStack(4)``, game seeds from the training range
    (``screen_size`` other than 84 only for benchmarks/dqn_gap.py)."""
    import ale_py
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    vec = make_atari_env(SB3_ATARI_ID, n_envs=n_envs, seed=training_seed(seed), env_kwargs=_emulator_kwargs(env_cfg),
                         wrapper_kwargs={"screen_size": screen_size, "noop_max": env_cfg.noop_max,
                                         "frame_skip": env_cfg.frame_skip})
    return VecFrameStack(vec, n_stack=env_cfg.frame_stack_size)


class _ChannelFirst(gym.ObservationWrapper):
    """``[4, 84, 84, 1]`` frame stacks -> ``[4, 84, 84]`` (what SB3's policy sees after VecTransposeImage)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        shape = env.observation_space.shape[:-1]
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)

    def observation(self, observation):
        return np.asarray(observation)[..., 0]


def make_sb3_eval_env(env_cfg: EnvironmentConfig, seed: int | None = None, screen_size: int = SCREEN) -> gym.Env:
    """SB3's Atari stack for evaluation: whole games, raw rewards, the serve, zero-padded 4-frame stack."""
    import ale_py
    from gymnasium.wrappers import FrameStackObservation
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    gym.register_envs(ale_py)
    env = gym.make(SB3_ATARI_ID, **_emulator_kwargs(env_cfg))
    env = AtariWrapper(env, noop_max=env_cfg.noop_max, frame_skip=env_cfg.frame_skip, screen_size=screen_size,
                       terminal_on_life_loss=False, clip_reward=False)
    env = BreakoutRules(env, env_cfg.fire_on_reset, env_cfg.fire_on_life_loss, False, env_cfg.serve_max_presses)
    env = _ChannelFirst(FrameStackObservation(env, env_cfg.frame_stack_size, padding_type="zero"))
    if seed is not None:
        env.action_space.seed(seed)
    return env

"""Breakout environment pipeline and on-disk replay data. Knows nothing of models.

Importing ``envs`` does not import the emulator (``ale_py``): :func:`make_env` loads it on first use.
"""

from envs.breakout import ACTION_NAMES, LABEL_NAMES, NUM_ACTIONS, EnvironmentConfig, make_env, make_vec_env, ram_labels
from envs.dataset import EpisodeStore, FrameStackDataset, TemporalSequenceDataset
from envs.errors import UserError
from envs.replay import Episode, ReplayWriter, load_episodes, split_episodes

__all__ = [
    "ACTION_NAMES", "LABEL_NAMES", "NUM_ACTIONS", "EnvironmentConfig", "Episode", "EpisodeStore", "FrameStackDataset",
    "ReplayWriter", "TemporalSequenceDataset", "UserError", "load_episodes", "make_env", "make_vec_env",
    "ram_labels", "split_episodes",
]

"""Breakout environment pipeline and on-disk replay data. Knows nothing of models."""

from envs.breakout import ACTION_NAMES, LABEL_NAMES, NUM_ACTIONS, make_env, make_vec_env, ram_labels
from envs.dataset import EpisodeStore, FrameStackDataset, TemporalSequenceDataset
from envs.errors import UserError
from envs.replay import Episode, ReplayWriter, load_episodes, split_episodes

__all__ = [
    "ACTION_NAMES", "LABEL_NAMES", "NUM_ACTIONS", "Episode", "EpisodeStore", "FrameStackDataset",
    "ReplayWriter", "TemporalSequenceDataset", "UserError", "load_episodes", "make_env", "make_vec_env",
    "ram_labels", "split_episodes",
]

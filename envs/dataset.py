"""Datasets over replay episodes: stacked single observations and temporal sequences.

Both keep the episodes' single frames concatenated in one uint8 array and rebuild the frame
stacks by fancy indexing, so a whole batch is gathered in one vectorised call (``batch(idx)``),
and a sequence never crosses an episode end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from envs.replay import Episode, stack_indices


class EpisodeStore:
    """Concatenated frames, actions, rewards and flags of a list of episodes."""

    def __init__(self, episodes: Sequence[Episode], frame_stack: int = 4):
        if not episodes:
            raise ValueError("EpisodeStore needs at least one episode")
        self.frame_stack = frame_stack
        self.frame_counts = np.array([len(e) + 1 for e in episodes], dtype=np.int64)  # L+1 per episode
        self.frames = np.concatenate([e.frames for e in episodes])  # [G, H, W] uint8
        self.labels = np.concatenate([e.labels for e in episodes])  # [G, 5]
        self.frame_offsets, self.stack_idx = stack_indices(self.frame_counts, frame_stack)  # [E], [G, F]
        # Per-transition arrays, padded with a dummy entry at each episode's last frame so that
        # transition t of an episode lives at the same global index as its frame t.
        def per_frame(name: str, dtype) -> np.ndarray:
            return np.concatenate([np.append(getattr(e, name), np.zeros(1, dtype)).astype(dtype) for e in episodes])
        self.actions = per_frame("actions", np.int64)
        self.rewards = per_frame("rewards", np.float32)
        self.life_loss = per_frame("life_loss", bool)
        self.terminated = per_frame("terminated", bool)
        self.truncated = per_frame("truncated", bool)
        self.episode_of = np.repeat(np.arange(len(episodes)), self.frame_counts)  # [G]
        self._event_sums: np.ndarray | None = None  # [G + 1, 2] running counts of life losses and points

    def future_events(self, g: np.ndarray, horizon: int) -> np.ndarray:
        """Float ``[len(g), 2]``: 1 where a life is lost (column 0) or a point scored (column 1) in the ``horizon``
        transitions from frame ``g`` on, within its episode."""
        if self._event_sums is None:
            x = np.stack([self.life_loss, self.rewards != 0], axis=1).astype(np.int64)  # [G, 2]
            self._event_sums = np.concatenate([np.zeros((1, 2), np.int64), np.cumsum(x, axis=0)])
        g = np.asarray(g, dtype=np.int64)
        last = (self.frame_offsets + self.frame_counts - 1)[self.episode_of[g]]  # each episode's last frame
        end = np.minimum(g + horizon, last)  # transitions g .. end-1 (the last frame has none)
        return (self._event_sums[end] - self._event_sums[g] > 0).astype(np.float32)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def obs(self, g: np.ndarray) -> np.ndarray:
        """Stacked observations of global frame indices ``g`` (any shape S) -> ``[*S, F, H, W]``."""
        return self.frames[self.stack_idx[g]]


class FrameStackDataset(Dataset):
    """Single stacked observations ``obs [4, 64, 64]`` with their RAM labels (Stage 1)."""

    def __init__(self, episodes: Sequence[Episode], frame_stack: int = 4):
        self.store = EpisodeStore(episodes, frame_stack)
        self.index = np.arange(self.store.num_frames)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        g = self.index[idx]
        return {"obs": torch.from_numpy(self.store.obs(g)), "labels": torch.from_numpy(self.store.labels[g])}

    def events(self, idx: np.ndarray, horizon: int) -> torch.Tensor:
        """``[B, 2]`` future-event targets of items ``idx`` (:meth:`EpisodeStore.future_events`)."""
        return torch.from_numpy(self.store.future_events(self.index[idx], horizon))

    def future(self, idx: np.ndarray, horizon: int) -> dict[str, torch.Tensor]:
        """Items ``idx`` ``horizon`` steps on: ``obs [B, F, H, W]`` of frame ``t + horizon`` (the game's last frame
        where it ends sooner), the actions taken from ``t`` on ``[B, horizon]`` (0 past the game's end) and ``valid
        [B]``, whether the game lasts ``horizon`` more steps."""
        st = self.store
        g = self.index[idx].astype(np.int64)
        last = (st.frame_offsets + st.frame_counts - 1)[st.episode_of[g]]  # each item's game's last frame
        steps = g[:, None] + np.arange(horizon)[None, :]  # [B, k]
        actions = np.where(steps < last[:, None], st.actions[np.minimum(steps, last[:, None])], 0)
        return {"obs": torch.from_numpy(st.obs(np.minimum(g + horizon, last))),
                "actions": torch.from_numpy(actions.astype(np.int64)),
                "valid": torch.from_numpy(g + horizon <= last)}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch(np.array([i])).items()}


class TemporalSequenceDataset(Dataset):
    """Sequences of ``sequence_length`` transitions inside one episode.

    Item ``i`` holds ``obs [T+1, F, H, W]`` uint8 (s_0..s_T), ``actions [T]`` int64,
    ``rewards [T]`` float32 (raw), ``life_loss [T]`` bool, ``terminated [T]`` bool and
    ``labels [T+1, 5]`` int16. Start positions step by ``stride`` transitions.
    """

    def __init__(self, episodes: Sequence[Episode], sequence_length: int = 8, frame_stack: int = 4,
                 stride: int = 1):
        self.T = sequence_length
        self.store = EpisodeStore(episodes, frame_stack)
        starts = []
        for off, n_frames in zip(self.store.frame_offsets, self.store.frame_counts):
            n_trans = n_frames - 1
            if n_trans >= sequence_length:
                starts.append(off + np.arange(0, n_trans - sequence_length + 1, stride))
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)  # [N] global frame index of s_0

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        s = self.starts[idx]  # [B]
        g = s[:, None] + np.arange(self.T + 1)[None, :]  # [B, T+1]
        t = g[:, :-1]  # [B, T] transitions
        st = self.store
        return {
            "obs": torch.from_numpy(st.obs(g)),  # [B, T+1, F, H, W]
            "actions": torch.from_numpy(st.actions[t]),
            "rewards": torch.from_numpy(st.rewards[t]),
            "life_loss": torch.from_numpy(st.life_loss[t]),
            "terminated": torch.from_numpy(st.terminated[t]),
            "labels": torch.from_numpy(st.labels[g]),
            "frame_index": torch.from_numpy(g),
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch(np.array([i])).items()}

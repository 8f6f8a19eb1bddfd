"""Replay data on disk: one ``.npz`` per episode of single frames, and a manifest with checksums.

Layout of a data folder::

    manifest.json           # format version, pipeline settings, one entry per episode (file, length, sha256)
    episodes/ep_000000.npz  # frames [L+1, H, W] uint8, actions [L], rewards [L] (raw, unclipped),
                            # terminated [L], truncated [L], life_loss [L], labels [L+1, 5] int16

Frame ``t`` is the newest frame of the observation before action ``t``; stacks of 4 are rebuilt on
read (padding the first frames with frame 0, as ``FrameStackObservation`` does at reset), so the
disk holds each 64x64 frame once. Each episode file and the manifest are written to a temporary
file and renamed into place, so an interrupted collection leaves every completed episode readable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.errors import UserError

FORMAT_VERSION = 1
FIELDS = ("frames", "actions", "rewards", "terminated", "truncated", "life_loss", "labels")


@dataclass
class Episode:
    """One episode of single frames; ``len(ep)`` is the number of transitions L."""

    frames: np.ndarray  # [L+1, H, W] uint8
    actions: np.ndarray  # [L] int64
    rewards: np.ndarray  # [L] float32, raw game score increments
    terminated: np.ndarray  # [L] bool
    truncated: np.ndarray  # [L] bool
    life_loss: np.ndarray  # [L] bool
    labels: np.ndarray  # [L+1, 5] int16: paddle_x, ball_x, ball_y, lives, score (envs.breakout.LABEL_NAMES)

    def __len__(self) -> int:
        return len(self.actions)

    def check(self, name: str = "episode") -> None:
        n = len(self.actions)
        shapes = {k: getattr(self, k).shape for k in FIELDS}
        ok = (
            self.frames.ndim == 3 and self.frames.shape[0] == n + 1 and self.frames.dtype == np.uint8
            and self.labels.shape == (n + 1, 5)
            and all(getattr(self, k).shape == (n,) for k in ("rewards", "terminated", "truncated", "life_loss"))
        )
        if not ok:
            raise UserError(f"{name} has inconsistent array shapes {shapes}; re-collect it")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ReplayWriter:
    """Appends episodes to a data folder; refuses a non-empty folder unless ``append=True``."""

    def __init__(self, root: str | Path, meta: dict[str, Any] | None = None, append: bool = False):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"output path {self.root} is a file, not a folder; choose a folder path")
        if self.root.exists() and any(self.root.iterdir()):
            if not append:
                raise UserError(f"output folder {self.root} is not empty; pass --append to add episodes to it "
                                "or choose a new folder")
            if not self.manifest_path.is_file():
                raise UserError(f"output folder {self.root} is not empty and holds no manifest.json, so it is not "
                                "a replay folder; choose a new folder")
            self.manifest = read_manifest(self.root)
            if meta is not None and self.manifest.get("env") != meta.get("env"):
                raise UserError(f"cannot append to {self.root}: it was collected with other environment settings "
                                f"({self.manifest.get('env')}); choose a new folder")
        else:
            (self.root / "episodes").mkdir(parents=True, exist_ok=True)
            self.manifest = {"format_version": FORMAT_VERSION, **(meta or {}), "episodes": []}
            self._write_manifest()
        (self.root / "episodes").mkdir(exist_ok=True)

    @property
    def num_episodes(self) -> int:
        return len(self.manifest["episodes"])

    def add(self, ep: Episode, extra: dict[str, Any] | None = None) -> Path:
        ep.check()
        index = max((e["index"] for e in self.manifest["episodes"]), default=-1) + 1
        path = self.root / "episodes" / f"ep_{index:06d}.npz"
        buf = io.BytesIO()
        np.savez(buf, **{k: getattr(ep, k) for k in FIELDS})
        _atomic_write_bytes(path, buf.getvalue())
        self.manifest["episodes"].append({
            "index": index,
            "file": f"episodes/{path.name}",
            "length": len(ep),
            "return": float(ep.rewards.sum()),
            "life_losses": int(ep.life_loss.sum()),
            "terminated": bool(ep.terminated[-1]) if len(ep) else False,
            "sha256": _sha256(path),
            **(extra or {}),
        })
        self._write_manifest()
        return path

    def _write_manifest(self) -> None:
        _atomic_write_bytes(self.manifest_path, json.dumps(self.manifest, indent=1).encode())


def read_manifest(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / "manifest.json"
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; collect data with `python run.py collect --out {root}`")
    if not path.is_file():
        raise UserError(f"data folder {root} has no manifest.json; it is not a replay folder made by `run.py collect`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is corrupted (not valid JSON); re-collect the data") from None
    if manifest.get("format_version") != FORMAT_VERSION or "episodes" not in manifest:
        raise UserError(f"{path} has an unknown format; re-collect the data with this version")
    return manifest


def load_episode(path: str | Path, sha256: str | None = None) -> Episode:
    """Read one episode file, verifying its checksum when given; corruption names the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"episode file {path} is missing; re-collect the data or restore the file")
    if sha256 is not None and _sha256(path) != sha256:
        raise UserError(f"episode file {path} is corrupted (checksum mismatch); re-collect the data")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in FIELDS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        raise UserError(f"episode file {path} is truncated or corrupted; re-collect the data") from None
    ep = Episode(**arrays)
    ep.check(f"episode file {path}")
    return ep


def load_episodes(root: str | Path, verify: bool = True) -> tuple[list[Episode], dict[str, Any]]:
    """All episodes of a data folder, in collection order, with the manifest."""
    root = Path(root)
    manifest = read_manifest(root)
    if not manifest["episodes"]:
        raise UserError(f"data folder {root} holds no episodes; collect some with `python run.py collect`")
    episodes = [load_episode(root / e["file"], e["sha256"] if verify else None) for e in manifest["episodes"]]
    return episodes, manifest


def split_episodes(n: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Episode-level train/val split: indices of the train and validation episodes."""
    if n < 2:
        raise UserError(f"a train/validation split needs at least 2 episodes, the data has {n}; collect more steps")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def stack_indices(lengths: np.ndarray, stack: int) -> tuple[np.ndarray, np.ndarray]:
    """Helper for stacking frames of concatenated episodes.

    Args:
        lengths: number of frames (L+1) of each episode.
        stack: frames per observation.

    Returns:
        offsets [E] of each episode's first frame in the concatenation, and for every frame g of
        the concatenation the global indices ``[G, stack]`` of its stack (oldest first), padded
        with the episode's first frame.
    """
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    local = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)  # [G]
    start = np.repeat(offsets, lengths)  # [G]
    back = np.arange(stack - 1, -1, -1)  # [stack]: stack-1 ... 0
    idx = start[:, None] + np.maximum(local[:, None] - back[None, :], 0)  # [G, stack]
    return offsets, idx

"""Replay data on disk: one ``.npz`` per episode of single frames, and a manifest with checksums.

Layout of a data folder::

    manifest.json           # format version, pipeline settings, one entry per episode (file, length, sha256)
    episodes/ep_000000.npz  # frames [L+1, H, W] uint8, actions [L], rewards [L] (raw, unclipped),
                            # terminated [L], truncated [L], life_loss [L], labels [L+1, 5] int16

Frame ``t`` is the newest frame of the observation before action ``t``; stacks of 4 are rebuilt on
read (padding the first frames with frame 0, as ``FrameStackObservation`` does at reset), so the
disk holds each 64x64 frame once. Each episode file and the manifest are written to a temporary
file and renamed into place, so an interrupted collection leaves every completed episode readable.

Writers hold an exclusive lock on ``.lock`` (``fcntl.flock``) while they check the folder and while they add
an episode, and re-read the manifest under it: any number of ``collect --append`` into one folder at the
same time each land whole, numbered one after the other. Readers take no lock (the manifest is replaced
atomically, and lists only episodes whose file is already in place).
"""

from __future__ import annotations

import contextlib
import fcntl
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
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one name per process: writers never share one
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ReplayWriter:
    """Appends episodes to a data folder; refuses a non-empty folder unless ``append=True``.

    Opening an existing folder checks it first (manifest, settings and every episode's checksum), so a
    damaged folder is refused before anything is written to it.
    """

    LOCK = ".lock"

    def __init__(self, root: str | Path, meta: dict[str, Any] | None = None, append: bool = False, streams: int = 1):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"output path {self.root} is a file, not a folder; choose a folder path")
        existed = self.root.is_dir() and any(p.name != self.LOCK for p in self.root.iterdir())
        if existed and not append:
            raise UserError(f"output folder {self.root} is not empty; pass --append to add episodes to it "
                            "or choose a new folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the data folder {self.root} ({err.strerror}); choose a writable "
                            "--out") from None
        with self._locked():
            if self.manifest_path.is_file() or any(p.name != self.LOCK for p in self.root.iterdir()):
                if not append:  # another process created it since we looked
                    raise UserError(f"output folder {self.root} is not empty; pass --append to add episodes to "
                                    "it or choose a new folder")
                if not self.manifest_path.is_file():
                    raise UserError(f"output folder {self.root} is not empty and holds no manifest.json, so it is "
                                    "not a replay folder; choose a new folder")
                self.manifest = read_manifest(self.root)
                if meta is not None and self.manifest.get("env") != meta.get("env"):
                    raise UserError(f"cannot append to {self.root}: it was collected with other environment "
                                    f"settings ({self.manifest.get('env')}); choose a new folder")
                verify_folder(self.root, self.manifest, what=f"cannot append to {self.root}: ")
                # Temporary files of a writer killed mid-write (writers hold the lock while they have one).
                for stale in [*(self.root / "episodes").glob("*.tmp"), *self.root.glob("manifest.json*.tmp")]:
                    stale.unlink(missing_ok=True)
            else:
                (self.root / "episodes").mkdir(parents=True, exist_ok=True)
                self.manifest = {"format_version": FORMAT_VERSION, **(meta or {}), "episodes": []}
                self._write_manifest()
            (self.root / "episodes").mkdir(exist_ok=True)
            # Game-seed streams of its own for this writer (collect seeds each env's first reset with one):
            # writers that open the folder at the same time with the same seed still play different games.
            self.stream = max(self.num_episodes, int(self.manifest.get("next_stream", 0)))
            self.manifest["next_stream"] = self.stream + streams
            self._write_manifest()
        self.added = 0  # episodes this writer added

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive lock of the folder for the block (released by the kernel if the process dies)."""
        try:
            fd = os.open(self.root / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot write to the data folder {self.root} ({err.strerror}); choose a writable "
                            "folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def num_episodes(self) -> int:
        return len(self.manifest["episodes"])

    def add(self, ep: Episode, extra: dict[str, Any] | None = None) -> Path:
        ep.check()
        buf = io.BytesIO()
        np.savez(buf, **{k: getattr(ep, k) for k in FIELDS})
        with self._locked():
            self.manifest = read_manifest(self.root)  # other writers may have added episodes since
            index = max((e["index"] for e in self.manifest["episodes"]), default=-1) + 1
            path = self.root / "episodes" / f"ep_{index:06d}.npz"
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
        self.added += 1
        return path

    def _write_manifest(self) -> None:
        _atomic_write_bytes(self.manifest_path, json.dumps(self.manifest, indent=1).encode())


def verify_folder(root: Path, manifest: dict[str, Any], what: str = "") -> None:
    """Every episode file of ``manifest`` present with its recorded checksum, else a UserError naming it."""
    for e in manifest["episodes"]:
        path = root / e["file"]
        if not path.is_file():
            raise UserError(f"{what}episode file {path} is missing; restore it or re-collect the data")
        if _sha256(path) != e["sha256"]:
            raise UserError(f"{what}episode file {path} is corrupted (checksum mismatch); restore it or re-collect "
                            "the data")


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
    env = manifest.get("env") or {}
    size = (env.get("image_height"), env.get("image_width"))
    if None in size:  # a folder without pipeline settings: its episodes must at least agree with each other
        size = episodes[0].frames.shape[1:]
    for e, ep in zip(manifest["episodes"], episodes):
        if ep.frames.shape[1:] != tuple(size):
            raise UserError(f"episode file {root / e['file']} holds {ep.frames.shape[1]}x{ep.frames.shape[2]} frames "
                            f"but the folder's pipeline makes {size[0]}x{size[1]}; remove that episode or re-collect "
                            "the data")
    return episodes, manifest


def split_episodes(n: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Episode-level train/val split: indices of the train and validation episodes."""
    if n < 2:
        raise UserError(f"a train/validation split needs at least 2 episodes, the data has {n}; collect more steps")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def stable_split(n: int, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Bool ``[n]``: which episodes are validation episodes, for a replay that grows (`run.py learn`). Episode
    ``i``'s side never changes as episodes are added (a low-discrepancy sequence offset by the seed), so a loop
    never trains on an episode it validated on."""
    u = (np.arange(n) * 0.6180339887498949 + (seed * 0.7548776662466927) % 1.0) % 1.0
    val = u < val_fraction
    if n >= 2 and not val.any():
        val[int(np.argmin(u))] = True
    if n >= 2 and val.all():
        val[int(np.argmax(u))] = False
    return val


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

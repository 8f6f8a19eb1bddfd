"""The replay data each training stage reads: episode-level splits, frame stacks, latent sequences.

Public functions shared by training (``experiments/pretrain.py``), the model-quality reports
(``experiments/report_stage1.py``, ``report_stage2.py``) and the actor-critic (``train_agent.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.dataset import FrameStackDataset, TemporalSequenceDataset
from envs.errors import UserError
from envs.replay import load_episodes, split_episodes, stable_split
from experiments import distributed
from experiments.config import Config
from worldmodel.checkpoint import load_checkpoint
from worldmodel.dynamics_loss import LatentSequences
from worldmodel.latent_cache import cached_latents, encode_store

INPUT_STATS_FRAMES = 8192  # training observations sampled to fit the encoder's per-pixel standardisation
INPUT_STATS_SEED_OFFSET = 104729


def load_split(cfg: Config, data_dir: str | Path) -> tuple[FrameStackDataset, FrameStackDataset]:
    """Training and validation frame stacks (episode-level split with ``run.seed``) of a replay folder."""
    episodes, _ = load_episodes(data_dir)
    tr, va = split_episodes(len(episodes), cfg.data.val_fraction, cfg.run.seed)
    fs = cfg.environment.frame_stack_size
    return FrameStackDataset([episodes[i] for i in tr], fs), FrameStackDataset([episodes[i] for i in va], fs)


def input_frames(train_ds: FrameStackDataset, seed: int, n: int = INPUT_STATS_FRAMES) -> torch.Tensor:
    """Up to ``n`` training observations (uint8 ``[n, F, H, W]``) for the encoder's input standardisation."""
    rng = np.random.default_rng(seed + INPUT_STATS_SEED_OFFSET)
    idx = np.sort(rng.choice(len(train_ds), size=min(n, len(train_ds)), replace=False))
    return train_ds.batch(idx)["obs"]


def load_sequences(cfg: Config, data_dir: str | Path, encoder: torch.nn.Module, device: torch.device,
                   progress: bool = True, split: str = "permutation"
                   ) -> tuple[LatentSequences, LatentSequences, dict[str, Any]]:
    """Train and validation Stage-2 sequences over cached latents of a replay folder (episode split, ``run.seed``:
    ``"permutation"`` as pretrain splits, ``"stable"`` as `run.py learn` does).

    Training sequences start at every transition; validation ones every ``T // 2`` transitions.
    """
    data_dir = Path(data_dir)
    episodes, manifest = load_episodes(data_dir)
    T = cfg.vjepa2_world_model.stage2.sequence_length
    ds = TemporalSequenceDataset(episodes, T, cfg.environment.frame_stack_size, stride=1)
    if split == "stable":
        is_val = stable_split(len(episodes), cfg.data.val_fraction, cfg.run.seed)
        tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    else:
        tr, va = split_episodes(len(episodes), cfg.data.val_fraction, cfg.run.seed)
    grp = distributed.group()
    if grp.active:  # under torchrun each process encodes a share of the frames; rank 0 writes the cache
        latents, info = cached_latents(encoder, ds.store, manifest, data_dir / "latent_cache", device=device,
                                       progress=progress and grp.main, encode=_encode_shared,
                                       agree=lambda ok: all(distributed.gather(ok)), write=grp.main)
        distributed.barrier()  # the cache file is complete before any process goes on
    else:
        latents, info = cached_latents(encoder, ds.store, manifest, data_dir / "latent_cache", device=device,
                                       progress=progress)
    ep = ds.store.episode_of[ds.starts]  # [N] episode of each sequence
    train_starts = ds.starts[np.isin(ep, tr)]
    val_starts = ds.starts[np.isin(ep, va)][:: max(1, T // 2)]
    if len(train_starts) == 0 or len(val_starts) == 0:
        raise UserError(f"data folder {data_dir} has too few episodes of >= {T} transitions for a train/validation "
                        "split of stage-2 sequences; collect more steps")
    return (LatentSequences(latents, ds.store, train_starts, T), LatentSequences(latents, ds.store, val_starts, T),
            info)


def _encode_shared(encoder: torch.nn.Module, store, batch_size: int, device: torch.device,
                   progress: bool) -> torch.Tensor:
    """:func:`encode_store` split over a torchrun group: rank ``r`` encodes the ``r``-th contiguous share of the
    frames and every rank gets all of them, in order."""
    grp = distributed.group()
    G = store.num_frames
    bounds = [G * r // grp.world for r in range(grp.world + 1)]
    mine = encode_store(encoder, store, batch_size, device, progress, frames=(bounds[grp.rank], bounds[grp.rank + 1]))
    return torch.cat(distributed.gather(mine))


def world_model_data_dir(world_model: str | Path) -> Path:
    """The replay folder a Stage-2 checkpoint was trained on, as its checkpoint records it.

    Raises:
        UserError: the checkpoint cannot be read, records no data folder, or the folder is gone.
    """
    entry = load_checkpoint(world_model).get("data_dir")
    if not isinstance(entry, str) or not entry:
        raise UserError(f"world-model checkpoint {world_model} does not record its replay data; pass --data DIR "
                        "(a folder written by `run.py collect`)")
    if not (Path(entry) / "manifest.json").is_file():
        raise UserError(f"the replay data {entry} that {world_model} was trained on is gone; pass --data DIR "
                        "(a folder written by `run.py collect`)")
    return Path(entry)


def checkpoint_and_data(checkpoint: str | Path, kind: str, data: str | Path | None = None
                        ) -> tuple[dict[str, Any], Config, Path]:
    """A ``kind`` checkpoint, its config, and the replay folder to report on (``data`` or the one it records)."""
    from experiments.config import config_from_dict

    ckpt = load_checkpoint(checkpoint, kind=kind)
    if data is None and not ckpt.get("data_dir"):
        raise UserError(f"checkpoint {checkpoint} does not record its replay data; pass --data DIR")
    data = Path(data if data is not None else ckpt["data_dir"])
    if not data.is_dir():
        raise UserError(f"data folder {data} of checkpoint {checkpoint} does not exist; pass --data DIR")
    return ckpt, config_from_dict(ckpt["config"]), data

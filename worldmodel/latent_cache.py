"""Encode a replay dataset once with the frozen Stage-1 encoder and keep the latents on disk.

Stage 2 never trains the encoder, so re-encoding every frame each epoch would only burn time.
The cache file is named by a key made of two fingerprints:

* the encoder's: sha256 over its parameter and buffer names, shapes and bytes (so the same weights
  give the same key whether they come from a Stage-1 or a Stage-2 checkpoint, and any change in
  weights or architecture gives a new one);
* the data's: sha256 over the manifest's per-episode checksums, in order, and the frame stack.

A cache file whose stored fingerprints do not match, or that cannot be read, is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from worldmodel.checkpoint import save_checkpoint

CACHE_VERSION = 1


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 of the encoder's state (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(manifest: dict[str, Any], frame_stack: int) -> str:
    """sha256 of the manifest's episode checksums (in order) and the frame stack size."""
    ident = {"episodes": [e["sha256"] for e in manifest["episodes"]], "frame_stack": frame_stack,
             "env": manifest.get("env")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


@torch.inference_mode()
def encode_store(encoder: nn.Module, store, batch_size: int = 512, device: torch.device | str = "cpu",
                 progress: bool = True, frames: tuple[int, int] | None = None) -> torch.Tensor:
    """Latents ``[G, D]`` (float32, CPU) of every global frame of an :class:`envs.dataset.EpisodeStore` (with
    ``frames=(start, stop)``: of those global frames only, ``[stop - start, D]``)."""
    was_training = encoder.training
    encoder.eval()
    start, stop = frames if frames is not None else (0, store.num_frames)
    chunks = [torch.empty(0, encoder.latent_dim)] if stop <= start else []
    n_batches = math.ceil((stop - start) / batch_size)
    for i in tqdm(range(n_batches), desc="encode", unit="batch", disable=not progress, leave=False,
                  mininterval=0.1 if sys.stderr.isatty() else 30.0):  # a log file gets a line per 30 s
        g = np.arange(start + i * batch_size, min(stop, start + (i + 1) * batch_size))
        obs = torch.from_numpy(store.obs(g)).to(device)  # [b, F, H, W] uint8
        z = encoder(obs)
        assert z.ndim == 2 and z.shape[0] == len(g), f"encoder returned {tuple(z.shape)} for {len(g)} observations"
        chunks.append(z.float().cpu())
    encoder.train(was_training)
    return torch.cat(chunks)


def cached_latents(encoder: nn.Module, store, manifest: dict[str, Any], cache_dir: str | Path,
                   device: torch.device | str = "cpu", batch_size: int = 512, progress: bool = True,
                   encode: Callable[..., torch.Tensor] | None = None, agree: Callable[[bool], bool] | None = None,
                   write: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """Latents ``[G, D]`` of ``store`` (built from all of ``manifest``'s episodes, in order), from the cache
    in ``cache_dir`` when its key matches, otherwise encoded now and written there.

    Several processes can share the work (``experiments/data.py`` under torchrun): ``encode`` replaces
    :func:`encode_store` (same arguments), ``agree`` turns this process's "the cache is good" into the group's
    verdict (so all of them encode, or none), and ``write=False`` leaves the file to one of them.

    Returns the latents and an info dict: ``path``, ``rebuilt`` (bool), ``seconds``, ``key``.
    """
    enc_fp = encoder_fingerprint(encoder)
    data_fp = data_fingerprint(manifest, store.frame_stack)
    key = hashlib.sha256(f"v{CACHE_VERSION}:{enc_fp}:{data_fp}".encode()).hexdigest()
    path = Path(cache_dir) / f"latents-{key[:20]}.pt"
    t0 = time.perf_counter()
    ok = False
    if path.is_file():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            ok = (isinstance(obj, dict) and obj.get("encoder") == enc_fp and obj.get("data") == data_fp
                  and isinstance(obj.get("latents"), torch.Tensor) and obj["latents"].shape[0] == store.num_frames)
        except Exception:  # an unreadable cache is rebuilt, never trusted
            ok = False
    if agree is not None:
        ok = agree(ok)
    if ok:
        return obj["latents"], {"path": str(path), "rebuilt": False, "seconds": time.perf_counter() - t0,
                                "key": key}
    latents = (encode or encode_store)(encoder, store, batch_size, device, progress)
    if not write:
        return latents, {"path": str(path), "rebuilt": True, "seconds": time.perf_counter() - t0, "key": key}
    try:
        save_checkpoint({"kind": "latent_cache", "version": CACHE_VERSION, "encoder": enc_fp, "data": data_fp,
                         "latents": latents}, path)
    except OSError as err:  # a read-only data folder: train on the latents in memory, encode again next time
        return latents, {"path": f"not cached: {path.parent} is not writable ({err.strerror})", "rebuilt": True,
                         "seconds": time.perf_counter() - t0, "key": key}
    return latents, {"path": str(path), "rebuilt": True, "seconds": time.perf_counter() - t0, "key": key}

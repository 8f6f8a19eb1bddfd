"""The learned world model behind the public API (``worldmodel.protocol.PolicyWorldModel``): the only way
planners and the actor-critic see it.

```python
from worldmodel import load_world_model
wm = load_world_model("runs/pretrain/<run>/stage2/best.pt", device="cpu")
z = wm.encode(obs)                        # uint8 [B, 4, 64, 64] -> float32 [B, D]
lat, rew, cont = wm.imagine(z, actions)   # actions long [B, H], any H >= 1
lat, rew, cont = wm.imagine(z, actions, context=hist_z, context_actions=hist_a)  # + real history [1, K, D], [1, K]
# lat [B, H, D]: z after each action; rew [B, H]: predicted reward (game points) of each step;
# cont [B, H]: probability that step h does NOT lose a life.
lat, acts, rew, cont = wm.imagine_policy(z, policy_fn, H)  # actions picked step by step (actor-critic)
```

Both verbs run without gradients (``torch.inference_mode``) in eval mode, batched on the model's
device. ``imagine`` is the planner's hot loop: one token per imagined step through a KV cache over a
sliding window of the last ``sequence_length`` steps (``worldmodel.transformer.KVRollout``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.errors import UserError
from worldmodel.checkpoint import REQUIRED, load_checkpoint, rebuild, require
from worldmodel.encoder import MaskedViT, PooledEncoder
from worldmodel.transformer import KVRollout, WorldModelTransformer, symexp


class WorldModel:
    """Frozen Stage-1 encoder + Stage-2 dynamics, with two verbs: ``encode`` and ``imagine``.

    Attributes:
        latent_dim: D.
        num_actions: size of the discrete action set.
        context_length: steps of history the dynamics attends to (Stage-2 ``sequence_length``).
        frame_shape: ``(F, H, W)`` of the observations its encoder was trained on (``None`` if it cannot tell).
    """

    def __init__(self, encoder: nn.Module, dynamics: WorldModelTransformer, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval().requires_grad_(False)
        self.dynamics = dynamics.to(self.device).eval().requires_grad_(False)
        self.latent_dim = int(dynamics.latent_dim)
        self.num_actions = int(dynamics.num_actions)
        self.context_length = int(dynamics.max_len)
        vit = getattr(encoder, "vit", None)  # the frames it was trained on: (F, H, W), None for a foreign encoder
        self.frame_shape = None if vit is None else (int(vit.in_channels), int(vit.image_size), int(vit.image_size))
        # The last shared history prefilled by imagine: (context, context_actions, batch-1 KVRollout). A planner
        # that passes the same history tensors to several calls (CEM's iterations) prefills it once.
        self._context_memo: tuple[torch.Tensor, torch.Tensor, Any] | None = None

    @torch.inference_mode()
    def encode(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 observations ``[B, 4, 64, 64]`` (numpy or torch) -> latents float32 ``[B, D]``."""
        obs = torch.as_tensor(obs, device=self.device)
        if obs.ndim == 3:
            raise ValueError(f"encode expects a batch [B, 4, 64, 64]; got one observation {tuple(obs.shape)}; "
                             "add a batch dimension")
        return self.encoder(obs).float()

    @torch.inference_mode()
    def imagine(self, z0: torch.Tensor, actions: np.ndarray | torch.Tensor, context: torch.Tensor | None = None,
                context_actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Roll the dynamics forward from ``z0 [B, D]`` under ``actions [B, H]``.

        ``context [B or 1, K, D]`` / ``context_actions [B or 1, K]``: optional real history before ``z0``
        (latents of the previous observations and the actions taken in them, oldest first). Stage 2 is
        trained to predict with up to ``context_length - 1`` such steps before the current one; without
        them the first imagined steps are predicted from ``z0`` alone. A batch of 1 is shared by all rollouts
        and prefilled once for consecutive calls with the same context tensors (do not edit them in place).

        Returns latents ``[B, H, D]``, rewards ``[B, H]`` (game points) and continue probabilities ``[B, H]``.
        """
        if not isinstance(actions, torch.Tensor) or actions.device != self.device or actions.dtype != torch.long:
            actions = torch.as_tensor(actions, device=self.device).long()
        if z0.device != self.device:
            z0 = z0.to(self.device)
        if actions.ndim != 2 or z0.ndim != 2 or z0.shape[0] != actions.shape[0] or actions.shape[1] < 1:
            raise ValueError(f"imagine expects z0 [B, {self.latent_dim}] and actions [B, H>=1]; got z0 "
                             f"{tuple(z0.shape)}, actions {tuple(actions.shape)}")
        if context is not None:
            if context.ndim != 3 or context_actions is None or tuple(context_actions.shape) != tuple(context.shape[:2]):
                raise ValueError(f"imagine expects context [B or 1, K, {self.latent_dim}] with context_actions "
                                 f"[B or 1, K]; got {tuple(context.shape)} and "
                                 f"{None if context_actions is None else tuple(context_actions.shape)}")
            context = context.to(self.device).float()
            context_actions = torch.as_tensor(context_actions, device=self.device).long()
        if context is not None and context.shape[0] == 1 and context.shape[1] > 0:
            memo = self._context_memo  # keyed by the tensor objects: pass a new tensor for a new history
            if memo is None or memo[0] is not context or memo[1] is not context_actions:
                memo = (context, context_actions, self.dynamics.prefill(context, context_actions, context.shape[1]))
                self._context_memo = memo
            lat, rew, cont = self.dynamics.imagine(z0.float(), actions, context_state=memo[2])
        else:
            lat, rew, cont = self.dynamics.imagine(z0.float(), actions, context, context_actions)
        return lat, symexp(rew), torch.sigmoid(cont)

    @torch.inference_mode()
    def imagine_policy(self, z0: torch.Tensor, policy_fn: Callable[[torch.Tensor], torch.Tensor], horizon: int,
                       context: torch.Tensor | None = None, context_actions: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`imagine`, but each action is chosen from the latest imagined latent (added for the
        actor-critic, issue 6): ``policy_fn(z [B, D]) -> long [B]`` is called with ``z0``, then with the
        latent after each step. Same ``KVRollout`` as :meth:`imagine`, so for the same actions the outputs
        are the same.

        ``context [B, K, D]`` / ``context_actions [B, K]``: real history before each ``z0`` (one per rollout, oldest
        first, ``K < context_length``), fed to the rollout state before the first imagined step, as in :meth:`imagine`.

        Returns latents ``[B, H, D]``, the chosen actions long ``[B, H]``, rewards ``[B, H]`` and continue
        probabilities ``[B, H]``.
        """
        dyn = self.dynamics
        z = z0.to(self.device).float()[:, None]  # [B, 1, D]
        B = z.shape[0]
        K = 0 if context is None else int(context.shape[1])
        if context is not None and (context.shape != (B, K, self.latent_dim) or context_actions is None
                                    or tuple(context_actions.shape) != (B, K) or K >= self.context_length):
            raise ValueError(f"imagine_policy expects context [{B}, K, {self.latent_dim}] with context_actions "
                             f"[{B}, K], K < {self.context_length}; got {tuple(context.shape)} and "
                             f"{None if context_actions is None else tuple(context_actions.shape)}")
        state = KVRollout(dyn, B, K + horizon, z)
        if K:
            state.prefill(context.to(self.device).float(), torch.as_tensor(context_actions, device=self.device).long(),
                          batched=True)
        lat, acts, rew, cont = [], [], [], []
        for _ in range(horizon):
            a = torch.as_tensor(policy_fn(z[:, 0]), device=self.device).long().view(B, 1)  # [B, 1]
            z, r, c = state.step(z, dyn.a_in(a))  # [B, 1, D], [B, 1], [B, 1]
            lat.append(z)
            acts.append(a)
            rew.append(r)
            cont.append(c)
        return (torch.cat(lat, 1), torch.cat(acts, 1), symexp(torch.cat(rew, 1)),
                torch.sigmoid(torch.cat(cont, 1)))


def encoder_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> nn.Module:
    """The frozen encoder stored in a Stage-2 checkpoint dict (``encoder_kwargs`` + ``encoder`` weights)."""
    return PooledEncoder(rebuild(ckpt, path, MaskedViT, "encoder_kwargs", "encoder", "encoder", stage=2))


def dynamics_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> WorldModelTransformer:
    """The Stage-2 dynamics stored in a Stage-2 checkpoint dict (``world_model_kwargs`` + ``world_model`` weights)."""
    return rebuild(ckpt, path, WorldModelTransformer, "world_model_kwargs", "world_model", "world model", stage=2)


def load_world_model(path: str | Path, device: str | torch.device = "cpu") -> WorldModel:
    """The world model of a Stage-2 checkpoint (``best.pt`` or ``latest.pt`` of a stage-2 run).

    Raises:
        UserError: the file is missing or corrupt, or is not a Stage-2 checkpoint (a Stage-1 checkpoint
            holds only the encoder: train Stage 2 on it first).
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt["kind"] != "stage2":
        hint = (f"; train the world model on it with `python run.py pretrain --stage 2 --stage1-checkpoint {path}`"
                if ckpt["kind"] == "stage1" else "")
        raise UserError(f"checkpoint {path} is a {ckpt['kind']!r} checkpoint, but the world model needs a 'stage2' "
                        f"checkpoint{hint}")
    require(ckpt, path, REQUIRED["stage2"])
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but no CUDA device is available; use device='cpu'")
    return WorldModel(encoder_from_checkpoint(ckpt, path), dynamics_from_checkpoint(ckpt, path), dev)

"""Stage 1: masked-latent pretraining of a MaskedViT with an EMA target encoder.

Three objectives, chosen by :attr:`Stage1Config.target` (``vjepa2_world_model.stage1.target``):

* ``pooled`` (the seed): an MLP maps the online encoder's pooled latent of the masked input to the
  target encoder's pooled latent of the full input; L1. This objective can collapse to a constant.
* ``tokens`` (V-JEPA 2): a small transformer maps the online encoder's tokens of the masked input to
  the target encoder's layer-normed patch tokens; L1 on the masked positions only.

* ``bottleneck``: a light decoder maps the online encoder's latent ``z [B, D]`` of the masked input
  (the encoder's readout, e.g. ``spatial``) to the target encoder's layer-normed tokens at *all*
  positions; L1, optionally weighted per patch by its pixel motion ``mean |f_t - f_{t-1}|``
  (``motion_weighting``: the moving ball and paddle, not the static bricks and score), plus
  ``bottleneck_token_weight`` times the ``tokens`` loss. The target is tokens, not a pooled vector,
  so a constant latent cannot reach a low loss; the latent itself is trained to carry the frame.

All leave the same downstream encoder: the EMA target MaskedViT with its latent ``[B, D]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.errors import check_range, check_schedule
from worldmodel.encoder import Block, MaskedViT, random_patch_mask, sincos_2d


@dataclass
class PredictorConfig:
    """The Stage-1 predictor (config section ``models.predictor``)."""

    depth: int = 2  # stage-1 token predictor blocks (tokens target); MLP layers (pooled target)
    heads: int = 4
    mlp_dim: int = 256
    dropout: float = 0.0

    def validate(self, path: str) -> None:
        """Range checks of this section; ``experiments.config.validate`` checks that ``heads`` divides
        ``models.shared_latent_dim``."""
        check_range(self.depth >= 1, f"{path}.depth", self.depth, "an integer >= 1")
        check_range(self.mlp_dim >= 1, f"{path}.mlp_dim", self.mlp_dim, "an integer >= 1")
        check_range(0.0 <= self.dropout < 1.0, f"{path}.dropout", self.dropout, "a value in [0, 1)")


@dataclass
class Stage1Config:
    """Stage-1 training (config section ``vjepa2_world_model.stage1``)."""

    masking_ratio: float = 0.4  # fraction of patches replaced by the mask token
    num_epochs: int = 10
    learning_rate: float = 1e-4
    ema_decay: float = 0.996  # target <- decay * target + (1 - decay) * online
    weight_decay: float = 0.05
    early_stopping_patience: int = 3  # epochs without val improvement before stopping
    # seed's pooled-latent MLP, V-JEPA 2 token target, or latent -> all tokens decoder (worldmodel/masked_prediction.py)
    target: Literal["pooled", "tokens", "bottleneck"] = "bottleneck"
    bottleneck_token_weight: float = 0.0  # bottleneck target: weight of the added masked-token loss (0 = none)
    motion_weighting: float = 1.0  # bottleneck target: token error weight 1 + this * patch motion / mean motion
    motion_map_weight: float = 1.0  # auxiliary: cross-entropy of where the newest frame moved (8x8 map) from z
    # cells per side of that map: 0 = the patch grid (8x8 at 64 px, 8-pixel cells); 32 = 2-pixel cells, which asks
    # z for the ball's position within a patch
    motion_map_cells: int = 0
    # auxiliary: cross-entropy, from z, of where the newest frame moved along each axis at pixel resolution (the
    # column profile and the row profile of |f_t - f_(t-1)|, 64 + 64 classes at 64 px): the ball's x and y to the
    # pixel without the 1,024 classes of a fine 2-D map (0 = off; screened on 12k random steps: ball_x R2 0.746 at
    # 0.3, 0.690 at 1, against 0.748 off, docs/research_log.md)
    motion_axes_weight: float = 0.0
    # auxiliary: binary cross-entropy, from z, of whether a life is lost and whether a point is scored within the
    # next event_horizon steps: the game's own signals reach the encoder (as DreamerV3's reward and continue losses
    # reach its encoder), asking z for where the ball is against the paddle and the bricks (0 = off)
    event_weight: float = 0.0
    event_horizon: int = 8
    # auxiliary: from z_t and the next future_horizon actions, a decoder predicts the target encoder's tokens of frame
    # t + future_horizon at every position (L1, motion-weighted per frame like the bottleneck target): to say where
    # the ball will be, z_t must hold where it is and where it goes (0 = off)
    future_weight: float = 0.0
    future_horizon: int = 2
    # augmentation (DrQ's and SPR's random shift): each training stack is padded by this many pixels (edges repeated)
    # and cropped back at a random offset, the same offset for its frames, for the online and the target view and
    # for every auxiliary target; validation, probes and Stage 2 see the frames as they are (0 = off)
    random_shift: int = 0
    # where the shift acts: "pixels" (the raw frames, before the encoder's per-pixel standardisation: the S4 screen of
    # 2026-12-07, -3.49; shifted walls and bricks land on pixels whose std is floored at 0.1, so the inputs it trains
    # on are ~35x larger than those it plays on) or "standardised" (the standardised frames, edges repeated there:
    # the encoder's inputs move without changing scale; not screened yet)
    random_shift_space: Literal["pixels", "standardised"] = "pixels"
    batch_size: int = 128
    grad_clip: float = 1.0  # max global grad norm
    warmup_epochs: float = 0.5  # linear LR warm-up before cosine decay
    probe_every: int = 1  # run the representation diagnostics every N epochs (0 = only at the end)
    compile: bool = False  # torch.compile the training step

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``; raises :class:`envs.errors.UserError`."""
        check_range(0.0 < self.masking_ratio < 1.0, f"{path}.masking_ratio", self.masking_ratio,
                    "a fraction strictly between 0 and 1")
        check_range(self.bottleneck_token_weight >= 0.0, f"{path}.bottleneck_token_weight",
                    self.bottleneck_token_weight, "a value >= 0")
        check_range(self.motion_weighting >= 0.0, f"{path}.motion_weighting", self.motion_weighting, "a value >= 0")
        check_range(self.motion_map_weight >= 0.0, f"{path}.motion_map_weight", self.motion_map_weight,
                    "a number >= 0 (0 = off)")
        check_range(self.motion_map_cells >= 0, f"{path}.motion_map_cells", self.motion_map_cells,
                    "an integer >= 0 (0 = one cell per patch)")
        check_range(self.motion_axes_weight >= 0.0, f"{path}.motion_axes_weight", self.motion_axes_weight,
                    "a number >= 0 (0 = off)")
        check_range(self.event_weight >= 0.0, f"{path}.event_weight", self.event_weight, "a number >= 0 (0 = off)")
        check_range(self.event_horizon >= 1, f"{path}.event_horizon", self.event_horizon, "an integer >= 1")
        check_range(self.future_weight >= 0.0, f"{path}.future_weight", self.future_weight, "a number >= 0 (0 = off)")
        check_range(self.future_horizon >= 1, f"{path}.future_horizon", self.future_horizon, "an integer >= 1")
        check_range(0 <= self.random_shift <= 16, f"{path}.random_shift", self.random_shift,
                    "a number of pixels from 0 (off) to 16")
        check_range(self.random_shift_space in ("pixels", "standardised"), f"{path}.random_shift_space",
                    self.random_shift_space, "'pixels' or 'standardised'")
        check_range(0.0 <= self.ema_decay <= 1.0, f"{path}.ema_decay", self.ema_decay, "a value in [0, 1]")
        check_schedule(self, path)
        check_range(self.warmup_epochs >= 0, f"{path}.warmup_epochs", self.warmup_epochs, "a number of epochs >= 0")
        check_range(self.probe_every >= 0, f"{path}.probe_every", self.probe_every,
                    "an integer >= 0 (0 = the probes only after the last epoch)")
        check_range(self.grad_clip > 0, f"{path}.grad_clip", self.grad_clip, "a positive max gradient norm")


class PooledPredictor(nn.Module):
    """MLP ``[B, D] -> [B, D]`` with ``depth`` hidden layers of width ``mlp_dim``."""

    def __init__(self, dim: int, depth: int = 2, mlp_dim: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for _ in range(max(1, depth)):
            layers += [nn.Linear(width, mlp_dim), nn.LayerNorm(mlp_dim), nn.GELU()]
            width = mlp_dim
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class TokenPredictor(nn.Module):
    """Transformer ``[B, N, D] -> [B, N, D]``: predicts the target tokens from the online tokens.

    The positional embedding is added again so that the mask positions stay identifiable after the
    encoder's final LayerNorm.
    """

    def __init__(self, dim: int, num_patches: int, depth: int = 2, heads: int = 4, mlp_dim: int = 256,
                 dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        grid = int(round(num_patches ** 0.5))
        assert grid * grid == num_patches, f"num_patches {num_patches} is not a square grid"
        self.register_buffer("pos_embed", sincos_2d(grid, dim))  # [1, N, D], fixed
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.inp(tokens) + self.pos_embed  # [B, N, D]
        for blk in self.blocks:
            x = blk(x)
        return self.out(self.norm(x))  # [B, N, D]


class BottleneckPredictor(nn.Module):
    """Decoder ``z [B, D] -> [B, N, D]`` (an MLP of the latent and each patch's position), and an
    optional :class:`TokenPredictor` for the auxiliary masked-token loss."""

    def __init__(self, dim: int, num_patches: int, depth: int = 2, heads: int = 4, mlp_dim: int = 256,
                 dropout: float = 0.0, with_tokens: bool = True):
        super().__init__()
        grid = int(round(num_patches ** 0.5))
        self.register_buffer("pos_embed", sincos_2d(grid, mlp_dim))  # [1, N, H], fixed
        self.inp = nn.Linear(dim, mlp_dim)
        self.hidden = nn.Sequential(nn.GELU(), nn.Linear(mlp_dim, mlp_dim), nn.GELU())
        self.out = nn.Linear(mlp_dim, dim)
        self.tokens = TokenPredictor(dim, num_patches, depth, heads, mlp_dim, dropout) if with_tokens else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.inp(z).unsqueeze(1) + self.pos_embed  # [B, N, H]
        return self.out(self.hidden(h))  # [B, N, D]


class FuturePredictor(nn.Module):
    """Decoder ``(z [B, D], actions [B, k]) -> [B, N, D]``: the tokens of the frame ``k`` steps later, an MLP of the
    latent, the one-hot actions taken in between and each patch's position."""

    def __init__(self, dim: int, num_patches: int, mlp_dim: int, num_actions: int, horizon: int):
        super().__init__()
        grid = int(round(num_patches ** 0.5))
        self.num_actions, self.horizon = num_actions, horizon
        self.register_buffer("pos_embed", sincos_2d(grid, mlp_dim))  # [1, N, H], fixed
        self.inp = nn.Linear(dim, mlp_dim)
        self.act = nn.Linear(horizon * num_actions, mlp_dim, bias=False)
        self.hidden = nn.Sequential(nn.GELU(), nn.Linear(mlp_dim, mlp_dim), nn.GELU())
        self.out = nn.Linear(mlp_dim, dim)

    def forward(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        assert actions.shape == (z.shape[0], self.horizon), f"actions {tuple(actions.shape)}, horizon {self.horizon}"
        a = F.one_hot(actions.long(), self.num_actions).flatten(1).to(z.dtype)  # [B, k*A]
        h = (self.inp(z) + self.act(a)).unsqueeze(1) + self.pos_embed  # [B, N, H]
        return self.out(self.hidden(h))  # [B, N, D]


def random_shift(obs: torch.Tensor, pad: int, *more: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, ...]:
    """Random-shift augmentation of ``obs [B, F, H, W]`` (uint8 or float): each sample is padded by ``pad`` pixels
    (edge pixels repeated) and cropped back to ``H x W`` at an offset drawn uniformly from ``0..2 * pad`` per axis,
    the same for all its ``F`` frames. Each tensor of ``more`` (``[B, ..., H, W]``, e.g. frames ``k`` steps later)
    is shifted by the same per-sample offsets. Returns the shifted tensors, ``obs`` first, with their dtypes."""
    if pad <= 0:
        return (obs, *more)
    B, H, W = obs.shape[0], obs.shape[-2], obs.shape[-1]
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(obs.device)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(obs.device)
    rows = (torch.arange(H, device=obs.device)[None, :] + dy[:, None])  # [B, H] rows of the padded frame
    cols = (torch.arange(W, device=obs.device)[None, :] + dx[:, None])  # [B, W]
    out = []
    for x in (obs, *more):
        flat = x.reshape(B, -1, H, W)
        padded = F.pad(flat.float(), (pad, pad, pad, pad), mode="replicate")  # [B, C, H + 2p, W + 2p]
        b = torch.arange(B, device=x.device)[:, None, None, None]
        c = torch.arange(flat.shape[1], device=x.device)[None, :, None, None]
        crop = padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # [B, C, H, W]
        out.append(crop.to(x.dtype).reshape(x.shape))  # exact for uint8: replicate padding only copies pixels
    return tuple(out)


def patch_motion(obs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Each patch's pixel motion ``[B, N]``: ``mean |f_t - f_{t-1}|`` over the stacked frames of ``obs``."""
    x = obs.float()
    motion = (x[:, 1:] - x[:, :-1]).abs().mean(dim=1, keepdim=True)  # [B, 1, H, W]
    return F.avg_pool2d(motion, patch_size).flatten(1)


def sample_motion_weights(obs: torch.Tensor, patch_size: int, strength: float) -> torch.Tensor:
    """Per-patch weights ``[B, N]`` with mean 1 in every sample: ``1 + strength * m / mean(m)`` of the patch's pixel
    motion, each frame normalised by its own mean (so a data-parallel rank's rows weigh as in the global batch)."""
    m = patch_motion(obs, patch_size)  # [B, N]
    w = 1.0 + strength * m / m.mean(dim=1, keepdim=True).clamp_min(1e-8)
    return w / w.mean(dim=1, keepdim=True)


def motion_weights(obs: torch.Tensor, patch_size: int, strength: float) -> torch.Tensor:
    """Per-patch weights ``[B, N]`` with mean 1: ``1 + strength * m / mean(m)`` of the patch's pixel motion
    ``m = mean |f_t - f_{t-1}|`` over the stacked frames of uint8 or float ``obs [B, F, H, W]``."""
    m = patch_motion(obs, patch_size)  # [B, N]
    w = 1.0 + strength * m / m.mean().clamp_min(1e-8)
    return w / w.mean()


def motion_map(obs: torch.Tensor, cell: int, eps: float = 1e-6) -> torch.Tensor:
    """Where the newest frame changed: ``|f_t - f_{t-1}|`` max-pooled over ``cell``-pixel cells (a patch by default) and
    normalised to a distribution ``[B, cells]`` (uniform for a still frame). Self-supervised: it needs no labels,
    and it is concentrated on the moving ball and paddle."""
    x = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()
    # max, not mean, per cell: a one-pixel ball counts as much as the wide paddle
    m = F.max_pool2d((x[:, -1:] - x[:, -2:-1]).abs(), cell).flatten(1) + eps  # [B, cells]
    return m / m.sum(dim=1, keepdim=True)


def motion_axes(obs: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the newest frame changed along each axis: ``|f_t - f_{t-1}|`` maxed over rows (the column profile
    ``[B, W]``) and over columns (the row profile ``[B, H]``), each normalised to a distribution (uniform for a still
    frame). Max, not mean: a one-pixel ball counts as much as the wide paddle."""
    x = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()
    d = (x[:, -1] - x[:, -2]).abs()  # [B, H, W]
    cols, rows = d.amax(dim=1) + eps, d.amax(dim=2) + eps
    return cols / cols.sum(dim=1, keepdim=True), rows / rows.sum(dim=1, keepdim=True)


class MaskedPredictionLoss(nn.Module):
    """L1 between prediction and target; with ``mask [B, N]`` the mean over masked tokens only."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` may also be float per-token weights ``[B, N]``."""
        assert pred.shape == target.shape, f"prediction {tuple(pred.shape)} vs target {tuple(target.shape)}"
        err = (pred - target).abs()
        if mask is None:
            return err.mean()
        assert mask.shape == pred.shape[:2], f"mask {tuple(mask.shape)} vs tokens {tuple(pred.shape)}"
        w = mask.to(err.dtype).unsqueeze(-1)  # [B, N, 1]
        return (err * w).sum() / (w.sum() * pred.shape[-1]).clamp_min(1.0)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * online`` for every parameter; buffers are copied."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, 1.0 - decay)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


class MaskedPredictionModel(nn.Module):
    """Online MaskedViT + EMA target MaskedViT + predictor, for ``target`` in {'pooled', 'tokens', 'bottleneck'}."""

    def __init__(self, encoder: MaskedViT, target: str = "tokens", masking_ratio: float = 0.4,
                 ema_decay: float = 0.996, predictor_depth: int = 2, predictor_heads: int = 4,
                 predictor_mlp_dim: int = 256, predictor_dropout: float = 0.0, bottleneck_token_weight: float = 1.0,
                 motion_weighting: float = 0.0, motion_map_weight: float = 0.0, motion_map_cells: int = 0,
                 event_weight: float = 0.0, event_horizon: int = 8, motion_axes_weight: float = 0.0,
                 future_weight: float = 0.0, future_horizon: int = 2, num_actions: int = 4, random_shift: int = 0,
                 random_shift_space: str = "pixels"):
        super().__init__()
        self.random_shift, self.random_shift_space = int(random_shift), random_shift_space
        if target not in ("pooled", "tokens", "bottleneck"):
            raise ValueError(f"target must be 'pooled', 'tokens' or 'bottleneck', got {target!r}")
        self.target_kind = target
        self.bottleneck_token_weight = float(bottleneck_token_weight)
        self.motion_weighting = float(motion_weighting)
        self.masking_ratio = masking_ratio
        self.ema_decay = ema_decay
        self.online = encoder
        self.target = copy.deepcopy(encoder)
        self.target.requires_grad_(False)
        self.target.eval()
        D = encoder.dim
        if target == "pooled":
            self.predictor: nn.Module = PooledPredictor(D, predictor_depth, predictor_mlp_dim)
        elif target == "bottleneck":
            self.predictor = BottleneckPredictor(D, encoder.num_patches, predictor_depth, predictor_heads,
                                                 predictor_mlp_dim, predictor_dropout,
                                                 with_tokens=self.bottleneck_token_weight > 0)
        else:
            self.predictor = TokenPredictor(D, encoder.num_patches, predictor_depth, predictor_heads,
                                            predictor_mlp_dim, predictor_dropout)
        self.loss_fn = MaskedPredictionLoss()
        self.motion_map_weight = float(motion_map_weight)
        # the motion map's cell size in pixels (one patch per cell unless motion_map_cells says otherwise)
        side = encoder.image_size
        cells = motion_map_cells or side // encoder.patch_size
        if side % cells:
            raise ValueError(f"motion_map_cells={motion_map_cells} must divide the {side}-pixel frame")
        self.motion_cell = side // cells
        if self.motion_map_weight > 0:
            # Lives in the predictor so that checkpoints (which save online, target, predictor) carry it.
            self.predictor.add_module("motion_head", nn.Linear(D, cells * cells))
        self.motion_axes_weight = float(motion_axes_weight)
        if self.motion_axes_weight > 0:  # logits over the frame's columns and rows (in the predictor: checkpointed)
            self.predictor.add_module("motion_axes_head", nn.Linear(D, 2 * side))
        self.event_weight, self.event_horizon = float(event_weight), int(event_horizon)
        if self.event_weight > 0:
            self.predictor.add_module("event_head", nn.Linear(D, 2))  # logits: life lost, point scored
        self.future_weight, self.future_horizon = float(future_weight), int(future_horizon)
        if self.future_weight > 0:
            self.predictor.add_module("future_head", FuturePredictor(D, encoder.num_patches, predictor_mlp_dim,
                                                                     num_actions, self.future_horizon))

    @classmethod
    def from_config(cls, encoder: MaskedViT, stage1: Stage1Config, predictor: PredictorConfig, num_actions: int = 4
                    ) -> MaskedPredictionModel:
        """The Stage-1 model of ``encoder`` (becomes the online encoder) with the objective of ``stage1`` and the
        predictor of ``predictor``."""
        return cls(encoder, target=stage1.target, masking_ratio=stage1.masking_ratio, ema_decay=stage1.ema_decay,
                   predictor_depth=predictor.depth, predictor_heads=predictor.heads,
                   predictor_mlp_dim=predictor.mlp_dim, predictor_dropout=predictor.dropout,
                   bottleneck_token_weight=stage1.bottleneck_token_weight, motion_weighting=stage1.motion_weighting,
                   motion_map_weight=stage1.motion_map_weight, motion_map_cells=stage1.motion_map_cells,
                   event_weight=stage1.event_weight, event_horizon=stage1.event_horizon,
                   motion_axes_weight=stage1.motion_axes_weight, future_weight=stage1.future_weight,
                   future_horizon=stage1.future_horizon, num_actions=num_actions, random_shift=stage1.random_shift,
                   random_shift_space=stage1.random_shift_space)

    def train(self, mode: bool = True) -> MaskedPredictionModel:
        super().train(mode)
        self.target.eval()  # the target never uses dropout
        return self

    def sample_mask(self, batch: int, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> torch.Tensor:
        return random_patch_mask(batch, self.online.num_patches, self.masking_ratio, device, generator)

    @torch.no_grad()
    def target_outputs(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target encoder on the full input: pooled ``[B, D]`` and layer-normed tokens ``[B, N, D]``."""
        pooled, tok = self.target(obs)
        return pooled, F.layer_norm(tok, tok.shape[-1:])

    def token_weights(self, obs: torch.Tensor) -> torch.Tensor | None:
        """The bottleneck target's per-token error weights ``[B, N]`` (mean 1 over the batch), or None."""
        if self.target_kind != "bottleneck" or self.motion_weighting <= 0 or obs.shape[1] <= 1:
            return None
        return motion_weights(obs, self.online.patch_size, self.motion_weighting)

    def augment(self, obs: torch.Tensor, future: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """A training batch with :func:`random_shift` applied (``random_shift`` pixels; unchanged when 0): ``obs``
        and, shifted alike, ``future["obs"]``. Drawn from torch's global generator, so every data-parallel rank
        draws the global batch's offsets alike before taking its rows."""
        if self.random_shift <= 0:
            return obs, future
        more = () if future is None else (future["obs"],)
        if self.random_shift_space == "standardised" and self.online.input_norm == "pixel":
            # shift (x - mean) / std and hand the encoder mean + std * that (floats on the /255 scale): the
            # standardisation inside the encoder gives back the shifted standardised frames
            mean, std = self.online.pixel_mean, self.online.pixel_std  # [1, 1, H, W]
            norm = [(x.float() / 255.0 - mean) / std if x.dtype == torch.uint8 else (x.float() - mean) / std
                    for x in (obs, *more)]
            shifted = [mean + std * x for x in random_shift(norm[0], self.random_shift, *norm[1:])]
        else:
            shifted = list(random_shift(obs, self.random_shift, *more))
        return shifted[0], (None if future is None else {**future, "obs": shifted[1]})

    @property
    def uses_events(self) -> bool:
        """Whether the loss reads the future-event targets (``events`` of :meth:`forward`)."""
        return self.event_weight > 0

    @property
    def uses_future(self) -> bool:
        """Whether the loss reads the frames ``future_horizon`` steps ahead (``future`` of :meth:`forward`)."""
        return self.future_weight > 0

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None,
                weights: torch.Tensor | None = None, events: torch.Tensor | None = None,
                future: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Loss and latents of one batch of uint8 ``[B, F, H, W]`` observations.

        ``events`` (``[B, 2]``, :meth:`envs.dataset.FrameStackDataset.events` at ``event_horizon``) are the targets
        of the event auxiliary; without them that term is left out. ``future``
        (:meth:`envs.dataset.FrameStackDataset.future` at ``future_horizon``: ``obs``, ``actions``, ``valid``) feeds
        the future-token auxiliary the same way.

        ``mask`` and ``weights`` (the bottleneck target's token weights) default to ones drawn / computed from this
        batch; a data-parallel rank passes its rows of those of the global batch, so that the mean of the ranks'
        losses is the loss of the global batch (experiments/distributed.py)."""
        if mask is None:
            mask = self.sample_mask(obs.shape[0], obs.device)
        t_pooled, t_tokens = self.target_outputs(obs)
        o_pooled, o_tokens = self.online(obs, mask)
        if self.target_kind == "pooled":
            pred = self.predictor(o_pooled)  # [B, D]
            loss = self.loss_fn(pred, t_pooled)
        elif self.target_kind == "bottleneck":
            if weights is None:
                weights = self.token_weights(obs)
            pred = self.predictor(o_pooled)  # all positions, from z alone
            if weights is None:
                loss = self.loss_fn(pred, t_tokens)
            else:  # the weights have mean 1 over the (global) batch: a plain mean keeps a rank's share additive
                loss = ((pred - t_tokens).abs() * weights.to(pred.dtype)[..., None]).mean()
            if self.predictor.tokens is not None:
                tw = mask if weights is None else mask * weights
                loss = loss + self.bottleneck_token_weight * self.loss_fn(self.predictor.tokens(o_tokens), t_tokens, tw)
        else:
            pred = self.predictor(o_tokens)  # [B, N, D]
            loss = self.loss_fn(pred, t_tokens, mask)
        out = {"jepa_loss": loss.detach(), "target_pooled": t_pooled, "online_pooled": o_pooled.detach()}
        if self.motion_map_weight > 0 and obs.shape[1] > 1:
            target_map = motion_map(obs, self.motion_cell)  # [B, cells], sums to 1
            logp = F.log_softmax(self.predictor.motion_head(o_pooled), dim=-1)  # [B, cells]
            aux = -(target_map * logp).sum(-1).mean()  # cross-entropy
            out["motion_map_loss"] = aux.detach()
            loss = loss + self.motion_map_weight * aux
        if self.motion_axes_weight > 0 and obs.shape[1] > 1:
            cols, rows = motion_axes(obs)  # [B, W], [B, H]
            logits = self.predictor.motion_axes_head(o_pooled)  # [B, W + H]
            W = cols.shape[1]
            aux = -(cols * F.log_softmax(logits[:, :W], -1)).sum(-1).mean() \
                - (rows * F.log_softmax(logits[:, W:], -1)).sum(-1).mean()
            out["motion_axes_loss"] = aux.detach()
            loss = loss + self.motion_axes_weight * aux
        if self.event_weight > 0 and events is not None:
            logits = self.predictor.event_head(o_pooled)  # [B, 2]
            ev = F.binary_cross_entropy_with_logits(logits, events.to(logits.dtype))
            out["event_loss"] = ev.detach()
            loss = loss + self.event_weight * ev
        if self.future_weight > 0 and future is not None:
            _, tgt = self.target_outputs(future["obs"])  # [B, N, D]
            pred = self.predictor.future_head(o_pooled, future["actions"])  # [B, N, D]
            err = (pred - tgt).abs().mean(-1)  # [B, N]
            if self.motion_weighting > 0 and future["obs"].shape[1] > 1:
                err = err * sample_motion_weights(future["obs"], self.online.patch_size, self.motion_weighting)
            # frames without k later steps in their game count as 0: a plain mean over the batch keeps a rank's share
            # additive (experiments/distributed.py)
            fut = (err.mean(-1) * future["valid"].to(err.dtype)).mean()
            out["future_loss"] = fut.detach()
            loss = loss + self.future_weight * fut
        out["loss"] = loss
        return out

    @torch.no_grad()
    def update_target(self) -> None:
        ema_update(self.target, self.online, self.ema_decay)


def load_encoder(path: str | Path, device: str | torch.device = "cpu", which: str = "target") -> nn.Module:
    """The Stage-1 encoder of a checkpoint, in eval mode, frozen: uint8 ``[B, 4, 64, 64]`` -> float ``[B, D]``.

    Args:
        path: a ``stage1`` checkpoint (``best.pt`` or ``latest.pt`` of a ``pretrain --stage 1`` run).
        device: where to put the module.
        which: ``"target"`` (the EMA encoder, used downstream) or ``"online"``.

    Raises:
        UserError: the file is missing, corrupt, not a stage-1 checkpoint, or does not fit.
    """
    from worldmodel.checkpoint import load_checkpoint, rebuild
    from worldmodel.encoder import PooledEncoder

    vit = rebuild(load_checkpoint(path, kind="stage1"), path, MaskedViT, "encoder_kwargs", which, "encoder", stage=1)
    enc = PooledEncoder(vit).to(device)
    enc.requires_grad_(False)
    return enc.eval()


@torch.no_grad()
def validation_losses(model: MaskedPredictionModel, dataset: Any, seed: int, max_samples: int | None = None,
                                      batch_size: int = 256) -> dict[str, float]:
    """Mean losses in eval mode with masks from a fixed seed (comparable across epochs and splits):
    ``loss`` (the training objective), ``jepa_loss`` (the masked-latent L1 alone) and, when the
    auxiliary losses are on, ``motion_map_loss``, ``motion_axes_loss``, ``event_loss`` and ``future_loss``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    idx = np.arange(n) if n == len(dataset) else np.sort(np.random.default_rng(seed).choice(len(dataset), n, False))
    totals: dict[str, float] = {}
    count = 0
    for start in range(0, n, batch_size):
        obs = dataset.batch(idx[start:start + batch_size])["obs"].to(device)
        mask = model.sample_mask(obs.shape[0], generator=gen).to(device)  # drawn on the CPU: the same on any device
        events = (dataset.events(idx[start:start + batch_size], model.event_horizon).to(device)
                  if model.uses_events else None)
        future = ({k: v.to(device) for k, v in dataset.future(idx[start:start + batch_size],
                                                               model.future_horizon).items()}
                  if model.uses_future else None)
        out = model(obs, mask, None, events, future)
        for key in ("loss", "jepa_loss", "motion_map_loss", "motion_axes_loss", "event_loss", "future_loss"):
            if key in out:
                totals[key] = totals.get(key, 0.0) + float(out[key]) * obs.shape[0]
        count += obs.shape[0]
    model.train(was_training)
    return {k: v / max(1, count) for k, v in totals.items()}

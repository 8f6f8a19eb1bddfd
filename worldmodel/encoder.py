"""``MaskedViT``: the Stage-1 vision transformer over stacked Breakout frames, with patch masking.

uint8 ``[B, F, H, W]`` -> ``/255`` -> non-overlapping ``P x P`` patches (a strided conv) -> tokens
``[B, N, D]`` -> pre-norm transformer blocks (``F.scaled_dot_product_attention``) -> final LayerNorm.
The latent ``z [B, D]`` is read out of the output tokens by ``readout``:

* ``mean``: the mean of the tokens (the seed). Averaging mixes all patches, so "where" an object
  is (paddle, ball) is hard to read linearly from it.
* ``spatial``: ``Linear(N * k -> D)`` of the flattened per-patch projections ``Linear(D -> k)`` of
  the tokens, which keeps one slot per patch; trained by the ``bottleneck`` stage-1 objective.
* ``keypoints``: spatial soft-argmax (Levine et al. 2016, deep spatial autoencoders). Per-patch
  scores ``Linear(D -> K)`` (K = ``readout_channels``) divided by a learnable temperature, softmax
  over the N patches per channel; each channel gives the expected patch-centre ``(x, y)`` in
  ``[-1, 1]`` and a strength (its largest softmax probability). With ``2K == D`` the latent *is* the
  ``K`` coordinate pairs (no projection, so a keypoint on the ball is a linear readout of the ball);
  otherwise it is ``Linear(3K -> D)`` of the coordinates and strengths.

With ``input_norm="pixel"`` each pixel is standardised by the mean and standard deviation of that
pixel over the training frames (``(x - mean) / max(std, input_std_floor)``, one map shared by the
stacked frames, fitted once before Stage 1 by :func:`fit_input_stats` and stored as buffers in the
checkpoint). The static background (walls, score digits, bricks that are rarely hit) then maps to
~0 and the places the ball and paddle visit carry the large values. With it (and the motion-map
auxiliary loss of Stage 1) the ball becomes linearly readable from the latent; without it no
Stage-1 objective we tried got there (README, Stage 1).

With ``frame_diffs`` the patch embedding also sees the ``F - 1`` temporal differences
``f_t - f_{t-1}`` of the stacked frames (a fixed preprocessing), which makes moving objects (the
~1-pixel ball) salient against the static bricks.

Positions are fixed 2-D sine-cosine embeddings (as in MAE, I-JEPA and V-JEPA): they vary smoothly
with the patch's row and column, which keeps "where" linearly readable from averaged tokens
(learned embeddings start random, and the mean-pooled latent then mixes positions arbitrarily).

Masking replaces the patch embeddings of the chosen patches by one learnable mask token *before*
the positional embedding is added, so the encoder knows where each masked patch sits but not what
it holds. Exactly ``round(ratio * N)`` patches are masked per sample, chosen by an argsort of
uniform noise (vectorised, no per-sample loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from envs.errors import check_range


@dataclass
class VitConfig:
    """The encoder's transformer and readout (config section ``models.encoder.params.vit``)."""

    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads
    mlp_dim: int = 512  # hidden width of each block's MLP
    dropout: float = 0.2  # dropout in attention output and MLP
    # latent = mean of tokens, Linear(N*k -> D) of per-patch k dims, or soft-argmax keypoints (worldmodel/encoder.py)
    readout: Literal["mean", "spatial", "keypoints"] = "spatial"
    readout_channels: int = 8  # k: per-patch channels of the spatial readout; K keypoints of the keypoint readout
    frame_diffs: bool = True  # also feed the temporal differences f_t - f_{t-1} to the patch embedding
    keypoint_temperature: float = 1.0  # initial (then learned) softmax temperature of the keypoint readout
    # "pixel": standardise each pixel by its mean/std over the training frames (fitted before stage 1)
    input_norm: Literal["none", "pixel"] = "pixel"
    input_std_floor: float = 0.1  # lower bound of the per-pixel std (pixels that never change)

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``; raises :class:`envs.errors.UserError`.

        ``heads`` must also divide ``models.shared_latent_dim``: ``experiments.config.validate`` checks that."""
        check_range(self.depth >= 1, f"{path}.depth", self.depth, "an integer >= 1")
        check_range(self.mlp_dim >= 1, f"{path}.mlp_dim", self.mlp_dim, "an integer >= 1")
        check_range(0.0 <= self.dropout < 1.0, f"{path}.dropout", self.dropout, "a value in [0, 1)")
        check_range(self.readout_channels >= 1, f"{path}.readout_channels", self.readout_channels, "an integer >= 1")
        check_range(self.keypoint_temperature > 0, f"{path}.keypoint_temperature", self.keypoint_temperature,
                    "a value > 0")
        check_range(self.input_norm in ("none", "pixel"), f"{path}.input_norm", self.input_norm, "'none' or 'pixel'")
        check_range(self.input_std_floor > 0, f"{path}.input_std_floor", self.input_std_floor, "a value > 0")


@dataclass
class EncoderParams:
    """The seed's nesting ``models.encoder.params``."""

    vit: VitConfig = field(default_factory=VitConfig)

    def validate(self, path: str) -> None:
        """Range checks of ``{path}.vit``."""
        self.vit.validate(f"{path}.vit")


@dataclass
class EncoderConfig:
    """The Stage-1 encoder (config section ``models.encoder``; the seed's nesting ``params.vit``)."""

    params: EncoderParams = field(default_factory=EncoderParams)

    def validate(self, path: str) -> None:
        """Range checks of ``{path}.params.vit``."""
        self.params.validate(f"{path}.params")


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} must be divisible by heads {heads}"
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        # [3, B, h, N, d] unbound (its backward stacks the gradients; indexing fills a zero tensor per part)
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, N, d]
        out = out.transpose(1, 2).reshape(B, N, D)  # [B, N, D]
        return self.drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional embedding ``[1, grid * grid, dim]`` (half the channels per axis)."""
    assert dim % 4 == 0, f"sin-cos positional embedding needs dim divisible by 4, got {dim}"
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))  # [dim/4]
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angle = coord[:, None] * omega[None, :]  # [N, dim/4]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float().unsqueeze(0)  # [1, N, dim]


def random_patch_mask(batch: int, num_patches: int, ratio: float, device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask ``[B, N]`` with exactly ``round(ratio * N)`` True (masked) entries per row."""
    n_mask = int(round(ratio * num_patches))
    noise = torch.rand(batch, num_patches, device=device, generator=generator)  # [B, N]
    rank = noise.argsort(dim=1).argsort(dim=1)  # [B, N]: rank of each patch's noise, a random permutation
    return rank < n_mask


class MaskedViT(nn.Module):
    """ViT encoder of uint8 frame stacks with optional patch masking.

    Args:
        image_size: H = W of the input.
        in_channels: stacked frames F.
        patch_size: P; N = (H / P)^2 tokens.
        dim: D, token and latent width.
        depth, heads, mlp_dim, dropout: transformer blocks.
        readout: ``"mean"``, ``"spatial"`` or ``"keypoints"`` (see the module docstring).
        readout_channels: k, per-patch channels of the spatial readout; K, keypoints of the keypoint readout.
        frame_diffs: also embed the temporal differences of the frames.
        keypoint_temperature: initial softmax temperature of the keypoint readout (learned from there).
        input_norm: ``"none"`` or ``"pixel"`` (per-pixel standardisation, see the module docstring).
        input_std_floor: lower bound of the per-pixel std of ``input_norm="pixel"``.

    ``kwargs`` holds these arguments: checkpoints store it and rebuild the encoder with ``MaskedViT(**kwargs)``.
    """

    def __init__(self, image_size: int = 64, in_channels: int = 4, patch_size: int = 8, dim: int = 64,
                 depth: int = 4, heads: int = 4, mlp_dim: int = 512, dropout: float = 0.2, readout: str = "mean",
                 readout_channels: int = 8, frame_diffs: bool = False, keypoint_temperature: float = 1.0,
                 input_norm: str = "none", input_std_floor: float = 0.1):
        super().__init__()
        self.kwargs = {"image_size": image_size, "in_channels": in_channels, "patch_size": patch_size, "dim": dim,
                       "depth": depth, "heads": heads, "mlp_dim": mlp_dim, "dropout": dropout, "readout": readout,
                       "readout_channels": readout_channels, "frame_diffs": frame_diffs,
                       "keypoint_temperature": keypoint_temperature, "input_norm": input_norm,
                       "input_std_floor": input_std_floor}  # for checkpoints
        assert input_norm in ("none", "pixel"), f"input_norm must be 'none' or 'pixel', got {input_norm!r}"
        assert input_std_floor > 0, f"input_std_floor must be > 0, got {input_std_floor}"
        assert image_size % patch_size == 0, f"image size {image_size} not divisible by patch {patch_size}"
        assert readout in ("mean", "spatial", "keypoints"), (
            f"readout must be 'mean', 'spatial' or 'keypoints', got {readout!r}")
        self.image_size, self.in_channels, self.patch_size, self.dim = image_size, in_channels, patch_size, dim
        self.readout, self.readout_channels, self.frame_diffs = readout, int(readout_channels), bool(frame_diffs)
        self.num_patches = (image_size // patch_size) ** 2
        self.input_norm, self.input_std_floor = input_norm, float(input_std_floor)
        if input_norm == "pixel":  # fitted by fit_input_stats; identity until then
            self.register_buffer("pixel_mean", torch.zeros(1, 1, image_size, image_size))
            self.register_buffer("pixel_std", torch.ones(1, 1, image_size, image_size))
        embed_in = in_channels + (in_channels - 1 if frame_diffs else 0)
        self.patch_embed = nn.Conv2d(embed_in, dim, kernel_size=patch_size, stride=patch_size)
        if readout == "spatial":
            self.readout_proj = nn.Linear(dim, self.readout_channels)  # per patch: D -> k
            self.readout_out = nn.Linear(self.num_patches * self.readout_channels, dim)  # N * k -> D
        elif readout == "keypoints":
            K, grid = self.readout_channels, image_size // patch_size
            self.readout_proj = nn.Linear(dim, K)  # per patch: D -> K scores
            assert keypoint_temperature > 0, f"keypoint_temperature must be > 0, got {keypoint_temperature}"
            # softmax temperature exp(.), learned from its initial value
            self.log_temperature = nn.Parameter(torch.tensor(math.log(keypoint_temperature)))
            centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2.0 - 1.0  # [G] in (-1, 1)
            ys, xs = torch.meshgrid(centres, centres, indexing="ij")
            self.register_buffer("kp_grid", torch.stack([xs.flatten(), ys.flatten()], dim=1))  # [N, 2]: (x, y)
            self.readout_out = None if 2 * K == dim else nn.Linear(3 * K, dim)  # 3K -> D unless xy fill D
        self.register_buffer("pos_embed", sincos_2d(image_size // patch_size, dim))  # [1, N, D], fixed
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def from_config(cls, vit: VitConfig, *, image_size: int, in_channels: int, patch_size: int, dim: int
                    ) -> MaskedViT:
        """A MaskedViT with the transformer and readout of ``vit``, over ``in_channels`` stacked square frames of
        ``image_size`` cut into ``patch_size`` patches, with tokens and latent of width ``dim``."""
        return cls(image_size=image_size, in_channels=in_channels, patch_size=patch_size, dim=dim, depth=vit.depth,
                   heads=vit.heads, mlp_dim=vit.mlp_dim, dropout=vit.dropout, readout=vit.readout,
                   readout_channels=vit.readout_channels, frame_diffs=vit.frame_diffs,
                   keypoint_temperature=vit.keypoint_temperature, input_norm=vit.input_norm,
                   input_std_floor=vit.input_std_floor)

    @property
    def latent_dim(self) -> int:
        return self.dim

    def tokens(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 or float ``[B, F, H, W]`` (and optional bool mask ``[B, N]``) -> tokens ``[B, N, D]``."""
        assert obs.ndim == 4 and obs.shape[1:] == (self.in_channels, self.image_size, self.image_size), (
            f"MaskedViT expects [B, {self.in_channels}, {self.image_size}, {self.image_size}], got {tuple(obs.shape)}")
        x = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()
        if self.input_norm == "pixel":
            x = (x - self.pixel_mean) / self.pixel_std  # [B, F, H, W]
        if self.frame_diffs:
            x = torch.cat([x, x[:, 1:] - x[:, :-1]], dim=1)  # [B, 2F - 1, H, W]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        if mask is not None:
            assert mask.shape == x.shape[:2], f"mask {tuple(mask.shape)} does not match tokens {tuple(x.shape[:2])}"
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)  # [B, N, D]
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)  # [B, N, D]

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(latent [B, D], tokens [B, N, D])``; the latent is the configured readout."""
        tok = self.tokens(obs, mask)
        return self.read(tok), tok

    def read(self, tok: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, N, D]`` -> latent ``[B, D]``."""
        if self.readout == "mean":
            return tok.mean(dim=1)
        if self.readout == "keypoints":
            return self.keypoint_features(tok)
        return self.readout_out(self.readout_proj(tok).flatten(1))  # [B, N, k] -> [B, N * k] -> [B, D]


    def keypoint_attention(self, tok: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, N, D]`` -> softmax over patches ``[B, K, N]`` of each keypoint channel."""
        scores = self.readout_proj(tok) / self.log_temperature.exp()  # [B, N, K]
        return scores.softmax(dim=1).transpose(1, 2)  # [B, K, N]

    def keypoint_features(self, tok: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, N, D]`` -> latent ``[B, D]`` of the keypoint readout."""
        attn = self.keypoint_attention(tok)  # [B, K, N]
        xy = attn @ self.kp_grid  # [B, K, 2]: expected (x, y) in [-1, 1]
        if self.readout_out is None:
            return xy.flatten(1)  # [B, 2K] = [B, D]
        strength = attn.amax(dim=2, keepdim=True)  # [B, K, 1]
        return self.readout_out(torch.cat([xy, strength], dim=2).flatten(1))  # [B, 3K] -> [B, D]


@torch.no_grad()
def fit_input_stats(vit: MaskedViT, frames: torch.Tensor) -> None:
    """Set the per-pixel standardisation of a ``input_norm="pixel"`` encoder from uint8 frames ``[n, F, H, W]``.

    Mean and std are taken over the samples and the stacked frames (one ``[H, W]`` map); the std is
    floored at ``input_std_floor`` so that pixels that never change do not divide by zero.
    """
    if vit.input_norm != "pixel":
        return
    x = frames.float() / 255.0
    vit.pixel_mean.copy_(x.mean(dim=(0, 1), keepdim=True)[:1].to(vit.pixel_mean))
    vit.pixel_std.copy_(x.std(dim=(0, 1), keepdim=True)[:1].clamp_min(vit.input_std_floor).to(vit.pixel_std))


class PooledEncoder(nn.Module):
    """A MaskedViT seen from downstream: uint8 ``[B, F, H, W]`` -> pooled latent ``[B, D]``."""

    def __init__(self, vit: MaskedViT):
        super().__init__()
        self.vit = vit
        self.latent_dim = vit.dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.vit(obs)[0]


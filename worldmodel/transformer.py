"""``WorldModelTransformer``: the Stage-2 action-conditioned causal transformer over latent sequences.

Step ``t`` of a sequence reads the token ``x_t = W_z z_t + E[a_t]`` (the latent and the action taken
in it) and, through causal attention over the steps ``<= t``, predicts

* ``z_{t+1} = z_t + delta_t`` (a residual: the model learns what changes, copy-last is its start),
* the reward ``r_t`` of taking ``a_t`` (in symlog units; :func:`symexp` maps back to game points),
* the continuation logit of step ``t``: ``sigmoid(logit) = P(no life is lost by a_t)``.

Time enters as a learned per-layer, per-head attention bias indexed by the distance between two
steps (0 .. ``max_len - 1``), not as an absolute position embedding. An absolute embedding would
change meaning every time the window slides, so each imagined step beyond ``max_len`` would have to
recompute the whole window; with distance biases the keys and values of past steps stay valid, and
:meth:`WorldModelTransformer.imagine` rolls out any horizon with a KV cache over a sliding window of
the last ``max_len`` steps (exactly the context length it was trained on), one token per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.errors import check_range


@dataclass
class WorldModelNetConfig:
    """The Stage-2 network (config section ``models.world_model``)."""

    depth: int = 4  # causal transformer blocks of WorldModelTransformer
    heads: int = 4
    mlp_dim: int = 512
    dropout: float = 0.1
    hidden_dim: int = 128  # model width (latents and action embeddings are projected to it)
    # The reward head: a categorical over this many bins of symlog(reward), trained with a two-hot loss
    # (DreamerV3), so that rare points are a class of their own instead of being averaged away by a regression;
    # 0 = the seed's scalar head (symlog MSE). Bins span [-reward_range, +reward_range] in symlog units.
    reward_bins: int = 41
    reward_range: float = 5.0  # symlog(147 points)

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``; raises :class:`envs.errors.UserError`."""
        check_range(self.depth >= 1, f"{path}.depth", self.depth, "an integer >= 1")
        check_range(self.mlp_dim >= 1, f"{path}.mlp_dim", self.mlp_dim, "an integer >= 1")
        check_range(self.hidden_dim >= 1, f"{path}.hidden_dim", self.hidden_dim, "an integer >= 1")
        check_range(0.0 <= self.dropout < 1.0, f"{path}.dropout", self.dropout, "a value in [0, 1)")
        check_range(self.heads >= 1 and self.hidden_dim % self.heads == 0, f"{path}.heads", self.heads,
                    f"a divisor of {path}.hidden_dim ({self.hidden_dim})")
        check_range(self.reward_bins == 0 or (self.reward_bins >= 3 and self.reward_bins % 2 == 1),
                    f"{path}.reward_bins", self.reward_bins,
                    "0 (scalar MSE head) or an odd integer >= 3 (so that 0 points is a bin of its own)")
        check_range(self.reward_range > 0, f"{path}.reward_range", self.reward_range,
                    "a positive number (symlog units)")


def twohot(x: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Two-hot encoding ``[..., K]`` of values ``x [...]`` over the increasing bin centres ``support [K]``: the
    weight is split between the two nearest bins so that the expectation over the bins is ``x`` (clamped to the
    support's range)."""
    K = support.numel()
    x = x.clamp(float(support[0]), float(support[-1]))
    hi = torch.searchsorted(support, x.contiguous(), right=False).clamp(1, K - 1)  # first bin >= x
    lo = hi - 1
    s_lo, s_hi = support[lo], support[hi]
    w_hi = ((x - s_lo) / (s_hi - s_lo)).clamp(0.0, 1.0)
    out = torch.zeros(*x.shape, K, dtype=x.dtype, device=x.device)
    out.scatter_(-1, lo[..., None], (1.0 - w_hi)[..., None])
    out.scatter_add_(-1, hi[..., None], w_hi[..., None])
    return out


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class CausalBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)) with a time-distance bias, then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        assert dim % heads == 0, f"hidden_dim {dim} must be divisible by heads {heads}"
        self.heads, self.head_dim = heads, dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[B, T, C]``, bias ``[heads, T, P + T]`` (``-inf`` where a query may not look) -> ``[B, T, C]`` and
        this block's keys and values ``[B, h, P + T, d]``. ``past``: keys and values of ``P`` earlier steps that the
        new ones attend to (a differentiable cache: the rollout loss feeds one step at a time)."""
        B, T, C = x.shape
        # unbind, not indexing: its backward stacks the three gradients instead of filling a zero tensor per part
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, h, T, d]
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.mlp(self.norm2(x))), k, v

    def step(self, x: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, t: int, start: int,
             bias: torch.Tensor) -> torch.Tensor:
        """One new step (inference: no dropout). x ``[B, 1, C]``; ``k_buf``/``v_buf`` ``[B, h, T_max, d]``: this
        block's keys and values, written for steps ``< t``; this step's are written at ``t`` and it attends to
        steps ``start .. t`` with the distance bias ``bias [h, t - start + 1]``. Returns ``[B, 1, C]``.

        Written with functional calls on the weights and an explicit single-query attention
        (elementwise products over at most ``max_len`` keys): at planning batch sizes the per-call
        overhead of modules, of ``scaled_dot_product_attention``'s batched matmuls and of growing
        the cache with ``cat`` is a large share of the step's time (``benchmarks/bench_planner.py``)."""
        B, _, C = x.shape
        n1, n2, fc1, fc2 = self.norm1, self.norm2, self.mlp[0], self.mlp[3]
        y = F.layer_norm(x, (C,), n1.weight, n1.bias, n1.eps)
        qkv = F.linear(y, self.qkv.weight, self.qkv.bias).view(B, 3, self.heads, self.head_dim)  # T=1
        k_buf[:, :, t] = qkv[:, 1]
        v_buf[:, :, t] = qkv[:, 2]
        k, v = k_buf[:, :, start:t + 1], v_buf[:, :, start:t + 1]  # [B, h, n, d]
        scores = (qkv[:, 0, :, None] * k).sum(-1) * self.head_dim ** -0.5 + bias  # [B, h, n]
        att = (scores.softmax(-1)[..., None] * v).sum(2)  # [B, h, d]
        x = x + F.linear(att.reshape(B, 1, C), self.proj.weight, self.proj.bias)
        y = F.layer_norm(x, (C,), n2.weight, n2.bias, n2.eps)
        return x + F.linear(F.gelu(F.linear(y, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)


class KVRollout:
    """Step-by-step inference state of a :class:`WorldModelTransformer`: per-block key/value buffers for
    up to ``max_steps`` steps (preallocated: no copy per step) and a sliding window of the last
    ``max_len`` steps, the context length the model was trained on. Step ``t`` attends to steps
    ``max(0, t - max_len + 1) .. t`` with the learned bias of each distance.

    ``WorldModelTransformer.imagine`` (actions known in advance) and ``WorldModel.imagine_policy``
    (actions chosen from each imagined latent) both run on it, so for the same actions they agree.
    Memory is ``2 * depth * B * heads * max_steps * head_dim`` floats (the whole horizon is kept;
    each step reads only its window): 3.5 MB for 64 candidates x 27 steps of the quick model.
    """

    def __init__(self, model: WorldModelTransformer, batch: int, max_steps: int, like: torch.Tensor):
        blk = model.blocks[0]
        shape = (len(model.blocks), batch, blk.heads, max_steps, blk.head_dim)
        self.model = model
        self.k = like.new_empty(shape)  # [L, B, h, T_max, d]
        self.v = like.new_empty(shape)
        self.rev_bias = model.time_bias.flip(-1)  # [L, h, W]: distance W-1 ... 0
        self.t = 0

    def expand(self, batch: int, max_steps: int) -> KVRollout:
        """A new state for ``batch`` rollouts that all continue this batch-1 state (e.g. a real history
        prefilled once and shared by every CEM candidate), with room for ``max_steps`` steps in all."""
        assert self.k.shape[1] == 1 and max_steps >= self.t, "expand() continues a batch-1 state"
        out = KVRollout(self.model, batch, max_steps, self.k)
        out.k[:, :, :, :self.t] = self.k[:, :, :, :self.t]  # broadcast over the batch
        out.v[:, :, :, :self.t] = self.v[:, :, :, :self.t]
        out.t = self.t
        return out

    def prefill(self, context: torch.Tensor, context_actions: torch.Tensor, batched: bool = False) -> None:
        """Feed real history: latents ``[B, K, D]`` and the actions taken in them ``[B, K]`` (outputs unused).

        ``batched``: into an empty state, all K steps in one causal pass per block (what the actor-critic's
        imagination after real history uses: one call instead of K); the keys and values equal the step-by-step
        ones up to float rounding. Otherwise, and always for a state that holds steps or a history longer than the
        window, one :meth:`step` per real step (CEM's history, whose decisions stay bit for bit as before)."""
        B, K = context_actions.shape
        assert context.shape[:2] == (B, K), f"context {tuple(context.shape)} and actions {(B, K)} disagree"
        m = self.model
        if batched and self.t == 0 and 0 < K <= m.max_len and not m.training:
            x = m.embed(context, context_actions)  # [B, K, C]
            for i, (blk, b) in enumerate(zip(m.blocks, m.causal_bias(K))):
                x, k, v = blk(x, b)  # k, v [B, h, K, d]
                self.k[i, :, :, :K] = k
                self.v[i, :, :, :K] = v
            self.t = K
            return
        emb = m.a_in(context_actions)  # [B, K, C]
        for k in range(K):
            self.step(context[:, k:k + 1], emb[:, k:k + 1])

    def step(self, z: torch.Tensor, a_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feed latent ``z [B, 1, D]`` with the action embedding ``a_emb [B, 1, C]``; returns the next latent
        ``[B, 1, D]``, reward ``[B, 1]`` (symlog) and continue logit ``[B, 1]``."""
        m, t = self.model, self.t
        W = m.max_len
        start = max(0, t - W + 1)
        bias = self.rev_bias[:, :, W - 1 - (t - start):]  # [L, h, n]: distances t-start ... 0
        x = m.z_in((z - m.z_mean) / m.z_std) + a_emb  # [B, 1, C]
        for i, blk in enumerate(m.blocks):
            x = blk.step(x, self.k[i], self.v[i], t, start, bias[i])
        self.t = t + 1
        return m._heads(x, z)


class WorldModelTransformer(nn.Module):
    """Causal transformer ``(z [B, T, D], a [B, T]) -> (z_next [B, T, D], reward [B, T], continue_logit [B, T])``.

    Args:
        latent_dim: D, the Stage-1 latent size.
        num_actions: size of the action set (Breakout: 4).
        hidden_dim, depth, heads, mlp_dim, dropout: the transformer.
        max_len: context window in steps (Stage-2 ``sequence_length``); longer inputs are refused
            by :meth:`forward`, :meth:`imagine` slides a window of this length.
    """

    def __init__(self, latent_dim: int, num_actions: int = 4, hidden_dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_dim: int = 512, dropout: float = 0.1, max_len: int = 8, reward_bins: int = 0,
                 reward_range: float = 5.0):
        super().__init__()
        self.kwargs = {"latent_dim": latent_dim, "num_actions": num_actions, "hidden_dim": hidden_dim, "depth": depth,
                       "heads": heads, "mlp_dim": mlp_dim, "dropout": dropout, "max_len": max_len,
                       "reward_bins": reward_bins, "reward_range": reward_range}  # for checkpoints
        self.latent_dim, self.num_actions, self.max_len = latent_dim, num_actions, max_len
        self.reward_bins = reward_bins  # 0: scalar symlog reward; K: logits over K symlog bins
        self.heads = heads
        self.z_in = nn.Linear(latent_dim, hidden_dim)
        self.a_in = nn.Embedding(num_actions, hidden_dim)
        self.time_bias = nn.Parameter(torch.zeros(depth, heads, max_len))  # [L, h, distance]
        self.blocks = nn.ModuleList([CausalBlock(hidden_dim, heads, mlp_dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden_dim)
        R = max(1, reward_bins)
        self.head = nn.Linear(hidden_dim, latent_dim + R + 1)  # [delta z | reward (R) | continue logit]
        nn.init.normal_(self.a_in.weight, std=0.02)
        with torch.no_grad():  # start as copy-last with a confident "continue": training moves away from it
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            self.head.bias[-1] = 3.0
            if reward_bins:  # and as a confident "no reward": P(0 points) = 0.9 whatever the input
                self.head.weight[latent_dim:latent_dim + R].zero_()
                self.head.bias[latent_dim + R // 2] = float(np.log(9.0 * (R - 1)))
        if reward_bins:
            self.register_buffer("reward_support", torch.linspace(-reward_range, reward_range, reward_bins),
                                 persistent=False)
        dist = torch.arange(max_len)[:, None] - torch.arange(max_len)[None, :]  # [T, T]: i - j
        self.register_buffer("_dist", dist, persistent=False)
        # Latent statistics of the training data (set by set_normalization, saved with the weights): inputs are
        # standardised and the predicted change is in units of the typical one-step change of each dimension,
        # so the network works at scale ~1 whatever the encoder's latent scale.
        self.register_buffer("z_mean", torch.zeros(latent_dim))
        self.register_buffer("z_std", torch.ones(latent_dim))
        self.register_buffer("dz_std", torch.ones(latent_dim))

    @classmethod
    def from_config(cls, net: WorldModelNetConfig, *, latent_dim: int, num_actions: int, max_len: int
                    ) -> WorldModelTransformer:
        """The network of ``net`` over latents of size ``latent_dim``, ``num_actions`` actions and a context window
        of ``max_len`` steps."""
        return cls(latent_dim=latent_dim, num_actions=num_actions, hidden_dim=net.hidden_dim, depth=net.depth,
                   heads=net.heads, mlp_dim=net.mlp_dim, dropout=net.dropout, max_len=max_len,
                   reward_bins=net.reward_bins, reward_range=net.reward_range)

    @torch.no_grad()
    def set_normalization(self, z: torch.Tensor, z_next: torch.Tensor) -> None:
        """Set the latent statistics from training latents ``z [N, D]`` and their successors ``z_next [N, D]``."""
        self.z_mean.copy_(z.mean(0))
        self.z_std.copy_(z.std(0).clamp_min(1e-6))
        self.dz_std.copy_((z_next - z).std(0).clamp_min(1e-6))

    def embed(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, T, C]`` of latents ``[B, T, D]`` and actions ``[B, T]``."""
        return self.z_in((z - self.z_mean) / self.z_std) + self.a_in(actions)

    def causal_bias(self, T: int) -> torch.Tensor:
        """``[L, h, T, T]``: the learned bias of distance ``i - j`` where ``j <= i``, ``-inf`` elsewhere."""
        dist = self._dist[:T, :T]
        bias = self.time_bias[:, :, dist.clamp_min(0)]  # [L, h, T, T]
        return bias.masked_fill(dist < 0, float("-inf"))

    def _heads(self, h: torch.Tensor, z: torch.Tensor, reward_logits: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.head(self.norm(h))  # [..., D + R + 1]
        D, R = self.latent_dim, max(1, self.reward_bins)
        r = out[..., D:D + R]
        if not self.reward_bins:
            r = r[..., 0]
        elif not reward_logits:  # the expected symlog reward over the bins
            r = (torch.softmax(r, -1) * self.reward_support).sum(-1)
        return z + out[..., :D] * self.dz_std, r, out[..., D + R]

    def forward(self, z: torch.Tensor, actions: torch.Tensor, reward_logits: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced pass: z ``[B, T, D]``, actions long ``[B, T]`` -> z_next ``[B, T, D]``, reward
        ``[B, T]`` (symlog; with ``reward_logits`` and a binned head, its logits ``[B, T, K]``), continue logit
        ``[B, T]``; output ``t`` depends on inputs ``<= t`` only."""
        B, T, D = z.shape
        assert D == self.latent_dim and actions.shape == (B, T), (
            f"WorldModelTransformer expects z [B, T, {self.latent_dim}] and actions [B, T]; got z {tuple(z.shape)}, "
            f"actions {tuple(actions.shape)}")
        assert T <= self.max_len, f"sequence of {T} steps exceeds the context window max_len={self.max_len}"
        x = self.embed(z, actions)  # [B, T, C]
        bias = self.causal_bias(T)
        for blk, b in zip(self.blocks, bias):
            x = blk(x, b)[0]
        return self._heads(x, z, reward_logits)

    def rollout(self, z: torch.Tensor, actions: torch.Tensor, steps: int) -> torch.Tensor:
        """Differentiable open-loop rollout for the Stage-2 rollout loss: ``c`` true latents ``z [B, c, D]``, then
        ``steps`` predictions, each fed back as the next input; ``actions [B, c + steps - 1]``. Returns the
        predictions of ``z_c .. z_{c+steps-1}``, ``[B, steps, D]``.

        The same as running :meth:`forward` on the growing fed-back sequence and keeping its last output (causal
        attention: earlier outputs do not change), with each step's keys and values kept instead of recomputed
        (``c + steps - 1`` token passes instead of ``steps * c + steps * (steps - 1) / 2``)."""
        B, c, D = z.shape
        n = c + steps - 1
        assert actions.shape == (B, n) and n <= self.max_len, (
            f"rollout of {steps} steps after {c} true latents needs actions [B, {n}] within max_len={self.max_len}; "
            f"got {tuple(actions.shape)}")
        bias = self.causal_bias(n)  # [L, h, n, n]
        x = self.embed(z, actions[:, :c])
        cache = []
        for blk, b in zip(self.blocks, bias):
            x, k, v = blk(x, b[:, :c, :c])
            cache.append((k, v))
        preds = [self._heads(x[:, -1:], z[:, -1:])[0]]  # [B, 1, D]: z_c
        for t in range(c, n):  # the prediction of z_t goes in at position t
            x = self.embed(preds[-1], actions[:, t:t + 1])
            for i, (blk, b) in enumerate(zip(self.blocks, bias)):
                x, k, v = blk(x, b[:, t:t + 1, :t + 1], cache[i])
                cache[i] = (k, v)
            preds.append(self._heads(x, preds[-1])[0])
        return torch.cat(preds, dim=1)

    @torch.no_grad()
    def prefill(self, context: torch.Tensor, context_actions: torch.Tensor, max_steps: int) -> KVRollout:
        """A rollout state holding real history ``[B, K, D]`` / ``[B, K]`` with room for ``max_steps`` steps in all."""
        B, K = context_actions.shape
        state = KVRollout(self, B, max(max_steps, K), context)
        state.prefill(context, context_actions)
        return state

    @torch.no_grad()
    def imagine(self, z0: torch.Tensor, actions: torch.Tensor, context: torch.Tensor | None = None,
                context_actions: torch.Tensor | None = None, context_state: KVRollout | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoregressive rollout with a KV cache over a sliding window of ``max_len`` steps.

        Args:
            z0: ``[B, D]`` start latent.
            actions: long ``[B, H]``, any ``H >= 1``.
            context, context_actions: optional real history ``[B, K, D]`` / ``[B, K]`` before ``z0``
                (the latents and the actions taken in them), attended to like imagined steps; a batch
                of 1 is one history shared by all ``B`` rollouts (prefilled once, then broadcast).
            context_state: instead of ``context``, a batch-1 state from :meth:`prefill` (reused across
                calls that share the history, e.g. the iterations of one CEM decision; not modified).

        Returns:
            latents ``[B, H, D]`` (z after each action), rewards ``[B, H]`` (symlog units),
            continue logits ``[B, H]``. No gradients: the key/value buffers are written in place (the
            Stage-2 rollout loss runs :meth:`forward` on its own fed-back sequences instead).
        """
        B, H = actions.shape
        assert z0.shape == (B, self.latent_dim), (
            f"imagine expects z0 [B, {self.latent_dim}] and actions [B, H]; got z0 {tuple(z0.shape)}, "
            f"actions {tuple(actions.shape)}")
        K = 0 if context is None else context.shape[1]
        if context_state is not None:  # a shared history prefilled by the caller
            assert context is None and context_state.k.shape[1] == 1, "pass context or a batch-1 context_state"
            state = context_state.expand(B, context_state.t + H)
        elif K:
            assert context_actions is not None and context.shape[0] in (1, B) and \
                context_actions.shape == context.shape[:2], (
                    f"context must be [B or 1, K, {self.latent_dim}] with context_actions [B or 1, K]; got "
                    f"{tuple(context.shape)} and {None if context_actions is None else tuple(context_actions.shape)}")
            state = self.prefill(context, context_actions, K + H)
            if context.shape[0] != B:  # one shared history: computed once, broadcast to the batch
                state = state.expand(B, K + H)
        else:
            state = KVRollout(self, B, H, z0)
        a_emb = self.a_in(actions)  # [B, H, C], one embedding call for the whole horizon
        lat = z0.new_empty(B, H, self.latent_dim)
        rew = z0.new_empty(B, H)
        cont = z0.new_empty(B, H)
        z = z0[:, None]  # [B, 1, D]
        for h in range(H):
            z, r, c = state.step(z, a_emb[:, h:h + 1])  # [B, 1, D], [B, 1], [B, 1]
            lat[:, h:h + 1] = z
            rew[:, h:h + 1] = r
            cont[:, h:h + 1] = c
        return lat, rew, cont


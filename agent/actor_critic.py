"""Actor-critic trained purely in imagination on the world model (DreamerV3-style).

Given start latents ``z0`` sampled from replay data, the actor ``pi(a|z)`` picks actions step by
step inside the world model for ``H = agent.imagine_horizon`` steps. On the imagined trajectory::

    R_h = r_h + discount * c_h * ((1 - lambda) * V_slow(z_{h+1}) + lambda * R_{h+1}),   R_H = V_slow(z_H)

where ``c_h`` is the predicted probability that step ``h`` does not lose a life (a life loss ends
the imagined trajectory), ``r_h`` is the predicted reward minus ``agent.life_loss_penalty * (1 - c_h)``,
and ``V_slow`` is an EMA copy of the critic (a stable value target). With ``agent.life_loss_scale = k > 1`` the
model's life-loss probability is read pessimistically, ``c_h = 1 - min(1, k * (1 - c_model))``: an agent trained in
imagination seeks the states where the model is too kind, and on the agents' own play the world models predict about
half the real life losses (docs/research_log.md, "What the event loss changed in the world models"). Measured on the
atari100k final agent, k = 2 scored 2.05 points lower on the tuning games (docs/results.md, "Three final-agent
screens"): the model's kindness is state-specific, and a uniform factor makes a timid agent.
Every step is weighted by ``w_h = prod_{k<h} c_k``, the probability that the trajectory is still
alive when it reaches ``z_h``.

- Critic: weighted squared error of ``V(z_h)`` against ``stopgrad(R_h)``.
- Actor: REINFORCE, ``-log pi(a_h|z_h) * stopgrad((R_h - V(z_h)) / S) - entropy_coef * H[pi(.|z_h)]``,
  with ``S = max(1, P95 - P5)`` of the returns, the percentiles tracked by an EMA (DreamerV3's return
  normalisation: advantages keep their scale across games without amplifying noise where returns are
  small).
- Self-imitation on real transitions (``agent.self_imitation > 0``; Oh et al. 2018, off by default): a batch of
  replay states with the action taken and the discounted return that followed in the real game
  (:func:`real_returns`, the same reward shaping and life-loss ending as imagination), and only where that
  return beat the critic: actor ``-log pi(a|z) * (G - V(z))+ / S``, critic ``0.5 * ((G - V(z))+)^2``, both times
  ``agent.self_imitation``. Real returns cannot be inflated by model error, so the actor keeps what worked in
  the real game even where the world model undervalues it.

The world model is used only through its public API (``worldmodel.protocol``: ``imagine`` or, when it has
one, the step-wise ``imagine_policy``), always without gradients: REINFORCE needs no gradient through the
dynamics, so the rollout runs under ``no_grad`` and log-probabilities are recomputed on the stored latents.
The settings are :class:`AgentConfig` (config section ``agent``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.errors import check_range
from worldmodel.protocol import LatentWorldModel, PolicyWorldModel


@dataclass
class AgentConfig:
    """The actor-critic and its training in imagination (config section ``agent``)."""

    imagine_horizon: int = 15
    lambda_: float = 0.95  # lambda-return mixing
    discount: float = 0.985
    entropy_coef: float = 3e-3
    actor_lr: float = 3e-5
    critic_lr: float = 3e-5
    hidden_dim: int = 256
    batch_size: int = 256  # imagined start states per update
    updates: int = 5000
    critic_ema_decay: float = 0.98
    # Play with an EMA of the actor's weights (0 = the last iterate): snapshots of one run 300 updates apart differ by
    # 2.1 points on the tuning games, about as much as two seeds' agents; an EMA with 0.995 scored +0.20 over the last
    # iterate on the four atari100k world models (paired games-only CI -1.65 to +2.22, docs/results.md, "snapshots of
    # one final agent"): off. Training still uses the raw actor; agent checkpoints keep both.
    actor_ema_decay: float = 0.0
    grad_clip: float = 100.0
    return_norm_decay: float = 0.99  # EMA decay of the 5th/95th return percentiles (return normalisation)
    life_loss_penalty: float = 1.0  # imagined reward minus penalty * P(life lost at that step)
    life_loss_scale: float = 1.0  # imagination reads P(life lost) as min(1, scale * the model's); 1 = as predicted
    start_latents: int = 20_000  # replay frames encoded once as imagination start states (random subset)
    checkpoint_every: int = 500  # updates between checkpoints (and metric logs every 1/10 of it)
    eval_every: int = 0  # updates between short real-env evaluations (0 = only at the end)
    eval_episodes: int = 1  # full-game episodes per periodic evaluation
    self_imitation: float = 0.0  # weight of the self-imitation loss on real replay transitions (0 = off)
    # How the trained actor plays evaluation games: "sample" draws from its policy, "greedy" takes its most likely
    # action (as DQN's evaluation takes the argmax with its final epsilon). The loop's collection always samples.
    # Sampling stays the default: greedy scored -0.55 (95% CI -1.06 to -0.06) over 360 paired tuning games of 12
    # atari100k agents (docs/results.md).
    eval_policy: str = "sample"
    # Temperature of sampled evaluation play: actions drawn with probabilities proportional to pi(a|z)^(1/T), so
    # T < 1 sharpens the policy towards its mode without the greedy mode's stuck games (T -> 0 is greedy, 1 the policy
    # as trained). Evaluation only: the loop's collection and imagination always use the policy itself.
    eval_temperature: float = 1.0
    # Real steps of history before each imagination start given to the world model as context (``imagine``'s
    # ``context``), as the CEM planner does: Stage 2 learned to predict with up to ``sequence_length - 1`` such steps
    # and is least accurate from a single latent (open-loop error 0.69x against 0.47x copy-last one step ahead on the
    # demo world model, docs/research_log.md "History"). 0 imagines from the start latent alone. Starts nearer their
    # episode's first frame than this repeat that frame (action NOOP) for the missing steps.
    imagine_context: int = 0

    @property
    def greedy_eval(self) -> bool:
        """Whether evaluation games take the actor's most likely action (``eval_policy == "greedy"``)."""
        return self.eval_policy == "greedy"

    @property
    def eval_policy_label(self) -> str:
        """How evaluation games are played, as result tables name it: "greedy", "sample" or "sample at T=0.5"."""
        return self.eval_policy if self.eval_temperature == 1.0 else f"sample at T={self.eval_temperature:g}"

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``; raises :class:`envs.errors.UserError`."""
        check_range(self.imagine_horizon >= 1, f"{path}.imagine_horizon", self.imagine_horizon, "an integer >= 1")
        check_range(self.grad_clip > 0, f"{path}.grad_clip", self.grad_clip, "a positive max gradient norm")
        check_range(0.0 <= self.lambda_ <= 1.0, f"{path}.lambda_", self.lambda_, "a value in [0, 1]")
        check_range(0.0 < self.discount <= 1.0, f"{path}.discount", self.discount, "a value in (0, 1]")
        check_range(0.0 <= self.critic_ema_decay < 1.0, f"{path}.critic_ema_decay", self.critic_ema_decay,
                    "a value in [0, 1)")
        check_range(0.0 <= self.actor_ema_decay < 1.0, f"{path}.actor_ema_decay", self.actor_ema_decay,
                    "a value in [0, 1) (0 plays the actor's last iterate)")
        check_range(self.life_loss_penalty >= 0.0, f"{path}.life_loss_penalty", self.life_loss_penalty,
                    "a number >= 0")
        check_range(self.entropy_coef >= 0.0, f"{path}.entropy_coef", self.entropy_coef, "a weight >= 0")
        check_range(self.hidden_dim >= 1, f"{path}.hidden_dim", self.hidden_dim, "an integer >= 1")
        check_range(self.life_loss_scale >= 1.0, f"{path}.life_loss_scale", self.life_loss_scale,
                    "a number >= 1 (1 reads the model's life-loss probability as it is)")
        check_range(0.0 <= self.return_norm_decay < 1.0, f"{path}.return_norm_decay", self.return_norm_decay,
                    "a value in [0, 1)")
        check_range(self.actor_lr > 0 and self.critic_lr > 0, f"{path}.actor_lr", self.actor_lr,
                    f"positive numbers for {path}.actor_lr and {path}.critic_lr")
        check_range(self.batch_size >= 1 and self.updates >= 1 and self.start_latents >= 1, f"{path}.batch_size",
                    self.batch_size, f"integers >= 1 for {path}.batch_size, {path}.updates and {path}.start_latents")
        check_range(self.self_imitation >= 0.0, f"{path}.self_imitation", self.self_imitation,
                    "a weight >= 0 (0 turns self-imitation off)")
        check_range(self.eval_policy in ("sample", "greedy"), f"{path}.eval_policy", self.eval_policy,
                    '"sample" (draw from the policy) or "greedy" (its most likely action)')
        check_range(0.0 < self.eval_temperature <= 10.0, f"{path}.eval_temperature", self.eval_temperature,
                    "a temperature in (0, 10] (1 samples the policy as trained)")
        check_range(self.eval_policy == "sample" or self.eval_temperature == 1.0, f"{path}.eval_temperature",
                    self.eval_temperature, f'1 when {path}.eval_policy is "greedy" (a temperature only changes '
                    "sampled play)")
        check_range(self.imagine_context >= 0, f"{path}.imagine_context", self.imagine_context,
                    "an integer >= 0 (0 imagines from the start latent alone)")
        check_range(self.checkpoint_every >= 1 and self.eval_every >= 0 and self.eval_episodes >= 1,
                    f"{path}.checkpoint_every", self.checkpoint_every,
                    f"{path}.checkpoint_every >= 1, {path}.eval_every >= 0, {path}.eval_episodes >= 1")


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU blocks, then a linear head (DreamerV3's MLP layout)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.SiLU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class Actor(nn.Module):
    """pi(a|z): categorical policy over the discrete actions from a latent ``z [B, D]``."""

    def __init__(self, latent_dim: int, num_actions: int, hidden_dim: int = 256, unimix: float = 0.01):
        super().__init__()
        self.latent_dim, self.num_actions, self.unimix = latent_dim, num_actions, unimix
        self.net = mlp(latent_dim, hidden_dim, num_actions)
        # Start near uniform: a zero-initialised head gives equal logits, so early imagination explores.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[..., A]``; mixes in ``unimix`` of the uniform so no action has probability 0."""
        assert z.shape[-1] == self.latent_dim, f"latent size {z.shape[-1]} != actor's {self.latent_dim}"
        probs = torch.softmax(self.net(z), dim=-1)
        probs = (1.0 - self.unimix) * probs + self.unimix / self.num_actions
        return torch.log(probs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_probs(z)

    @torch.no_grad()
    def act(self, z: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None
            ) -> torch.Tensor:
        """Actions ``long [B]`` for latents ``[B, D]``: the mode, or a sample."""
        logp = self.log_probs(z)
        if deterministic:
            return logp.argmax(dim=-1)
        probs = logp.exp() if generator is None else logp.exp().cpu()  # a CPU generator samples on the CPU
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(z.device)


class Critic(nn.Module):
    """V(z): expected lambda-return from a latent ``z [B, D]`` -> ``[B]``."""

    def __init__(self, latent_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = mlp(latent_dim, hidden_dim, 1)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert z.shape[-1] == self.latent_dim, f"latent size {z.shape[-1]} != critic's {self.latent_dim}"
        return self.net(z).squeeze(-1)


class ReturnNormalizer(nn.Module):
    """EMA of the 5th and 95th return percentiles; ``scale = max(1, hi - lo)``."""

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95):
        super().__init__()
        self.decay, self.low, self.high = decay, low, high
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> None:
        flat = returns.detach().flatten().float()
        lo, hi = torch.quantile(flat, self.low), torch.quantile(flat, self.high)
        if not bool(self.initialised):  # first batch sets the range instead of decaying from zero
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.initialised.fill_(True)
        else:
            self.lo.mul_(self.decay).add_((1 - self.decay) * lo)
            self.hi.mul_(self.decay).add_((1 - self.decay) * hi)

    @property
    def scale(self) -> torch.Tensor:
        return torch.clamp(self.hi - self.lo, min=1.0)


def lambda_returns(rewards: torch.Tensor, continues: torch.Tensor, values: torch.Tensor, discount: float,
                   lambda_: float) -> torch.Tensor:
    """Lambda-returns ``[B, H]`` of rewards ``[B, H]``, continuation ``[B, H]`` and values ``[B, H+1]``.

    ``values[:, h]`` is V(z_h); ``values[:, H]`` bootstraps the tail. ``continues[:, h]`` is the
    probability that the trajectory goes on after step h (it scales everything after ``r_h``).
    """
    B, H = rewards.shape
    assert continues.shape == (B, H) and values.shape == (B, H + 1), (
        f"lambda_returns shapes: rewards {tuple(rewards.shape)}, continues {tuple(continues.shape)}, "
        f"values {tuple(values.shape)} (expected [B,H], [B,H], [B,H+1])")
    out = torch.empty_like(rewards)
    nxt = values[:, H]
    for h in range(H - 1, -1, -1):  # a backward recursion over H <= ~30 steps; batched over B
        nxt = rewards[:, h] + discount * continues[:, h] * ((1 - lambda_) * values[:, h + 1] + lambda_ * nxt)
        out[:, h] = nxt
    return out


def real_returns(rewards: np.ndarray, life_loss: np.ndarray, terminated: np.ndarray, discount: float,
                 life_loss_penalty: float) -> np.ndarray:
    """Discounted real returns ``[L]`` of one episode's transitions, as imagination scores them.

    ``G_t = r_t - life_loss_penalty * lost_t + discount * (1 - end_t) * G_{t+1}`` with ``end_t`` a life loss or
    the game's end and ``G_L = 0`` (a game cut off by the step budget bootstraps nothing: a lower bound).
    """
    L = len(rewards)
    assert life_loss.shape == (L,) and terminated.shape == (L,), (
        f"real_returns: rewards [{L}], life_loss {life_loss.shape}, terminated {terminated.shape}")
    shaped = rewards.astype(np.float64) - life_loss_penalty * life_loss
    goes_on = discount * ~(life_loss | terminated)
    out = np.empty(L, dtype=np.float32)
    g = 0.0
    for t in range(L - 1, -1, -1):
        g = shaped[t] + goes_on[t] * g
        out[t] = g
    return out


class RealTransitions:
    """Replay states for self-imitation: latents ``[N, D]``, the actions taken ``[N]`` and real returns ``[N]``.

    :meth:`from_episodes` builds it from the latents of the episodes' frames and their actions, rewards and flags;
    each episode's last frame has no action and is left out.
    """

    def __init__(self, latents: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor):
        N = len(latents)
        assert actions.shape == (N,) and returns.shape == (N,), (
            f"RealTransitions: latents {tuple(latents.shape)}, actions {tuple(actions.shape)}, "
            f"returns {tuple(returns.shape)}")
        self.latents, self.actions, self.returns = latents, actions.long(), returns.float()

    @classmethod
    def from_episodes(cls, episodes: Any, frame_latents: torch.Tensor, cfg: AgentConfig,
                      frame_index: np.ndarray | None = None) -> RealTransitions:
        """``frame_latents [N, D]``: latents of frames of ``episodes``; row i is global frame ``frame_index[i]``
        (the episodes' frames concatenated in order; default: every frame, ``N = G``)."""
        acts, rets, valid = [], [], []
        for e in episodes:
            L = len(e)
            acts.append(np.append(np.asarray(e.actions, dtype=np.int64), 0))
            rets.append(np.append(real_returns(np.asarray(e.rewards), np.asarray(e.life_loss, dtype=bool),
                                               np.asarray(e.terminated, dtype=bool), cfg.discount,
                                               cfg.life_loss_penalty), 0.0).astype(np.float32))
            valid.append(np.arange(L + 1) < L)  # the last frame has no action
        act, ret, ok = np.concatenate(acts), np.concatenate(rets), np.concatenate(valid)
        index = np.arange(len(ok)) if frame_index is None else np.asarray(frame_index)
        assert len(index) == len(frame_latents) and (len(index) == 0 or index.max() < len(ok)), (
            f"{len(frame_latents)} latents for frame indices of {len(ok)} frames")
        sel = np.flatnonzero(ok[index])
        rows = torch.from_numpy(sel).to(frame_latents.device)
        return cls(frame_latents[rows], torch.from_numpy(act[index[sel]]), torch.from_numpy(ret[index[sel]]))

    def __len__(self) -> int:
        return len(self.latents)

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str) -> dict[str, torch.Tensor]:
        i = torch.randint(len(self), (n,), generator=generator)
        return {"latents": self.latents[i.to(self.latents.device)].to(device), "actions": self.actions[i].to(device),
                "returns": self.returns[i].to(device)}


class ImaginationStarts:
    """Real latents that imagination starts from, each with the ``agent.imagine_context`` real steps before it.

    ``latents [M, D]``: every latent the starts and their histories need; ``start_rows long [N]``: the row of each
    start; ``context_rows long [N, K]`` and ``context_actions long [N, K]``: the rows of the K steps before each start
    (oldest first) and the actions taken in them, as :func:`history_frames` finds them.
    """

    def __init__(self, latents: torch.Tensor, start_rows: torch.Tensor, context_rows: torch.Tensor,
                 context_actions: torch.Tensor):
        N, K = context_rows.shape
        assert latents.ndim == 2 and start_rows.shape == (N,) and context_actions.shape == (N, K), (
            f"ImaginationStarts: latents {tuple(latents.shape)}, start_rows {tuple(start_rows.shape)}, context_rows "
            f"{tuple(context_rows.shape)}, context_actions {tuple(context_actions.shape)}")
        self.latents, self.start_rows = latents, start_rows.long()
        self.context_rows, self.context_actions = context_rows.long(), context_actions.long()

    def to(self, device: torch.device | str) -> ImaginationStarts:
        """The same starts with their latents on ``device`` (the index tables stay on the CPU)."""
        return ImaginationStarts(self.latents.to(device), self.start_rows, self.context_rows, self.context_actions)

    @property
    def context(self) -> int:
        return int(self.context_rows.shape[1])

    def __len__(self) -> int:
        return int(self.start_rows.shape[0])

    def batch(self, idx: torch.Tensor, device: torch.device | str) -> dict[str, torch.Tensor | None]:
        """``z0 [B, D]`` and, with K > 0, ``context [B, K, D]`` and ``context_actions [B, K]`` of starts ``idx``."""
        idx = idx.cpu()
        rows = self.start_rows[idx].to(self.latents.device)
        z0 = self.latents[rows].to(device)
        if self.context == 0:
            return {"z0": z0, "context": None, "context_actions": None}
        ctx = self.latents[self.context_rows[idx].to(self.latents.device)].to(device)  # [B, K, D]
        return {"z0": z0, "context": ctx, "context_actions": self.context_actions[idx].to(device)}


def history_frames(episodes: Any, frames: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``context`` real steps before each of ``frames [N]`` (global frame indices of ``episodes`` laid end to end,
    L+1 frames an episode): their global frames ``[N, K]``, oldest first, and the actions taken in them ``[N, K]``.
    Steps before a start's episode began repeat its first frame with action 0 (NOOP)."""
    counts = np.array([len(e) + 1 for e in episodes], dtype=np.int64)  # frames per episode
    first = np.repeat(np.cumsum(counts) - counts, counts)  # [G]: each frame's episode's first frame
    actions = np.concatenate([np.append(e.actions, 0) for e in episodes]).astype(np.int64)  # [G]
    frames = np.asarray(frames, dtype=np.int64)
    prev = frames[:, None] - context + np.arange(context)[None, :]  # [N, K]
    start = first[frames][:, None]  # [N, 1]
    inside = prev >= start
    return np.where(inside, prev, start), np.where(inside, actions[np.maximum(prev, 0)], 0)


def check_imagine_context(cfg: AgentConfig, model: LatentWorldModel, path: str = "agent") -> None:
    """Refuse an ``agent.imagine_context`` longer than the history the world model was trained with."""
    if cfg.imagine_context == 0:
        return
    limit = int(model.context_length) - 1
    check_range(cfg.imagine_context <= limit, f"{path}.imagine_context", cfg.imagine_context,
                f"at most {limit} (this world model's Stage 2 saw {limit} steps of history: sequence_length - 1)")


PolicyFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def imagine_with_policy(model: LatentWorldModel, z0: torch.Tensor, policy_fn: PolicyFn, horizon: int,
                        context: torch.Tensor | None = None, context_actions: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
    """Roll the policy out in the world model, choosing each action from the latest imagined latent.

    Uses ``model.imagine_policy(z0, policy_fn, horizon)`` when the model provides a step-wise rollout (a
    ``PolicyWorldModel``); otherwise calls ``imagine`` on growing action prefixes (exact for a causal,
    deterministic model: the first h outputs do not depend on later actions). ``context [B, K, D]`` /
    ``context_actions [B, K]``: the real steps before each start (``agent.imagine_context``), passed on to the model.

    Returns a dict: ``latents [B, H+1, D]`` (z_0 first), ``actions long [B, H]``, ``rewards [B, H]``,
    ``continues [B, H]``.
    """
    B, D = z0.shape
    ctx = {} if context is None else {"context": context, "context_actions": context_actions}
    if hasattr(model, "imagine_policy"):
        latents, actions, rewards, continues = model.imagine_policy(z0, policy_fn, horizon, **ctx)
    else:
        acts = torch.empty(B, 0, dtype=torch.long, device=z0.device)
        z = z0
        lat, rew, con = [], [], []
        for _ in range(horizon):
            a = policy_fn(z).long().view(B, 1)
            acts = torch.cat([acts, a], dim=1)
            zs, rs, cs = model.imagine(z0, acts, **ctx)  # [B, h, D], [B, h], [B, h]
            z = zs[:, -1]
            lat.append(z)
            rew.append(rs[:, -1])
            con.append(cs[:, -1])
        latents, actions = torch.stack(lat, 1), acts
        rewards, continues = torch.stack(rew, 1), torch.stack(con, 1)
    assert latents.shape == (B, horizon, D) and actions.shape == (B, horizon), (
        f"rollout shapes: latents {tuple(latents.shape)}, actions {tuple(actions.shape)}; expected "
        f"[{B}, {horizon}, {D}] and [{B}, {horizon}]")
    assert rewards.shape == (B, horizon) and continues.shape == (B, horizon), (
        f"rollout shapes: rewards {tuple(rewards.shape)}, continues {tuple(continues.shape)}; "
        f"expected [{B}, {horizon}]")
    # Fresh tensors (the model may return inference-mode ones, which autograd refuses to save).
    return {"latents": torch.cat([z0[:, None], latents.to(z0)], dim=1), "actions": actions.long().clone(),
            "rewards": rewards.float().clone(), "continues": continues.float().clamp(0.0, 1.0)}


@torch.no_grad()
def _ema_step(target: nn.Module, online: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * online``, parameter by parameter."""
    for p_t, p in zip(target.parameters(), online.parameters(), strict=True):
        p_t.lerp_(p, 1.0 - decay)


class ActorCritic(nn.Module):
    """Actor, critic, slow critic, their optimisers and the return normaliser; ``update(z0)`` is one step."""

    def __init__(self, latent_dim: int, num_actions: int, cfg: AgentConfig, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.latent_dim, self.num_actions = latent_dim, num_actions
        self.actor = Actor(latent_dim, num_actions, cfg.hidden_dim)
        self.critic = Critic(latent_dim, cfg.hidden_dim)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # The weights that play (agent.actor_ema_decay > 0): an EMA of the actor, never trained directly.
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False) if cfg.actor_ema_decay > 0 else None
        self.normalizer = ReturnNormalizer(cfg.return_norm_decay)
        self.to(device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=1e-5)
        self.generator = torch.Generator(device="cpu")
        self.updates = 0

    @property
    def device(self) -> torch.device:
        return next(self.actor.parameters()).device

    @property
    def play_actor(self) -> Actor:
        """The actor that plays games: the EMA of the actor's weights with ``agent.actor_ema_decay > 0``, else the
        actor itself."""
        return self.actor if self.actor_ema is None else self.actor_ema

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _sample_actions(self, z: torch.Tensor) -> torch.Tensor:
        probs = self.actor.log_probs(z).exp().cpu()
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).to(z.device)

    def imagine(self, model: PolicyWorldModel, z0: torch.Tensor, context: torch.Tensor | None = None,
                context_actions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """An imagined rollout of the current actor (sampled actions) from start latents ``z0 [B, D]``, after the
        real history ``context [B, K, D]`` / ``context_actions [B, K]`` when given."""
        return imagine_with_policy(model, z0, self._sample_actions, self.cfg.imagine_horizon, context,
                                   context_actions)

    def update(self, model: PolicyWorldModel, z0: torch.Tensor, real: RealTransitions | None = None,
               context: torch.Tensor | None = None, context_actions: torch.Tensor | None = None) -> dict[str, float]:
        """One actor and one critic step on a fresh imagined batch; returns plain-float metrics.

        ``context`` / ``context_actions``: the real steps before each start (:class:`ImaginationStarts`). With
        ``agent.self_imitation > 0`` and ``real`` given, ``agent.batch_size`` real transitions add the
        self-imitation terms to both losses."""
        c = self.cfg
        sil = real.sample(c.batch_size, self.generator, z0.device) if c.self_imitation > 0 and real else None
        traj = self.imagine(model, z0, context, context_actions)
        z, a, r, cont = traj["latents"], traj["actions"], traj["rewards"], traj["continues"]  # [B,H+1,D] [B,H]..
        if c.life_loss_scale != 1.0:  # pessimistic reading of the model's life-loss probability
            cont = 1.0 - (c.life_loss_scale * (1.0 - cont)).clamp(max=1.0)
        B, H = a.shape
        with torch.no_grad():
            slow_v = self.slow_critic(z)  # [B, H+1]
            # A life loss ends the imagined trajectory; the optional penalty makes losing one cost more
            # than the (often small) value it forfeits, as in the CEM planner's score.
            shaped = r - c.life_loss_penalty * (1.0 - cont)  # [B, H]
            returns = lambda_returns(shaped, cont, slow_v, c.discount, c.lambda_)  # [B, H]
            # w_h: probability the imagined trajectory is still alive at step h (w_0 = 1).
            weight = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], dim=1), dim=1)
            self.normalizer.update(returns)
            scale = self.normalizer.scale

        # Critic: regress V(z_h) on the lambda-return.
        v = self.critic(z[:, :-1])  # [B, H]
        critic_loss = (weight * 0.5 * (v - returns) ** 2).mean()
        if sil is not None:  # self-imitation: lift V where the real game did better than it expects
            v_real = self.critic(sil["latents"])  # [B]
            sil_adv = (sil["returns"] - v_real).clamp(min=0.0)  # [B]
            critic_loss = critic_loss + c.self_imitation * (0.5 * sil_adv ** 2).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_gn = nn.utils.clip_grad_norm_(self.critic.parameters(), c.grad_clip)
        self.critic_opt.step()

        # Actor: REINFORCE on normalised advantages plus an entropy bonus.
        logp_all = self.actor.log_probs(z[:, :-1])  # [B, H, A]
        logp = logp_all.gather(-1, a[..., None]).squeeze(-1)  # [B, H]
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [B, H]
        adv = ((returns - v.detach()) / scale).detach()
        actor_loss = (weight * (-logp * adv - c.entropy_coef * entropy)).mean()
        if sil is not None:  # self-imitation: more of the real actions that beat the critic
            logp_real = self.actor.log_probs(sil["latents"]).gather(-1, sil["actions"][:, None]).squeeze(-1)  # [B]
            actor_loss = actor_loss - c.self_imitation * (logp_real * (sil_adv.detach() / scale)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_gn = nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip)
        self.actor_opt.step()

        _ema_step(self.slow_critic, self.critic, c.critic_ema_decay)  # slow critic <- EMA of the critic
        if self.actor_ema is not None:  # the playing actor <- EMA of the actor
            _ema_step(self.actor_ema, self.actor, c.actor_ema_decay)
        self.updates += 1
        # Imagined return of the sampled actions: discounted rewards, each counted while alive.
        disc = c.discount ** torch.arange(H, device=r.device, dtype=r.dtype)
        imagined = (weight * r * disc).sum(1)  # [B]
        action_freq = torch.bincount(a.flatten().cpu(), minlength=self.num_actions).float() / a.numel()
        out = {
            "train/imagined_return": float(imagined.mean()),
            "train/lambda_return": float(returns.mean()),
            "train/value": float(v.detach().mean()),
            "train/reward": float(r.mean()),
            "train/continue": float(cont.mean()),
            "train/entropy": float(entropy.detach().mean()),
            "train/actor_loss": float(actor_loss.detach()),
            "train/critic_loss": float(critic_loss.detach()),
            "train/return_scale": float(scale),
            "train/return_p5": float(self.normalizer.lo),
            "train/return_p95": float(self.normalizer.hi),
            "train/actor_grad_norm": float(actor_gn),
            "train/critic_grad_norm": float(critic_gn),
        }
        out.update({f"train/action_{i}": float(f) for i, f in enumerate(action_freq)})
        if sil is not None:
            out["train/sil_positive"] = float((sil_adv > 0).float().mean())
            out["train/sil_advantage"] = float(sil_adv.detach().mean())
        return out

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """V(z) ``[B]`` without gradients (the planner's terminal value)."""
        with torch.no_grad():
            return self.critic(z)

    # ----------------------------------------------------------------------------------- checkpoints
    def training_state(self) -> dict[str, Any]:
        """Everything resuming needs, as tensors, numbers and dicts (``weights_only`` loadable)."""
        state = {
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "slow_critic": self.slow_critic.state_dict(), "normalizer": self.normalizer.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "generator": self.generator.get_state(), "updates": self.updates,
            "latent_dim": self.latent_dim, "num_actions": self.num_actions,
        }
        if self.actor_ema is not None:
            state["actor_ema"] = self.actor_ema.state_dict()
        return state

    def load_training_state(self, state: dict[str, Any], optimizers: bool = True) -> None:
        if (state["latent_dim"], state["num_actions"]) != (self.latent_dim, self.num_actions):
            raise ValueError(f"checkpoint is for latent_dim={state['latent_dim']}, num_actions={state['num_actions']};"
                             f" this agent has {self.latent_dim}, {self.num_actions}")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.slow_critic.load_state_dict(state["slow_critic"])
        if self.actor_ema is not None:  # a checkpoint from a run without the EMA starts it at the actor
            self.actor_ema.load_state_dict(state.get("actor_ema", state["actor"]))
        self.normalizer.load_state_dict(state["normalizer"])
        if optimizers:
            self.actor_opt.load_state_dict(state["actor_opt"])
            self.critic_opt.load_state_dict(state["critic_opt"])
            self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])


def policy_prior(actor: Actor, model: LatentWorldModel | None = None, generator: torch.Generator | None = None
                 ) -> Callable[..., torch.Tensor]:
    """The actor as a sampling policy for planners.

    Returns ``fn(z [B, D]) -> actions long [B]`` (one step), or, with ``model`` given, also
    ``fn(z0 [M, D], horizon) -> action sequences long [M, H]``: the actor rolled out step by step in the
    world model (the CEM planner's ``policy_fn``, TD-MPC2's policy prior).
    """

    def step(z: torch.Tensor) -> torch.Tensor:
        return actor.act(z, deterministic=False, generator=generator)

    def fn(z: torch.Tensor, horizon: int | None = None) -> torch.Tensor:
        if horizon is None:
            return step(z)
        if model is None:
            raise ValueError("policy_prior(actor) samples single actions; pass the world model "
                             "(policy_prior(actor, model)) to sample action sequences")
        return imagine_with_policy(model, z, step, horizon)["actions"]  # [M, H]

    return fn


__all__ = ["Actor", "ActorCritic", "AgentConfig", "Critic", "RealTransitions", "ReturnNormalizer",
           "imagine_with_policy", "lambda_returns", "policy_prior", "real_returns"]

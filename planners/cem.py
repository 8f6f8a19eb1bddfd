"""CEM over discrete action sequences, used as MPC: plan, execute the first action, replan.

The plan is a per-step categorical distribution ``probs [H, A]`` over Breakout's actions. Each
decision runs ``planner.iterations`` rounds of: sample ``planner.samples`` action sequences
(optionally temporally correlated, and optionally mixed with sequences from an actor), score all
of them with ONE batched ``model.imagine`` call, and refit ``probs`` to the top
``planner.elites`` sequences with smoothing (identical candidates are imagined once). The
executed action is the refit plan's most likely first step; the plan is then shifted one step
so that the next decision starts from it (warm start). The last ``planner.history_steps`` real latents and the
actions taken in them go to ``imagine`` as context (Stage 2 predicts with that much history in
training; from a single latent its first imagined steps are its least accurate).

Score of a sequence with predicted rewards ``r_h`` and continue probabilities ``c_h`` (the
probability that step ``h`` loses no life), discount ``g`` and ``alive_h = c_0 ... c_{h-1}``
(the probability that no life was lost before step ``h``)::

    sum_h g^h alive_h r_h                                    # imagined return
    - penalty * sum_h g^h alive_h (1 - c_h)                  # discounted P(first life loss at h)
    + g^H alive_H V(z_H)                                     # optional terminal value

The model is anything with ``encode`` and ``imagine`` (``worldmodel.protocol.LatentWorldModel``): the
learned world model (``worldmodel.load_world_model``) or the emulator itself (``planners.oracle``).
The settings are :class:`PlannerConfig` (config section ``planner``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from envs.errors import UserError, check_range
from worldmodel.protocol import LatentWorldModel


@dataclass
class PlannerConfig:
    """The CEM planner (config section ``planner``).

    Horizon study with CEM over the emulator (benchmarks/bench_oracle_horizon.py, first 400 steps): horizon 10
    lost all five lives in 147 steps; horizons 20-30 lost 1-3 lives in 400 steps.
    """

    samples: int = 32  # N candidate action sequences per CEM iteration
    horizon: int = 20  # H imagined steps per candidate (the ball needs ~30 steps to cross the screen)
    iterations: int = 3
    elites: int = 4  # top-k candidates that refit the distribution
    smoothing: float = 0.3  # new_probs = smoothing * old + (1 - smoothing) * elite frequencies
    discount: float = 0.99
    life_loss_penalty: float = 1.0  # subtracted, weighted by the probability of losing a life
    repeat_prob: float = 0.75  # temporally correlated samples: P(repeat previous action)
    use_value: bool = False  # add the actor-critic's value at the horizon (needs --agent)
    policy_samples: int = 0  # candidates drawn from the actor (needs --agent)
    warm_start_mix: float = 0.1  # shifted plan mixed with uniform by this fraction (keeps sampling alive)
    history_steps: int = 7  # real past steps fed to imagine as context (capped at the model's context - 1)

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``; raises :class:`envs.errors.UserError`."""
        check_range(self.samples >= 1, f"{path}.samples", self.samples, "an integer >= 1")
        check_range(self.horizon >= 1, f"{path}.horizon", self.horizon, "an integer >= 1")
        check_range(self.iterations >= 1, f"{path}.iterations", self.iterations, "an integer >= 1")
        check_range(1 <= self.elites <= self.samples, f"{path}.elites", self.elites,
                    f"an integer in [1, {path}.samples={self.samples}]")
        check_range(0.0 <= self.smoothing < 1.0, f"{path}.smoothing", self.smoothing, "a value in [0, 1)")
        check_range(0.0 < self.discount <= 1.0, f"{path}.discount", self.discount, "a value in (0, 1]")
        check_range(0.0 <= self.repeat_prob < 1.0, f"{path}.repeat_prob", self.repeat_prob, "a probability in [0, 1)")
        check_range(0 <= self.policy_samples <= self.samples, f"{path}.policy_samples", self.policy_samples,
                    f"an integer in [0, {path}.samples={self.samples}]")
        check_range(self.history_steps >= 0, f"{path}.history_steps", self.history_steps, "an integer >= 0")
        check_range(self.life_loss_penalty >= 0.0, f"{path}.life_loss_penalty", self.life_loss_penalty,
                    "a number >= 0 (0 scores a lost life by the points it forfeits alone)")
        check_range(0.0 <= self.warm_start_mix <= 1.0, f"{path}.warm_start_mix", self.warm_start_mix,
                    "a value in [0, 1]")


ValueFn = Callable[[torch.Tensor], torch.Tensor]  # z [B, D] -> value [B]
PolicyFn = Callable[[torch.Tensor, int], torch.Tensor]  # (z0 [M, D], H) -> long actions [M, H]


def score_sequences(rewards: torch.Tensor, continues: torch.Tensor, discount: float, life_loss_penalty: float,
                    terminal_value: torch.Tensor | None = None) -> torch.Tensor:
    """Imagined return of each sequence (see the module docstring).

    Args:
        rewards: predicted reward of each step, ``[B, H]``.
        continues: probability that each step loses no life, ``[B, H]``.
        discount: per-step discount ``g``.
        life_loss_penalty: cost of losing a life.
        terminal_value: optional value of the last latent, ``[B]``.

    Returns:
        ``[B]`` scores.
    """
    assert rewards.shape == continues.shape and rewards.dim() == 2, \
        f"rewards {tuple(rewards.shape)} and continues {tuple(continues.shape)} must both be [B, H]"
    b, h = rewards.shape
    alive_after = torch.cumprod(continues, dim=1)  # [B, H] P(no life lost in steps 0..h)
    alive_before = torch.cat([torch.ones_like(alive_after[:, :1]), alive_after[:, :-1]], dim=1)  # [B, H]
    disc = discount ** torch.arange(h, dtype=rewards.dtype, device=rewards.device)  # [H]
    score = (disc * alive_before * (rewards - life_loss_penalty * (1.0 - continues))).sum(dim=1)  # [B]
    if terminal_value is not None:
        assert terminal_value.shape == (b,), f"terminal value {tuple(terminal_value.shape)} must be [B={b}]"
        score = score + discount ** h * alive_after[:, -1] * terminal_value
    return score


def sample_sequences(probs: torch.Tensor, n: int, repeat_prob: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` action sequences from per-step categoricals ``probs [H, A]``; long ``[n, H]``.

    With ``repeat_prob > 0`` each step after the first repeats the previous step's action with that
    probability (instead of drawing a fresh one), so samples hold an action for several steps: a
    paddle needs runs of the same action to cross the screen, which independent draws rarely make.
    """
    h = probs.shape[0]
    fresh = torch.multinomial(probs, n, replacement=True, generator=generator).T  # [n, H]
    if repeat_prob <= 0.0 or h == 1:
        return fresh
    repeat = torch.rand(n, h, generator=generator, device=probs.device) < repeat_prob  # [n, H]
    repeat[:, 0] = False
    steps = torch.arange(h, device=probs.device).expand(n, h)  # [n, H]
    source = torch.where(repeat, torch.zeros_like(steps), steps).cummax(dim=1).values  # last fresh draw
    return fresh.gather(1, source)


class CEMPlanner:
    """Discrete CEM/MPC over a world model's ``imagine`` (config: ``planner.*``).

    Args:
        model: ``encode`` + ``imagine`` (``worldmodel.protocol.LatentWorldModel``).
        cfg: the planner's settings (the ``planner`` section of the config).
        value_fn: terminal value ``V(z [B, D]) -> [B]``, used when ``cfg.use_value``.
        policy_fn: ``(z0 [M, D], H) -> long [M, H]``: action sequences sampled by rolling an actor
            through ``imagine``; ``cfg.policy_samples`` of them join the candidates each iteration.
        seed: seed of the sampling generator.
    """

    def __init__(self, model: LatentWorldModel, cfg: PlannerConfig, value_fn: ValueFn | None = None,
                 policy_fn: PolicyFn | None = None, seed: int = 0):
        if cfg.use_value and value_fn is None:
            raise UserError("planner.use_value=true needs a value function from an actor-critic checkpoint; "
                            "pass one or set planner.use_value=false")
        if cfg.policy_samples > 0 and policy_fn is None:
            raise UserError(f"planner.policy_samples={cfg.policy_samples} needs an actor from an actor-critic "
                            "checkpoint; pass one or set planner.policy_samples=0")
        if not 1 <= cfg.elites <= cfg.samples or cfg.horizon < 1 or cfg.iterations < 1:
            raise UserError(f"planner settings are invalid (samples={cfg.samples}, elites={cfg.elites}, "
                            f"horizon={cfg.horizon}, iterations={cfg.iterations}); need 1 <= elites <= samples, "
                            "horizon >= 1 and iterations >= 1")
        self.model = model
        self.cfg = cfg
        self.value_fn = value_fn if cfg.use_value else None
        self.policy_fn = policy_fn if cfg.policy_samples > 0 else None
        self.num_actions = int(model.num_actions)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.probs = self._uniform(cfg.horizon)
        self.last_info: dict[str, Any] = {}
        # Real history fed to imagine as context: the world model's window minus the current step.
        self.history_steps = min(cfg.history_steps, int(model.context_length) - 1)
        self.history: list[tuple[torch.Tensor, int]] = []  # (z [1, D], action taken) of the last steps

    def _uniform(self, h: int) -> torch.Tensor:
        return torch.full((h, self.num_actions), 1.0 / self.num_actions)  # [H, A]

    def reset(self, env: Any = None) -> None:
        self.probs = self._uniform(self.cfg.horizon)
        self.last_info = {}
        self.history = []

    def context(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """The real history as ``imagine`` context: latents ``[1, K, D]`` and actions ``[1, K]`` (or Nones)."""
        if not self.history:
            return None, None
        z = torch.cat([h[0] for h in self.history], dim=0)[None]  # [1, K, D]
        return z, torch.tensor([[h[1] for h in self.history]], device=z.device)

    @torch.inference_mode()
    def plan(self, z0: torch.Tensor) -> tuple[int, dict[str, Any]]:
        """Run CEM from one latent ``z0 [1, D]``; returns the first action and diagnostics.

        ``self.probs`` holds the refit plan afterwards (:meth:`act` shifts it for the next step) and
        ``self.last_info`` the diagnostics: ``predicted_return`` (mean score of the last elites),
        ``best_return`` and ``plan`` (best sequence seen), ``first_step_probs``.
        """
        assert z0.dim() == 2 and z0.shape[0] == 1, f"plan() takes one latent [1, D], got {tuple(z0.shape)}"
        c = self.cfg
        h, n = c.horizon, c.samples
        n_policy = c.policy_samples if self.policy_fn is not None else 0
        policy_seqs = None
        if n_policy:
            policy_seqs = self.policy_fn(z0.expand(n_policy, -1), h).long().cpu()  # [P, H]
            assert policy_seqs.shape == (n_policy, h), \
                f"policy_fn returned {tuple(policy_seqs.shape)}, expected [{n_policy}, {h}]"
        z = z0.expand(n, -1)  # [N, D]
        ctx_z, ctx_a = self.context()  # [1, K, D], [1, K]: shared by all N candidates
        probs = self.probs
        best_score, best_seq, elite_mean = -float("inf"), None, 0.0
        for _ in range(c.iterations):
            parts = [sample_sequences(probs, n - n_policy, c.repeat_prob, self.generator)] if n > n_policy else []
            if policy_seqs is not None:
                parts.append(policy_seqs)
            seqs = torch.cat(parts, dim=0)  # [N, H]: N-P from the plan, then P from the actor
            # Candidates repeat (a peaked plan, held actions): imagine each distinct sequence once.
            uniq, inv = torch.unique(seqs, dim=0, return_inverse=True)  # [U, H], [N]
            zu = z[:len(uniq)]
            if ctx_z is None:
                out = self.model.imagine(zu, uniq.to(z.device))  # [U,H,D], [U,H], [U,H]
            else:
                out = self.model.imagine(zu, uniq.to(z.device), context=ctx_z, context_actions=ctx_a)
            inv = inv.to(z.device)
            latents, rewards, continues = (x[inv] for x in out)  # [N, H, D], [N, H], [N, H]
            assert rewards.shape == (n, h) and continues.shape == (n, h), \
                f"imagine returned rewards {tuple(rewards.shape)}, continues {tuple(continues.shape)}; " \
                f"expected [{n}, {h}]"
            value = None
            if self.value_fn is not None:
                value = self.value_fn(latents[:, -1]).reshape(n).float()  # [N]
            scores = score_sequences(rewards.float(), continues.float(), c.discount, c.life_loss_penalty,
                                     value).cpu()  # [N]
            top = torch.topk(scores, c.elites).indices  # [K]
            elites = seqs[top]  # [K, H]
            freq = torch.nn.functional.one_hot(elites, self.num_actions).float().mean(0)  # [H, A]
            probs = c.smoothing * probs + (1.0 - c.smoothing) * freq
            elite_mean = float(scores[top].mean())
            if float(scores[top[0]]) > best_score:
                best_score, best_seq = float(scores[top[0]]), seqs[top[0]]
        self.probs = probs
        action = int(probs[0].argmax())
        self.last_info = {"predicted_return": elite_mean, "best_return": best_score, "plan": best_seq.tolist(),
                          "first_step_probs": probs[0].tolist()}
        return action, self.last_info

    def shift(self) -> None:
        """Warm start: the plan for steps 1..H-1 becomes the plan for 0..H-2; the new last step is uniform.

        The shifted plan is mixed with uniform by ``planner.warm_start_mix`` so that an action the
        elites dropped can come back when the situation changes (a collapsed categorical never
        samples it again).
        """
        shifted = torch.cat([self.probs[1:], self._uniform(1)], dim=0)  # [H, A]
        mix = self.cfg.warm_start_mix
        self.probs = (1.0 - mix) * shifted + mix * self._uniform(self.cfg.horizon)

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> int:
        z0 = self.model.encode(np.asarray(obs)[None])  # [1, D]
        action, _ = self.plan(z0)
        self.shift()
        if self.history_steps > 0:
            self.history = (self.history + [(z0, action)])[-self.history_steps:]
        return action

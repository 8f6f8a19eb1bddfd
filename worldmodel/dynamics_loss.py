"""Stage 2: the action-conditioned world model trained over frozen Stage-1 latents.

``WorldModelLoss`` (the seed's names and weights)::

    loss = teacher_forcing_weight * TF-L1 + rollout_weight * rollout-L1
         + reward_weight * reward loss + continue_weight * continuation-BCE

* The reward loss is the cross-entropy of the reward head's bins against the two-hot encoding of
  ``symlog(reward)`` (``models.world_model.reward_bins > 0``, the default), or the seed's symlog MSE
  for a scalar head. Scoring steps weigh ``reward_pos_weight`` times a plain step, and Stage-2 training
  can oversample sequences that hold one (``reward_oversample``).

* Teacher forcing with scheduled sampling: a first, gradient-free pass predicts every ``z_{t+1}``;
  each input ``z_t`` (t >= 1) is then kept with probability ``teacher_forcing_ratio`` or replaced
  by that prediction, and the second pass is scored by L1 against the true next latents.
* Rollout: from a true prefix ``z_0 .. z_{c-1}`` the model feeds its own predictions back for
  ``rollout_steps`` steps (gradients flow through the chain) and the L1 error of those steps is
  averaged. Training draws the prefix length ``c`` uniformly from ``1 .. T - rollout_steps + 1``;
  evaluation uses ``c = 1`` (the planner's case: one real latent, then imagination only).
* Reward and continuation heads are scored on the second (scheduled-sampling) pass, so they learn
  to read partly imagined inputs too.

``latent_total = 0.7 * TF + 0.3 * rollout`` is the seed's "Total Loss"; ``loss`` is what is optimised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.errors import check_range, check_schedule
from worldmodel.transformer import WorldModelTransformer, symlog, twohot


@dataclass
class Stage2Config:
    """Stage-2 training (config section ``vjepa2_world_model.stage2``)."""

    sequence_length: int = 8  # T transitions per training sequence
    teacher_forcing_ratio: float = 0.8  # probability of feeding the true z_t (scheduled sampling)
    rollout_steps: int = 4  # autoregressive steps of the rollout loss
    num_epochs: int = 30
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    early_stopping_patience: int = 3
    teacher_forcing_weight: float = 0.7
    rollout_weight: float = 0.3
    reward_weight: float = 1.0
    continue_weight: float = 1.0
    batch_size: int = 64
    grad_clip: float = 1.0
    sequences_per_epoch: int = 0  # training sequences drawn per epoch from all start positions (0 = all of them)
    # Rare events: a life loss is ~3% of random-policy steps and a point ~2%; these weight their steps' head
    # losses (1 = plain mean).
    continue_pos_weight: float = 1.0  # weight of life-loss steps in the continuation BCE
    reward_pos_weight: float = 1.0  # weight of rewarding steps in the reward loss
    # Share of each training batch drawn from sequences whose steps hold a point (the rest uniformly): random
    # play scores on ~1-2% of steps, too rare for the reward head to see in a batch otherwise.
    reward_oversample: float = 0.25
    # Also score the heads on the rollout's imagined latents (fed back detached: the heads learn to read imagined
    # states without their gradients pulling the chain of latent predictions). On in every Stage-2 update of the
    # atari100k loop it scored 9.70 against 11.27 on the tuning games (docs/results.md): off by default.
    heads_on_rollout: bool = False

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``; raises :class:`envs.errors.UserError`."""
        check_schedule(self, path)
        check_range(self.grad_clip > 0, f"{path}.grad_clip", self.grad_clip, "a positive max gradient norm")
        check_range(self.sequence_length >= 1, f"{path}.sequence_length", self.sequence_length, "an integer >= 1")
        check_range(1 <= self.rollout_steps <= self.sequence_length, f"{path}.rollout_steps", self.rollout_steps,
                    f"an integer in [1, sequence_length={self.sequence_length}] "
                    "(sequence_length must be >= rollout_steps)")
        check_range(self.sequences_per_epoch >= 0, f"{path}.sequences_per_epoch", self.sequences_per_epoch,
                    "an integer >= 0 (0 = every training sequence once per epoch)")
        check_range(0.0 <= self.reward_oversample < 1.0, f"{path}.reward_oversample", self.reward_oversample,
                    "a fraction in [0, 1)")
        check_range(0.0 <= self.teacher_forcing_ratio <= 1.0, f"{path}.teacher_forcing_ratio",
                    self.teacher_forcing_ratio, "a probability in [0, 1]")
        for key in ("teacher_forcing_weight", "rollout_weight", "reward_weight", "continue_weight"):
            check_range(getattr(self, key) >= 0.0, f"{path}.{key}", getattr(self, key), "a loss weight >= 0")
        check_range(self.teacher_forcing_weight + self.rollout_weight > 0.0, f"{path}.teacher_forcing_weight",
                    self.teacher_forcing_weight, f"a weight > 0 here or in {path}.rollout_weight (both 0 would train "
                    "no dynamics)")
        for key in ("continue_pos_weight", "reward_pos_weight"):
            check_range(getattr(self, key) > 0.0, f"{path}.{key}", getattr(self, key),
                        "a positive weight of the rare steps (1 = plain mean)")


def scheduled_sampling_mask(batch: int, steps: int, ratio: float, device: torch.device | str = "cpu",
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool ``[B, T]``: True where the true latent is fed. Step 0 is always true (nothing predicts it);
    every later step is true with probability ``ratio``."""
    keep = torch.rand(batch, steps, device=device, generator=generator) < ratio  # [B, T]
    keep[:, 0] = True
    return keep


METRICS = ("loss", "latent_total", "teacher_forcing", "rollout", "reward", "continue")  # WorldModelLoss outputs


@dataclass
class LossWeights:
    teacher_forcing: float = 0.7
    rollout: float = 0.3
    reward: float = 1.0
    continuation: float = 1.0
    continue_pos: float = 1.0  # weight of life-loss steps in the continuation BCE
    reward_pos: float = 1.0  # weight of rewarding steps in the reward loss


class WorldModelLoss(nn.Module):
    """Teacher-forcing (with scheduled sampling) + rollout L1, reward and continuation losses.

    Args:
        weights: the loss weights (and the weights of the rare events in the head losses).
        teacher_forcing_ratio: probability of feeding the true ``z_t`` in training.
        rollout_steps: autoregressive steps of the rollout loss.
        heads_on_rollout: also score the reward and continuation heads on the rollout's imagined latents.
    """

    def __init__(self, weights: LossWeights, teacher_forcing_ratio: float = 0.8, rollout_steps: int = 4,
                 heads_on_rollout: bool = False):
        super().__init__()
        self.w = weights
        self.teacher_forcing_ratio = teacher_forcing_ratio
        self.rollout_steps = rollout_steps
        self.heads_on_rollout = heads_on_rollout

    @classmethod
    def from_config(cls, stage2: Stage2Config) -> WorldModelLoss:
        """The loss with the weights, scheduled sampling and rollout of ``stage2``."""
        return cls(LossWeights(stage2.teacher_forcing_weight, stage2.rollout_weight, stage2.reward_weight,
                               stage2.continue_weight, stage2.continue_pos_weight, stage2.reward_pos_weight),
                   stage2.teacher_forcing_ratio, stage2.rollout_steps, stage2.heads_on_rollout)

    def _head_losses(self, model: WorldModelTransformer, rew_pred: torch.Tensor, cont_logit: torch.Tensor,
                     rewards: torch.Tensor, life_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reward loss and continuation BCE over ``[B, T]``, rare events weighted by their pos weights.
        ``rew_pred`` is ``[B, T, K]`` logits (two-hot cross-entropy) or ``[B, T]`` symlog values (MSE)."""
        lost = life_loss.bool()
        w_r = torch.where(rewards != 0, self.w.reward_pos, 1.0)  # [B, T]
        target = symlog(rewards.float())  # [B, T]
        if rew_pred.ndim == target.ndim + 1:
            per_step = -(twohot(target, model.reward_support) * F.log_softmax(rew_pred, -1)).sum(-1)  # [B, T]
        else:
            per_step = (rew_pred - target) ** 2
        reward = (w_r * per_step).mean()
        w_c = torch.where(lost, self.w.continue_pos, 1.0)  # [B, T]
        cont = F.binary_cross_entropy_with_logits(cont_logit, (~lost).float(), weight=w_c)
        return reward, cont

    def forward(self, model: WorldModelTransformer, batch: dict[str, torch.Tensor], train: bool = True,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``z [B, T+1, D]``, ``actions [B, T]``, ``rewards [B, T]``, ``life_loss [B, T]``.

        ``train=False`` is the evaluation protocol: pure teacher forcing and a rollout from ``z_0``.
        Returns a dict of scalar tensors; ``loss`` carries the gradient.
        """
        z, a = batch["z"], batch["actions"]
        B, T1, D = z.shape
        T = T1 - 1
        R = self.rollout_steps
        assert a.shape == (B, T) and batch["rewards"].shape == (B, T) and batch["life_loss"].shape == (B, T), (
            f"stage-2 batch shapes: z {tuple(z.shape)}, actions {tuple(a.shape)}, rewards "
            f"{tuple(batch['rewards'].shape)}, life_loss {tuple(batch['life_loss'].shape)}; "
            "expected [B, T+1, D] and [B, T]")
        assert 1 <= R <= T, f"rollout_steps={R} must be in [1, T={T}]"
        z_in, z_next = z[:, :T], z[:, 1:]  # [B, T, D] each

        # Teacher forcing with scheduled sampling.
        ratio = self.teacher_forcing_ratio if train else 1.0
        keep_frac = torch.ones((), device=z.device)
        if ratio < 1.0:
            with torch.no_grad():
                pred_tf, _, _ = model(z_in, a)  # [B, T, D]: prediction of z_1 .. z_T
            keep = scheduled_sampling_mask(B, T, ratio, z.device, generator)  # [B, T]
            fed_pred = torch.cat([z_in[:, :1], pred_tf[:, :-1]], dim=1)  # [B, T, D]: prediction of z_t at t
            z_in = torch.where(keep[..., None], z_in, fed_pred)
            keep_frac = keep[:, 1:].float().mean() if T > 1 else keep_frac
        pred, rew_pred, cont_logit = model(z_in, a, reward_logits=True)
        tf = F.l1_loss(pred, z_next)

        # Rollout: c true steps, then R steps fed with the model's own predictions.
        if train:
            c = int(torch.randint(1, T - R + 2, (1,), generator=generator).item())
        else:
            c = 1
        rollout_pred = model.rollout(z[:, :c], a[:, :c + R - 1], R)  # [B, R, D]: predictions of z_c .. z_{c+R-1}
        rollout = F.l1_loss(rollout_pred, z[:, c:c + R])

        # Heads on the scheduled-sampling pass. Scoring them on the rollout with gradients through the imagined
        # chain was tried and pulled the latent predictions off (val latent loss rose); with heads_on_rollout the
        # rollout's latents are fed back detached, a pass whose only loss is the heads'.
        reward, cont = self._head_losses(model, rew_pred, cont_logit, batch["rewards"], batch["life_loss"])
        e = min(c + R, T)  # rollout positions with an action: the last imagined latent may have none
        if train and self.heads_on_rollout and e > c:
            fed = torch.cat([z[:, :c], rollout_pred.detach()], dim=1)[:, :e]  # [B, e, D]: true prefix, then imagined
            _, r_im, c_im = model(fed, a[:, :e], reward_logits=True)
            r2, c2 = self._head_losses(model, r_im[:, c:], c_im[:, c:], batch["rewards"][:, c:e],
                                       batch["life_loss"][:, c:e])
            reward, cont = 0.5 * (reward + r2), 0.5 * (cont + c2)
        w = self.w
        latent_total = w.teacher_forcing * tf + w.rollout * rollout
        loss = latent_total + w.reward * reward + w.continuation * cont
        return {"loss": loss, "latent_total": latent_total.detach(), "teacher_forcing": tf.detach(),
                "rollout": rollout.detach(), "reward": reward.detach(), "continue": cont.detach(),
                "tf_keep_fraction": keep_frac.detach()}


class LatentSequences:
    """Stage-2 sequences over cached latents.

    Args:
        latents: ``[G, D]`` latent of every global frame of ``store`` (an :class:`envs.dataset.EpisodeStore`).
        store: the episodes' actions, rewards, life-loss flags and RAM labels per global frame.
        starts: global frame index of ``s_0`` of each sequence (a TemporalSequenceDataset's ``starts``).
        sequence_length: T.

    ``batch(idx)`` gathers ``z [B, T+1, D]``, ``actions [B, T]``, ``rewards [B, T]``, ``life_loss [B, T]``,
    ``labels [B, T+1, 5]`` in one vectorised call.
    """

    def __init__(self, latents: torch.Tensor, store, starts: np.ndarray, sequence_length: int):
        assert latents.ndim == 2 and latents.shape[0] == store.num_frames, (
            f"latents {tuple(latents.shape)} do not cover the store's {store.num_frames} frames")
        self.latents, self.store, self.T = latents, store, sequence_length
        self.starts = np.asarray(starts, dtype=np.int64)
        self._actions = torch.from_numpy(store.actions)
        self._rewards = torch.from_numpy(store.rewards)
        self._life_loss = torch.from_numpy(store.life_loss)
        self._labels = torch.from_numpy(store.labels.astype(np.float32))

    def __len__(self) -> int:
        return len(self.starts)

    def scoring(self) -> np.ndarray:
        """Indices of the sequences with at least one rewarding step among their ``T`` transitions."""
        cs = np.concatenate([[0], np.cumsum(self.store.rewards != 0)])  # [G + 1]
        return np.flatnonzero(cs[self.starts + self.T] - cs[self.starts] > 0)

    def order(self, rng: np.random.Generator, n: int, oversample: float = 0.0) -> np.ndarray:
        """``n`` sequence indices for one epoch: a random permutation (cycled when ``n`` exceeds the data), with
        a share ``oversample`` of the slots replaced by sequences that hold a point (drawn with replacement)."""
        reps = -(-n // max(1, len(self))) if len(self) else 0
        order = np.concatenate([rng.permutation(len(self)) for _ in range(max(1, reps))])[:n]
        scoring = self.scoring() if oversample > 0 else np.empty(0, np.int64)
        k = int(round(oversample * n))
        if k and scoring.size:
            order[rng.choice(n, size=k, replace=False)] = rng.choice(scoring, size=k)
        return order

    def to(self, device: torch.device | str) -> LatentSequences:
        """Keep the latents and per-step tensors on ``device`` (a GPU: batches are then gathered there, with no
        host-to-device copy per step). Returns self."""
        self.latents = self.latents.to(device)
        self._actions, self._rewards = self._actions.to(device), self._rewards.to(device)
        self._life_loss, self._labels = self._life_loss.to(device), self._labels.to(device)
        return self

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        g = torch.from_numpy(self.starts[idx][:, None] + np.arange(self.T + 1)[None, :])  # [B, T+1]
        g = g.to(self.latents.device)
        t = g[:, :-1]  # [B, T]
        out = {"z": self.latents[g], "actions": self._actions[t], "rewards": self._rewards[t],
               "life_loss": self._life_loss[t], "labels": self._labels[g]}
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}


@torch.no_grad()
def evaluate_losses(model: WorldModelTransformer, loss_fn: WorldModelLoss, seqs: LatentSequences,
                    batch_size: int = 256, device: torch.device | str = "cpu",
                    max_sequences: int | None = None,
                    reduce: Callable[[dict[str, float]], dict[str, float]] | None = None,
                    share: tuple[int, int] = (0, 1)) -> dict[str, float]:
    """Mean losses in eval mode with the evaluation protocol (pure teacher forcing, rollout from z_0).

    Several processes can split the work: ``share=(rank, world)`` evaluates every ``world``-th batch from
    ``rank``, and ``reduce`` sums a dict of floats over the processes (an all-reduce); every process then returns
    the losses of all the sequences."""
    was_training = model.training
    model.eval()
    n = len(seqs) if max_sequences is None else min(len(seqs), max_sequences)
    idx = np.arange(n) if n == len(seqs) else np.linspace(0, len(seqs) - 1, n).astype(np.int64)
    sums = dict.fromkeys(METRICS, 0.0)
    rank, world = share
    for s in range(rank * batch_size, n, world * batch_size):
        b = seqs.batch(idx[s:s + batch_size], device)
        out = loss_fn(model, b, train=False)
        for k in METRICS:
            sums[k] += float(out[k].detach()) * len(b["actions"])
    model.train(was_training)
    if reduce is not None:
        sums = reduce(sums)
    return {k: v / max(1, n) for k, v in sums.items()}

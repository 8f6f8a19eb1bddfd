"""Stage 2: WorldModelTransformer, WorldModelLoss, latent cache, training/resume, public API, CLI (tiny preset)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from envs.errors import UserError
from worldmodel.dynamics_loss import LossWeights, WorldModelLoss, scheduled_sampling_mask
from worldmodel.transformer import WorldModelTransformer


def small_model(max_len: int = 4, seed: int = 0) -> WorldModelTransformer:
    torch.manual_seed(seed)
    m = WorldModelTransformer(latent_dim=8, num_actions=4, hidden_dim=16, depth=2, heads=2, mlp_dim=32, dropout=0.0,
                              max_len=max_len).eval()
    with torch.no_grad():  # make every part matter: distance biases and a non-trivial head
        m.time_bias.normal_()
        m.head.weight.normal_(std=0.3)
    return m


# ----------------------------------------------------------------------------------------------- transformer
def test_transformer_is_causal():
    m = small_model(max_len=6)
    z, a = torch.randn(3, 6, 8), torch.randint(0, 4, (3, 6))
    z2, a2 = z.clone(), a.clone()
    z2[:, 3:] += torch.randn(3, 3, 8)
    a2[:, 3] = (a2[:, 3] + 1) % 4
    with torch.no_grad():
        o1, o2 = m(z, a), m(z2, a2)
    for x1, x2 in zip(o1, o2):
        assert torch.allclose(x1[:, :3], x2[:, :3], atol=1e-6)  # earlier outputs unchanged
        assert not torch.allclose(x1[:, 3:], x2[:, 3:])  # later ones do change


@pytest.mark.parametrize("c,steps", [(1, 4), (3, 3), (2, 1)])
def test_rollout_with_kept_keys_equals_recomputing_the_fed_back_sequence(c, steps):
    """The rollout loss's cached rollout: the same predictions and gradients as running forward() on the growing
    fed-back sequence and keeping its last output (what the loss did before)."""
    m = small_model(max_len=6).train()
    z = torch.randn(3, c, 8, requires_grad=True)
    a = torch.randint(0, 4, (3, c + steps - 1))
    seq = z
    for k in range(steps):
        nxt, _, _ = m(seq, a[:, :c + k])
        seq = torch.cat([seq, nxt[:, -1:]], dim=1)
    ref, new = seq[:, c:], m.rollout(z, a, steps)
    assert new.shape == (3, steps, 8) and torch.allclose(ref, new, atol=1e-5)
    params = [z, *m.parameters()]
    for g_ref, g_new in zip(torch.autograd.grad(ref.square().sum(), params),
                            torch.autograd.grad(new.square().sum(), params)):
        assert torch.allclose(g_ref, g_new, atol=1e-4, rtol=1e-4)


def test_imagine_matches_teacher_forced_rollout_within_window():
    m = small_model(max_len=4)
    z0, a = torch.randn(5, 8), torch.randint(0, 4, (5, 4))
    with torch.no_grad():
        lat, rew, cont = m.imagine(z0, a)
        seq = z0[:, None]
        for k in range(4):
            nxt, r, c = m(seq, a[:, :k + 1])
            seq = torch.cat([seq, nxt[:, -1:]], 1)
    assert torch.allclose(lat, seq[:, 1:], atol=1e-5)
    assert torch.allclose(rew, r, atol=1e-5) and torch.allclose(cont, c, atol=1e-5)


def _sliding_window_reference(m: WorldModelTransformer, z0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Autoregressive rollout recomputing the full sequence with a banded causal mask of width max_len."""
    W, H = m.max_len, a.shape[1]
    seq = z0[:, None]
    for _ in range(H):
        T = seq.shape[1]
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        d = i - j
        bias = m.time_bias[:, :, d.clamp(0, W - 1)].masked_fill((d < 0) | (d >= W), float("-inf"))  # [L, h, T, T]
        x = m.embed(seq, a[:, :T])
        for blk, b in zip(m.blocks, bias):
            x = blk(x, b)[0]
        nxt, _, _ = m._heads(x[:, -1:], seq[:, -1:])
        seq = torch.cat([seq, nxt], 1)
    return seq[:, 1:]


def test_imagine_any_horizon_slides_the_window():
    m = small_model(max_len=3)
    z0, a = torch.randn(4, 8), torch.randint(0, 4, (4, 10))  # H = 10 > max_len = 3
    with torch.no_grad():
        lat, rew, cont = m.imagine(z0, a)
        ref = _sliding_window_reference(m, z0, a)
    assert lat.shape == (4, 10, 8) and rew.shape == (4, 10) and cont.shape == (4, 10)
    assert torch.allclose(lat, ref, atol=1e-5)


def test_imagine_with_real_context_continues_the_sequence():
    """Context steps are processed like imagined ones: the same result as rolling the whole sequence."""
    m = small_model(max_len=3)
    ctx, ctx_a = torch.randn(4, 5, 8), torch.randint(0, 4, (4, 5))
    z0, a = torch.randn(4, 8), torch.randint(0, 4, (4, 6))
    with torch.no_grad():
        lat, _, _ = m.imagine(z0, a, context=ctx, context_actions=ctx_a)
        # reference: the whole sequence context + z0 rolled with a banded mask, keeping the real context
        seq, acts = torch.cat([ctx, z0[:, None]], 1), torch.cat([ctx_a, a], 1)
        W = m.max_len
        for _ in range(a.shape[1]):
            T = seq.shape[1]
            d = torch.arange(T)[:, None] - torch.arange(T)[None, :]
            bias = m.time_bias[:, :, d.clamp(0, W - 1)].masked_fill((d < 0) | (d >= W), float("-inf"))
            x = m.embed(seq, acts[:, :T])
            for blk, b in zip(m.blocks, bias):
                x = blk(x, b)[0]
            seq = torch.cat([seq, m._heads(x[:, -1:], seq[:, -1:])[0]], 1)
        no_ctx, _, _ = m.imagine(z0, a)
    assert torch.allclose(lat, seq[:, 6:], atol=1e-5)
    assert not torch.allclose(lat, no_ctx, atol=1e-3)  # the context does matter


def test_imagine_shares_one_context_across_the_batch():
    m = small_model(max_len=4)
    ctx, ctx_a = torch.randn(1, 3, 8), torch.randint(0, 4, (1, 3))
    z0, a = torch.randn(5, 8), torch.randint(0, 4, (5, 6))
    with torch.no_grad():
        shared = m.imagine(z0, a, context=ctx, context_actions=ctx_a)
        repeated = m.imagine(z0, a, context=ctx.expand(5, -1, -1), context_actions=ctx_a.expand(5, -1))
    for x, y in zip(shared, repeated):
        assert torch.allclose(x, y, atol=1e-6)


def test_world_model_imagine_decodes_reward_and_continue():
    """The public API returns game points (symexp of the reward head) and P(no life lost) (sigmoid of the continue
    logit, the probability the continuation loss trains towards 0 on life-loss steps)."""
    from worldmodel.transformer import symexp
    from worldmodel.world_model import WorldModel

    m = small_model(max_len=4)
    with torch.no_grad():
        m.head.weight[8:].normal_(std=2.0)  # reward and continue outputs of both signs, well away from 0
    wm = WorldModel(torch.nn.Identity(), m)
    z0, a = torch.randn(6, 8), torch.randint(0, 4, (6, 5))
    lat, rew, cont = wm.imagine(z0, a)
    raw_lat, raw_rew, raw_logit = m.imagine(z0, a)
    assert (raw_rew > 0.5).any() and (raw_rew < -0.5).any() and (raw_logit.abs() > 1).any()
    assert torch.allclose(lat, raw_lat) and torch.allclose(rew, symexp(raw_rew)) and torch.allclose(
        cont, torch.sigmoid(raw_logit))
    lat_p, acts, rew_p, cont_p = wm.imagine_policy(z0, lambda z: a[:, 0], 1)  # the step-wise verb decodes alike
    assert torch.equal(acts[:, 0], a[:, 0])
    assert torch.allclose(rew_p, rew[:, :1]) and torch.allclose(cont_p, cont[:, :1], atol=1e-6)

    # Exact values: reward head -ln 3 -> -2 points; continue logit -ln 3 -> P(no life lost) = 1/4.
    with torch.no_grad():
        m.head.weight[8:].zero_()
        m.head.bias[8], m.head.bias[9] = -np.log(3.0), -np.log(3.0)
    _, rew, cont = wm.imagine(z0, a)
    _, _, rew_p, cont_p = wm.imagine_policy(z0, lambda z: a[:, 0], 2)
    for r, c in ((rew, cont), (rew_p, cont_p)):
        assert torch.allclose(r, torch.tensor(-2.0), atol=1e-5) and torch.allclose(c, torch.tensor(0.25), atol=1e-6)
    # The same sign convention as training: on life-loss steps the continuation BCE is -log(1 - cont).
    batch = {"z": torch.randn(2, 5, 8), "actions": torch.randint(0, 4, (2, 4)), "rewards": torch.zeros(2, 4),
             "life_loss": torch.ones(2, 4, dtype=torch.bool)}
    out = WorldModelLoss(LossWeights(), 1.0, 2)(m, batch, train=False)
    assert torch.isclose(out["continue"], torch.tensor(-np.log(0.75), dtype=torch.float32), atol=1e-6)


# ----------------------------------------------------------------------------------------------- loss
def test_scheduled_sampling_uses_the_configured_ratio():
    gen = torch.Generator().manual_seed(0)
    keep = scheduled_sampling_mask(20000, 8, 0.8, generator=gen)
    assert keep[:, 0].all()
    assert abs(keep[:, 1:].float().mean().item() - 0.8) < 0.005
    # Through the loss: the fraction of true latents fed matches the config.
    loss_fn = WorldModelLoss(LossWeights(), teacher_forcing_ratio=0.3, rollout_steps=2)
    batch = {"z": torch.randn(4000, 5, 8), "actions": torch.randint(0, 4, (4000, 4)), "rewards": torch.zeros(4000, 4),
             "life_loss": torch.zeros(4000, 4, dtype=torch.bool)}
    out = loss_fn(small_model(), batch, train=True, generator=torch.Generator().manual_seed(1))
    assert abs(out["tf_keep_fraction"].item() - 0.3) < 0.02
    assert loss_fn(small_model(), batch, train=False)["tf_keep_fraction"].item() == 1.0


def test_loss_values_of_a_copy_last_model():
    m = small_model()
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()  # z_next = z, reward 0 (symlog)
        m.head.bias[-1] = 2.0  # continue logit 2: P(no life lost) = sigmoid(2) at every step
    z = torch.randn(6, 5, 8)
    life = torch.zeros(6, 4, dtype=torch.bool)
    life[:, 2] = True  # 6 of 24 steps lose a life
    batch = {"z": z, "actions": torch.randint(0, 4, (6, 4)), "rewards": torch.full((6, 4), np.e - 1),
             "life_loss": life}
    out = WorldModelLoss(LossWeights(0.7, 0.3, 1.0, 1.0), 0.8, rollout_steps=3)(m, batch, train=False)
    tf = (z[:, :4] - z[:, 1:]).abs().mean()
    roll = (z[:, :1] - z[:, 1:4]).abs().mean()  # rollout from z_0 of a copy model stays at z_0
    # BCE against the label "continues": -log sigmoid(2) on the 18 kept steps, -log(1 - sigmoid(2)) on the 6 lost
    cont = (18 * np.log1p(np.exp(-2.0)) + 6 * np.log1p(np.exp(2.0))) / 24
    assert torch.isclose(out["teacher_forcing"], tf, atol=1e-6)
    assert torch.isclose(out["rollout"], roll, atol=1e-6)
    assert torch.isclose(out["reward"], torch.tensor(1.0), atol=1e-5)  # symlog(e - 1) = 1
    assert torch.isclose(out["continue"], torch.tensor(cont, dtype=torch.float32), atol=1e-6)
    assert torch.isclose(out["loss"], 0.7 * tf + 0.3 * roll + 1.0 + cont, atol=1e-5)


def test_rare_event_weights_scale_only_their_steps():
    m = small_model()
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()  # reward 0 (symlog)
        m.head.bias[-1] = 1.5  # continue logit 1.5: a life loss costs more than a kept life
    z = torch.randn(2, 5, 8)
    rewards = torch.zeros(2, 4)
    rewards[0, 1] = np.e - 1  # one rewarding step: squared error 1 in symlog units
    life = torch.zeros(2, 4, dtype=torch.bool)
    life[1, 2] = True  # one life loss: BCE log(1 + e^1.5), the 7 other steps log(1 + e^-1.5)
    batch = {"z": z, "actions": torch.randint(0, 4, (2, 4)), "rewards": rewards, "life_loss": life}
    plain = WorldModelLoss(LossWeights(), 0.8, rollout_steps=2)(m, batch, train=False)
    weighted = WorldModelLoss(LossWeights(continue_pos=10.0, reward_pos=10.0), 0.8, rollout_steps=2)(
        m, batch, train=False)
    kept, lost = np.log1p(np.exp(-1.5)), np.log1p(np.exp(1.5))
    assert torch.isclose(plain["reward"], torch.tensor(1 / 8), atol=1e-6)
    assert torch.isclose(weighted["reward"], torch.tensor(10 / 8), atol=1e-6)
    assert torch.isclose(plain["continue"], torch.tensor((7 * kept + lost) / 8, dtype=torch.float32), atol=1e-6)
    assert torch.isclose(weighted["continue"], torch.tensor((7 * kept + 10 * lost) / 8, dtype=torch.float32),
                         atol=1e-6)


def test_heads_on_rollout_add_no_gradient_to_the_latent_chain():
    """With heads_on_rollout the extra pass is fed the rollout's latents detached: its reward and continuation
    losses train the model through that pass only, never back through the chain of imagined latents."""
    from worldmodel.transformer import symlog

    m = small_model()
    z, a = torch.randn(3, 5, 8), torch.randint(0, 4, (3, 4))
    rewards, life = torch.randn(3, 4), torch.rand(3, 4) < 0.3
    batch = {"z": z, "actions": a, "rewards": rewards, "life_loss": life}
    w = LossWeights(0.0, 0.0, 1.0, 1.0)  # only the heads' losses carry gradient
    # rollout_steps = T = 4: the true prefix is z_0 only (c = 1), no scheduled sampling (ratio 1)
    out = WorldModelLoss(w, 1.0, 4, heads_on_rollout=True)(m, batch, generator=torch.Generator().manual_seed(1))
    base = WorldModelLoss(w, 1.0, 4)(m, batch, generator=torch.Generator().manual_seed(1))
    assert torch.isclose(out["rollout"], base["rollout"])
    assert not torch.isclose(out["continue"], base["continue"])  # the imagined positions are scored too
    grad = torch.autograd.grad(out["loss"], list(m.parameters()), allow_unused=True)

    def reference(chain_grad: bool) -> tuple[torch.Tensor | None, ...]:
        """Half the heads' losses on the true inputs, half on z_0 + the imagined z_1 .. z_3."""
        with torch.set_grad_enabled(chain_grad):
            seq = z[:, :1]
            for k in range(4):
                seq = torch.cat([seq, m(seq, a[:, :k + 1])[0][:, -1:]], 1)
        heads = []
        for inp, s in ((z[:, :4], slice(0, 4)), (seq[:, :4], slice(1, 4))):
            _, r, c = m(inp, a)
            heads.append(((r[:, s] - symlog(rewards[:, s])) ** 2).mean()
                         + torch.nn.functional.binary_cross_entropy_with_logits(c[:, s], (~life[:, s]).float()))
        loss = 0.5 * (heads[0] + heads[1])
        assert torch.isclose(loss, out["reward"] + out["continue"], atol=1e-6)
        return torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)

    def same(g1, g2) -> bool:
        return all((x is None and y is None) or (x is not None and y is not None and torch.allclose(x, y, atol=1e-6))
                   for x, y in zip(g1, g2))

    assert same(grad, reference(chain_grad=False))
    assert not same(grad, reference(chain_grad=True))  # through the chain the gradient would differ
    assert all(torch.isfinite(g).all() for g in grad if g is not None)


def test_roc_auc_hand_computed_with_ties():
    from experiments.report_stage2 import roc_auc

    # positives 0.4, 0.4, 0.8, 0.95 against negatives 0.1, 0.4, 0.9: pairs won 1.5 + 1.5 + 2 + 3 (a tie is 1/2)
    scores = np.array([0.4, 0.1, 0.8, 0.4, 0.9, 0.95, 0.4])
    labels = np.array([1, 0, 1, 0, 0, 1, 1], dtype=bool)
    assert roc_auc(scores, labels) == pytest.approx(8 / 12)
    assert roc_auc(-scores, labels) == pytest.approx(4 / 12)  # reversed scores: the complement
    assert roc_auc(np.zeros(7), labels) == pytest.approx(0.5)  # all tied: chance
    assert roc_auc(np.array([0.3, 0.2, 0.9, 0.7]), np.array([0, 0, 1, 1])) == 1.0
    assert np.isnan(roc_auc(scores, np.ones(7, dtype=bool))) and np.isnan(roc_auc(scores, np.zeros(7, dtype=bool)))


def test_steering_report_reads_the_survival_preference():
    from types import SimpleNamespace

    from experiments.report_stage2 import steering_report

    rng = np.random.default_rng(0)
    n = 400
    paddle = rng.integers(60, 180, n)
    ball_x = rng.integers(60, 190, n)
    ball_y = np.tile([100, 110, 120, 130], n // 4)  # descending in every frame but each fourth one's successor
    labels = np.stack([paddle, ball_x, ball_y, np.full(n, 5), np.zeros(n)], 1).astype(np.int16)
    store = SimpleNamespace(labels=labels, episode_of=np.zeros(n, np.int64), num_frames=n)
    side = torch.from_numpy(np.sign(ball_x - (paddle + 8)).astype(np.float32))
    latents = side[:, None].repeat(1, 3)  # the latent knows the ball's side

    class Model:  # survives only by moving toward the ball (RIGHT = 2 when the ball is right)
        def __init__(self, steer: float):
            self.steer = steer

        def imagine(self, z0, actions):
            right = (actions == 2).float() * 2 - 1  # +1 RIGHT, -1 LEFT
            good = (right * z0[:, :1] > 0).float()
            cont = 0.9 + self.steer * 0.1 * (2 * good - 1)
            return z0[:, None].repeat(1, actions.shape[1], 1), torch.zeros(actions.shape), cont

    good = steering_report(Model(1.0), latents, store, np.array([0]), horizon=4)
    assert good["frames"] > 50 and good["agreement"] == 1.0 and good["gap_weighted_agreement"] == 1.0
    bad = steering_report(Model(-1.0), latents, store, np.array([0]), horizon=4)
    assert bad["agreement"] == 0.0
    blind = steering_report(Model(0.0), latents, store, np.array([0]), horizon=4)
    assert blind["mean_gap"] == 0.0 and 0.0 < blind["agreement"] < 1.0

# ----------------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def stage1_ckpt(tiny_data, tmp_path_factory):
    from experiments.config import load_config
    from experiments.pretrain import pretrain_stage1

    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config("tiny", ["run.wandb=disabled", f"run.runs_dir={runs}",
                               "vjepa2_world_model.stage1.num_epochs=1"])
    return pretrain_stage1(cfg, data=tiny_data, progress=False, echo=lambda s: None)["best_checkpoint"]


def tiny_cfg(runs, *extra):
    from experiments.config import load_config

    return load_config("tiny", ["run.wandb=disabled", f"run.runs_dir={runs}", *extra])


@pytest.fixture(scope="module")
def stage2_run(stage1_ckpt, tiny_data, tmp_path_factory):
    """A stage-2 run interrupted after one epoch, then resumed to the end."""
    from experiments.pretrain import pretrain_stage2

    runs = tmp_path_factory.mktemp("runs2")
    cfg = tiny_cfg(runs)
    first = pretrain_stage2(cfg, stage1_checkpoint=stage1_ckpt, data=tiny_data, max_epochs=1, progress=False,
                            echo=lambda s: None)
    second = pretrain_stage2(cfg, resume=first["run_dir"], progress=False, echo=lambda s: None)
    return first, second


def test_resume_continues_from_the_saved_epoch(stage2_run):
    first, second = stage2_run
    assert first["epochs"] == 1 and not first["finished"]
    assert second["resumed_from"] == {"epoch": 1, "step": first["steps"]}  # the checkpoint was loaded
    assert second["epochs"] == 2 and second["steps"] == 2 * first["steps"] and second["finished"]
    assert second["latent_cache"]["rebuilt"] is False  # same encoder, same data: cache reused
    assert [h["epoch"] for h in second["history"]] == [1, 2]


def test_encoder_frozen_and_unchanged(stage1_ckpt, stage2_run):
    from worldmodel import load_encoder, load_world_model
    from worldmodel.latent_cache import encoder_fingerprint

    wm = load_world_model(stage2_run[1]["latest_checkpoint"])
    enc1 = load_encoder(stage1_ckpt)
    assert encoder_fingerprint(wm.encoder) == encoder_fingerprint(enc1)
    assert all(not p.requires_grad and p.grad is None for p in wm.encoder.parameters())


def test_encoder_gets_no_gradient_in_a_training_step(stage1_ckpt, tiny_data):
    from envs.dataset import TemporalSequenceDataset
    from envs.replay import load_episodes
    from worldmodel import load_encoder

    enc = load_encoder(stage1_ckpt)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    ds = TemporalSequenceDataset(load_episodes(tiny_data)[0], 4)
    b = ds.batch(np.arange(8))
    z = enc(b["obs"].flatten(0, 1)).view(8, 5, -1)  # the frozen encoder inside the graph
    m = WorldModelTransformer(z.shape[-1], 4, 16, 1, 2, 32, 0.0, 4)
    out = WorldModelLoss(LossWeights(), 0.8, 2)(m, {"z": z, "actions": b["actions"], "rewards": b["rewards"],
                                                    "life_loss": b["life_loss"]})
    out["loss"].backward()
    assert not z.requires_grad and all(p.grad is None for p in enc.parameters())
    assert any(p.grad is not None for p in m.parameters())
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_validation_shares_add_up_to_the_whole(tiny_data):
    """Under torchrun each rank validates every world-th batch and an all-reduce sums them: the shares' parts
    add up to the one-process validation (each part is its share's loss sums over all the sequences)."""
    from envs.dataset import TemporalSequenceDataset
    from envs.replay import load_episodes
    from worldmodel.dynamics_loss import LatentSequences, evaluate_losses

    ds = TemporalSequenceDataset(load_episodes(tiny_data)[0], 4)
    torch.manual_seed(0)
    seqs = LatentSequences(torch.randn(ds.store.num_frames, 8), ds.store, ds.starts[:23], 4)
    m, loss_fn = small_model(), WorldModelLoss(LossWeights(), 0.8, rollout_steps=2)
    whole = evaluate_losses(m, loss_fn, seqs, batch_size=5)
    parts = [evaluate_losses(m, loss_fn, seqs, batch_size=5, share=(r, 3)) for r in range(3)]
    assert all(p["teacher_forcing"] > 0 for p in parts), "every share got batches"
    for k, v in whole.items():
        assert sum(p[k] for p in parts) == pytest.approx(v, rel=1e-6), k


def test_latent_cache_rebuilt_for_a_new_checkpoint(stage1_ckpt, tiny_data, tmp_path):
    from envs.dataset import EpisodeStore
    from envs.replay import load_episodes
    from worldmodel import load_encoder
    from worldmodel.latent_cache import cached_latents

    episodes, manifest = load_episodes(tiny_data)
    store = EpisodeStore(episodes)
    enc = load_encoder(stage1_ckpt)
    z1, info1 = cached_latents(enc, store, manifest, tmp_path, progress=False)
    z2, info2 = cached_latents(enc, store, manifest, tmp_path, progress=False)
    assert info1["rebuilt"] and not info2["rebuilt"] and torch.equal(z1, z2)
    w = enc.vit.patch_embed.weight
    w0 = w.detach().clone()
    with torch.no_grad():
        w.add_(torch.randn_like(w) * 0.05)  # another checkpoint
    z3, info3 = cached_latents(enc, store, manifest, tmp_path, progress=False)
    assert info3["rebuilt"] and info3["path"] != info1["path"] and not torch.equal(z1, z3)
    manifest2 = {**manifest, "episodes": manifest["episodes"][::-1]}  # another data manifest
    _, info4 = cached_latents(enc, store, manifest2, tmp_path, progress=False)
    assert info4["rebuilt"]
    open(info1["path"], "wb").write(b"garbage")  # a corrupt cache is rebuilt, not trusted
    with torch.no_grad():
        w.copy_(w0)  # the first checkpoint again
    _, info5 = cached_latents(enc, store, manifest, tmp_path, progress=False)
    assert info5["rebuilt"]


def test_public_api_shapes(stage2_run):
    from worldmodel import load_world_model

    wm = load_world_model(stage2_run[1]["best_checkpoint"])
    obs = np.random.default_rng(0).integers(0, 255, (3, 4, 64, 64), dtype=np.uint8)
    z = wm.encode(obs)
    assert z.shape == (3, wm.latent_dim) and z.dtype == torch.float32 and not z.requires_grad
    H = 3 * wm.context_length + 1  # longer than the training sequences
    lat, rew, cont = wm.imagine(z, torch.randint(0, wm.num_actions, (3, H)))
    assert lat.shape == (3, H, wm.latent_dim) and rew.shape == (3, H) and cont.shape == (3, H)
    assert ((cont >= 0) & (cont <= 1)).all() and torch.isfinite(lat).all()
    lat1, _, _ = wm.imagine(z, np.zeros((3, 1), dtype=np.int64))
    assert lat1.shape == (3, 1, wm.latent_dim)


def test_bad_checkpoint_kinds(stage1_ckpt, stage2_run, tiny_data, tmp_path):
    from experiments.pretrain import pretrain_stage2
    from experiments.report_stage2 import evaluate_stage2
    from worldmodel import load_world_model

    with pytest.raises(UserError, match="'stage2' checkpoint"):
        load_world_model(stage1_ckpt)
    fake = tmp_path / "agent.pt"
    torch.save({"kind": "agent", "config": {}, "state": {}, "world_model": ""}, fake)
    with pytest.raises(UserError, match="is a 'agent' checkpoint; Stage 2 needs the 'stage1' checkpoint"):
        pretrain_stage2(tiny_cfg(tmp_path), stage1_checkpoint=fake, data=tiny_data, progress=False,
                        echo=lambda s: None)
    with pytest.raises(UserError, match="latent size 32 but models.shared_latent_dim is 16"):
        pretrain_stage2(tiny_cfg(tmp_path, "models.shared_latent_dim=16"), stage1_checkpoint=stage1_ckpt,
                        data=tiny_data, progress=False, echo=lambda s: None)
    with pytest.raises(UserError, match="needs a 'stage2'"):
        evaluate_stage2(stage1_ckpt)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(open(stage2_run[1]["best_checkpoint"], "rb").read()[:1000])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_world_model(bad)


def test_stage2_refit_over_a_world_models_encoder(stage2_run, tmp_path):
    """A Stage-2 checkpoint as --stage1-checkpoint: new dynamics over its encoder, its data folder by default."""
    from experiments.pretrain import pretrain_stage2
    from worldmodel import load_world_model
    from worldmodel.latent_cache import encoder_fingerprint

    old = stage2_run[1]["best_checkpoint"]
    out = pretrain_stage2(tiny_cfg(tmp_path), stage1_checkpoint=old, max_epochs=1, progress=False,
                          echo=lambda s: None)
    a, b = load_world_model(old), load_world_model(out["latest_checkpoint"])
    assert encoder_fingerprint(a.encoder) == encoder_fingerprint(b.encoder)
    assert out["latent_cache"]["rebuilt"] is False  # the same encoder over the same data: its cache is reused
    assert out["epochs"] == 1 and out["steps"] > 0


def test_cli_stage2_pretrain_and_evaluate(cli, stage1_ckpt, tiny_data, tmp_path):
    res = cli("pretrain", "--stage", "2", "--preset", "tiny", "--wandb", "disabled", "--stage1-checkpoint",
              str(stage1_ckpt), "--data", str(tiny_data), "--set", f"run.runs_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-2000:]
    ckpts = list(tmp_path.glob("pretrain/*/stage2/best.pt"))
    assert len(ckpts) == 1
    res = cli("evaluate", "--stage", "2", "--checkpoint", str(ckpts[0]))
    assert res.returncode == 0, res.stderr[-2000:]
    for text in ("Total Loss", "Teacher Forcing Loss", "Rollout Loss", "Val/Train Ratio", "copy_last",
                 "mean_latent", "precision", "AUC", "paddle_x imagined"):
        assert text in res.stdout
    report = json.loads((ckpts[0].parent / "best_eval_stage2.json").read_text())
    hist = report["open_loop_with_history"]
    assert hist["windows"] > 0 and "with history" in res.stdout
    assert len(hist["with_history"]) == len(hist["no_history"]) == 16
    assert hist["with_history"] != hist["no_history"]  # the context changes the rollout
    res = cli("evaluate", "--stage", "2", "--checkpoint", str(stage1_ckpt))
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_cli_pretrain_both_stages_in_one_run(cli, tiny_data, tmp_path):
    res = cli("pretrain", "--preset", "tiny", "--wandb", "disabled", "--data", str(tiny_data), "--set",
              f"run.runs_dir={tmp_path}", "--set", "vjepa2_world_model.stage1.num_epochs=1", "--set",
              "vjepa2_world_model.stage2.num_epochs=1")
    assert res.returncode == 0, res.stderr[-2000:]
    runs = list(tmp_path.glob("pretrain/*"))
    assert len(runs) == 1  # both stages in one run folder
    assert (runs[0] / "stage1" / "best.pt").is_file() and (runs[0] / "stage2" / "best.pt").is_file()
    assert "stage 2 done" in res.stdout

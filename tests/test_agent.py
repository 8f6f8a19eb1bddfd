"""Actor-critic in imagination: units, a toy MDP with a known optimum, the wrapper, training and resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agent.actor_critic import (
    ActorCritic,
    ImaginationStarts,
    RealTransitions,
    ReturnNormalizer,
    history_frames,
    imagine_with_policy,
    lambda_returns,
    real_returns,
)
from agent.player import ActorCriticAgent, build_agent_nets, load_agent, load_agent_checkpoint
from envs.breakout import NUM_ACTIONS
from envs.errors import UserError
from envs.replay import Episode
from experiments.config import load_config

from .conftest import save_untrained_world_model


# ------------------------------------------------------------------------------------------ toy models
class ToyChainMDP:
    """Two latent states with a known optimal policy.

    In s0 action 0 pays 1 and moves to s1; in s1 action 1 pays 1 and moves back to s0. Action 2
    waits (no reward, no loss). Action 3 pays 2 at once but ends the trajectory (continue 0), and so
    does the wrong one of actions 0/1 (without reward). Optimal: alternate 0, 1, 0, ... forever
    (about 1 per step), never the tempting 2-point trap.
    """

    latent_dim, num_actions = 6, 4

    def __init__(self):
        self.states = torch.eye(self.latent_dim)[:2]  # [2, D]

    def encode(self, state_ids) -> torch.Tensor:
        return self.states[torch.as_tensor(state_ids).long()]

    @torch.no_grad()
    def imagine(self, z0, actions):
        b, h = actions.shape
        s = z0[:, 1].round().long()  # [B] state index
        lat, rew, con = [], [], []
        for t in range(h):
            a = actions[:, t]
            good, wait, trap = a == s, a == 2, a == 3
            rew.append(good.float() + 2.0 * trap.float())
            con.append((good | wait).float())
            s = torch.where(good, 1 - s, s)
            lat.append(self.states[s])
        return torch.stack(lat, 1), torch.stack(rew, 1), torch.stack(con, 1)


class LinearObsModel(nn.Module):
    """A small deterministic model over real observations (plumbing tests): pooled pixels -> z, linear dynamics."""

    def __init__(self, latent_dim: int = 8, num_actions: int = NUM_ACTIONS):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.latent_dim, self.num_actions = latent_dim, num_actions
        self.proj = nn.Parameter(torch.randn(64, latent_dim, generator=g) * 0.3)
        self.dyn = nn.Parameter(torch.randn(latent_dim, latent_dim, generator=g) * 0.3)
        self.act_emb = nn.Parameter(torch.randn(num_actions, latent_dim, generator=g))
        self.head = nn.Parameter(torch.randn(latent_dim, 2, generator=g))

    @torch.no_grad()
    def encode(self, obs):
        x = torch.as_tensor(np.asarray(obs)).float() / 255.0  # [B, 4, 64, 64]
        x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # [B, 64]
        return torch.tanh(x @ self.proj)

    @torch.no_grad()
    def imagine(self, z0, actions):
        z, lat = z0, []
        for t in range(actions.shape[1]):
            z = torch.tanh(z @ self.dyn + self.act_emb[actions[:, t]])
            lat.append(z)
        lat = torch.stack(lat, 1)  # [B, H, D]
        out = lat @ self.head  # [B, H, 2]
        return lat, torch.sigmoid(out[..., 0]), torch.sigmoid(out[..., 1] + 3.0)


def agent_cfg(*overrides):
    return load_config("tiny", ["run.wandb=disabled", *overrides])


# ------------------------------------------------------------------------------------------ units
def test_lambda_returns_known_values():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    c = torch.ones(1, 3)
    v = torch.tensor([[0.0, 10.0, 20.0, 30.0]])
    # lambda = 1: discounted Monte Carlo return with the bootstrap V(z_H) at the end.
    g = 0.5
    mc = lambda_returns(r, c, v, g, 1.0)
    assert torch.allclose(mc[0], torch.tensor([1 + g * 2 + g**2 * 3 + g**3 * 30, 2 + g * 3 + g**2 * 30, 3 + g * 30]))
    # lambda = 0: one-step TD targets r_h + g V(z_{h+1}).
    td = lambda_returns(r, c, v, g, 0.0)
    assert torch.allclose(td[0], torch.tensor([1 + g * 10, 2 + g * 20, 3 + g * 30]))
    # A zero continuation cuts everything after that step's reward.
    c_cut = torch.tensor([[1.0, 0.0, 1.0]])
    cut = lambda_returns(r, c_cut, v, g, 0.95)
    assert cut[0, 1] == 2.0
    assert torch.isclose(cut[0, 0], torch.tensor(1 + g * (0.05 * 10 + 0.95 * 2.0)))
    with pytest.raises(AssertionError, match="lambda_returns shapes"):
        lambda_returns(r, c, v[:, :3], g, 0.95)


def test_return_normalizer_ema_and_floor():
    n = ReturnNormalizer(decay=0.5)
    ret = torch.linspace(0, 100, 101)
    n.update(ret)  # first batch sets the range
    assert torch.isclose(n.lo, torch.tensor(5.0)) and torch.isclose(n.hi, torch.tensor(95.0))
    n.update(torch.zeros(101))
    assert torch.isclose(n.lo, torch.tensor(2.5)) and torch.isclose(n.hi, torch.tensor(47.5))
    assert torch.isclose(n.scale, torch.tensor(45.0))
    small = ReturnNormalizer()
    small.update(torch.full((10,), 0.3))
    assert small.scale == 1.0  # never amplifies small returns


def test_stepwise_rollout_matches_imagine():
    model = LinearObsModel()
    z0 = torch.randn(5, model.latent_dim)
    g = torch.Generator().manual_seed(1)
    traj = imagine_with_policy(model, z0, lambda z: torch.randint(0, 4, (z.shape[0],), generator=g), 6)
    assert traj["latents"].shape == (5, 7, 8) and traj["actions"].shape == (5, 6)
    lat, rew, con = model.imagine(z0, traj["actions"])
    assert torch.allclose(traj["latents"][:, 1:], lat) and torch.allclose(traj["rewards"], rew)
    assert torch.allclose(traj["continues"], con)
    assert torch.equal(traj["latents"][:, 0], z0)


def test_world_model_imagine_policy_matches_imagine():
    """The step-wise rollout of WorldModel (added for the actor-critic) agrees with imagine(), past the window."""
    from experiments.builders import build_world_model_transformer
    from worldmodel.world_model import WorldModel

    cfg = agent_cfg()
    torch.manual_seed(0)
    dyn = build_world_model_transformer(cfg)
    with torch.no_grad():
        dyn.head.weight.normal_(0, 0.3)  # move away from copy-last so the check has something to compare
        for name, buf in dyn.named_buffers():  # latent normalisation statistics, when the model has them
            if name in ("z_mean", "z_std", "dz_std"):
                buf.uniform_(0.5, 2.0)
    wm = WorldModel(nn.Identity(), dyn)
    h = dyn.max_len + 3
    z0 = torch.randn(4, wm.latent_dim)
    g = torch.Generator().manual_seed(2)
    ac = ActorCritic(wm.latent_dim, wm.num_actions, cfg.agent)
    traj = imagine_with_policy(wm, z0, lambda z: torch.randint(0, 4, (z.shape[0],), generator=g), h)
    lat, rew, con = wm.imagine(z0, traj["actions"])
    assert torch.allclose(traj["latents"][:, 1:], lat, atol=1e-5) and torch.allclose(traj["rewards"], rew, atol=1e-5)
    assert torch.allclose(traj["continues"], con, atol=1e-6)
    out = ac.update(wm, z0)  # the real model's inference-mode outputs are usable for training
    assert np.isfinite(out["train/actor_loss"])


def test_update_leaves_world_model_untouched():
    model = LinearObsModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ac = ActorCritic(model.latent_dim, model.num_actions, agent_cfg().agent)
    critic_before = [p.clone() for p in ac.critic.parameters()]
    out = ac.update(model, torch.randn(16, model.latent_dim))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"world model weight {k} changed"
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, ac.critic.parameters()))
    for key in ("train/imagined_return", "train/entropy", "train/actor_loss", "train/critic_loss",
                "train/return_scale"):
        assert isinstance(out[key], float) and np.isfinite(out[key])


def _assert_one_ema_step(ac, ema, online, decay):
    """After one update, ``ema`` is ``decay * before + (1 - decay) * online`` and takes no gradient."""
    before = [p.clone() for p in ema(ac).parameters()]
    ac.update(LinearObsModel(), torch.randn(16, 8))
    for b, e, p in zip(before, ema(ac).parameters(), online(ac).parameters(), strict=True):
        assert torch.allclose(e, decay * b + (1 - decay) * p, atol=1e-6)
    assert all(not p.requires_grad for p in ema(ac).parameters())


def test_slow_critic_is_an_ema():
    ac = ActorCritic(8, 4, agent_cfg("agent.critic_ema_decay=0.9").agent)
    _assert_one_ema_step(ac, lambda a: a.slow_critic, lambda a: a.critic, 0.9)


def test_playing_actor_is_an_ema_kept_by_checkpoints_and_loaded_for_play():
    ac = ActorCritic(8, 4, agent_cfg("agent.actor_ema_decay=0.75").agent)
    _assert_one_ema_step(ac, lambda a: a.actor_ema, lambda a: a.actor, 0.75)
    assert ac.play_actor is ac.actor_ema
    assert any(not torch.equal(e, p) for e, p in zip(ac.actor_ema.parameters(), ac.actor.parameters()))
    # A resumed run continues the same EMA; a player loads the EMA's weights, not the last iterate's.
    again = ActorCritic(8, 4, ac.cfg)
    again.load_training_state(ac.training_state())
    assert all(torch.equal(a, b) for a, b in zip(again.actor_ema.parameters(), ac.actor_ema.parameters()))
    ckpt = {"state": ac.training_state(), "config": agent_cfg("agent.actor_ema_decay=0.75").to_dict()}
    actor, _ = build_agent_nets(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(actor.parameters(), ac.actor_ema.parameters()))
    off = ActorCritic(8, 4, agent_cfg().agent)  # off (the default): the actor itself plays, nothing extra is saved
    assert off.play_actor is off.actor and "actor_ema" not in off.training_state()
    with pytest.raises(UserError, match="actor_ema_decay"):
        agent_cfg("agent.actor_ema_decay=1.0")


def test_real_returns_known_values():
    """Discounted, shaped like imagination: a life loss costs the penalty and ends the sum, so does the game's end."""
    rew = np.array([1.0, 0.0, 0.0, 4.0, 0.0], np.float32)
    lost = np.array([0, 1, 0, 0, 0], bool)
    end = np.array([0, 0, 0, 0, 1], bool)
    g = real_returns(rew, lost, end, discount=0.5, life_loss_penalty=1.0)
    np.testing.assert_allclose(g, [1.0 + 0.5 * -1.0, -1.0, 0.5 * 4.0, 4.0, 0.0])


def _episode(actions, rewards, life_loss=None):
    L = len(actions)
    zeros = np.zeros(L, bool)
    return Episode(frames=np.zeros((L + 1, 8, 8), np.uint8), actions=np.asarray(actions, np.int64),
                   rewards=np.asarray(rewards, np.float32), terminated=zeros, truncated=zeros,
                   life_loss=zeros if life_loss is None else np.asarray(life_loss, bool),
                   labels=np.zeros((L + 1, 5), np.int16))


def test_real_transitions_align_frames_actions_and_returns():
    cfg = agent_cfg("agent.discount=0.5", "agent.life_loss_penalty=0").agent
    eps = [_episode([1, 2], [0.0, 2.0]), _episode([3, 0, 1], [4.0, 0.0, 0.0])]  # frames 0-2 and 3-6
    z = torch.arange(7, dtype=torch.float32)[:, None].repeat(1, 3)  # row g holds g: which frame it is
    real = RealTransitions.from_episodes(eps, z, cfg)
    assert len(real) == 5  # each episode's last frame (2 and 6) has no action
    assert real.latents[:, 0].tolist() == [0, 1, 3, 4, 5]
    assert real.actions.tolist() == [1, 2, 3, 0, 1]
    np.testing.assert_allclose(real.returns.numpy(), [1.0, 2.0, 4.0, 0.0, 0.0])
    # a subset of frames (train-agent's start frames): latents row i is frame index[i]
    index = np.array([6, 1, 2, 3])
    sub = RealTransitions.from_episodes(eps, z[index], cfg, frame_index=index)
    assert sub.latents[:, 0].tolist() == [1, 3] and sub.actions.tolist() == [2, 3]
    np.testing.assert_allclose(sub.returns.numpy(), [2.0, 4.0])


class FlatModel:
    """Imagination that tells actions apart in nothing: the latent stays, no reward, no life lost."""

    latent_dim, num_actions = 4, 4

    @torch.no_grad()
    def imagine(self, z0, actions):
        b, h = actions.shape
        return z0[:, None].expand(b, h, -1).clone(), torch.zeros(b, h), torch.ones(b, h)


def test_self_imitation_learns_the_real_action_imagination_cannot_tell():
    """Where the model is flat, only the real returns say which action paid; with the term off nothing moves."""
    z = torch.eye(4)[:2]  # two states
    # state 0: action 2 paid 1, action 0 lost 1 (below any critic: no push); state 1: action 1 paid 1
    real = RealTransitions(torch.cat([z, z[:1]]).repeat(32, 1), torch.tensor([2, 1, 0] * 32),
                           torch.tensor([1.0, 1.0, -1.0] * 32))
    probs = {}
    for coef in (0.0, 1.0):
        cfg = agent_cfg("agent.actor_lr=0.001", "agent.critic_lr=0.001", "agent.imagine_horizon=3",
                        f"agent.self_imitation={coef}", "agent.entropy_coef=0").agent
        torch.manual_seed(0)
        ac = ActorCritic(4, 4, cfg)
        ac.seed(0)
        for _ in range(150):
            out = ac.update(FlatModel(), z, real)
        probs[coef] = ac.actor.log_probs(z).exp().detach()
        if coef:
            assert 0.0 < out["train/sil_positive"] <= 1.0
            # state 0 paid 1 or lost 1 in the real game: only the better return lifts V (unclipped it would be ~0)
            assert ac.value(z[:1]).item() > 0.5
        else:
            assert "train/sil_positive" not in out
    assert probs[1.0][0, 2] > 0.8 and probs[1.0][1, 1] > 0.8, probs[1.0]  # each state: the action that paid
    assert probs[0.0].max() - probs[0.0].min() < 0.05  # off: a flat model teaches nothing


def test_self_imitation_off_draws_nothing_from_the_generator():
    """The default (0) leaves an update bit for bit as without real transitions (old runs reproduce)."""
    real = RealTransitions(torch.randn(10, 8), torch.zeros(10, dtype=torch.long), torch.ones(10))
    outs = []
    for r in (None, real):
        torch.manual_seed(0)
        ac = ActorCritic(8, 4, agent_cfg().agent)
        ac.seed(3)
        ac.update(LinearObsModel(), torch.randn(16, 8), r)
        outs.append([p.detach().clone() for p in ac.actor.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


# ------------------------------------------------------------------------------------------ behaviour
def test_life_loss_scale_reads_the_model_pessimistically():
    """agent.life_loss_scale = k: the same rollout, its life-loss probability read as min(1, k * p)."""
    class SteadyRisk(LinearObsModel):  # loses a life with probability 0.1 at every step
        def imagine(self, z0, actions):
            lat, rew, _ = super().imagine(z0, actions)
            return lat, rew, torch.full_like(rew, 0.9)

    metrics = {}
    for k in (1.0, 2.0, 50.0):
        ac = ActorCritic(8, 4, agent_cfg(f"agent.life_loss_scale={k}").agent)
        metrics[k] = ac.update(SteadyRisk(), torch.randn(16, 8))
    assert metrics[1.0]["train/continue"] == pytest.approx(0.9)
    assert metrics[2.0]["train/continue"] == pytest.approx(0.8)
    assert metrics[50.0]["train/continue"] == 0.0  # clamped at a certain loss, never negative
    with pytest.raises(UserError, match="agent.life_loss_scale"):
        agent_cfg("agent.life_loss_scale=0.5")


def test_actor_learns_toy_mdp_optimum():
    torch.manual_seed(0)
    cfg = agent_cfg("agent.actor_lr=0.001", "agent.critic_lr=0.001", "agent.imagine_horizon=8").agent
    mdp = ToyChainMDP()
    ac = ActorCritic(mdp.latent_dim, mdp.num_actions, cfg)
    ac.seed(0)
    z0 = mdp.encode(torch.arange(64) % 2)  # both states as starts
    first = ac.update(mdp, z0)
    for _ in range(250):
        last = ac.update(mdp, z0)
    probs = ac.actor.log_probs(mdp.states).exp().detach()  # [2 states, 4 actions]
    assert probs[0].argmax() == 0 and probs[1].argmax() == 1, probs
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.9, probs
    assert last["train/imagined_return"] > first["train/imagined_return"] + 3.0
    assert last["train/entropy"] < first["train/entropy"]
    # The critic ranks the states' futures above a dead end: a value near the optimum's discounted sum.
    assert ac.value(mdp.states).min() > 3.0


# ------------------------------------------------------------------------------------------ wrapper
def test_wrapper_act_predict_and_sb3_evaluate_policy():
    from stable_baselines3.common.evaluation import evaluate_policy

    from envs.breakout import make_env

    cfg = agent_cfg("environment.max_episode_frames=400")
    model = LinearObsModel()
    ac = ActorCritic(model.latent_dim, model.num_actions, cfg.agent)
    agent = ActorCriticAgent(model, ac.actor, ac.critic, deterministic=True)
    obs = np.zeros((4, 64, 64), np.uint8)
    agent.reset()
    assert agent.act(obs) in range(NUM_ACTIONS) and agent.last_value is not None
    a, state = agent.predict(np.stack([obs, obs + 1]), deterministic=False)
    assert a.shape == (2,) and a.dtype == np.int64 and state is None
    a1, _ = agent.predict(obs)
    assert np.ndim(a1) == 0
    env = make_env(cfg.environment, seed=0)
    mean, std = evaluate_policy(agent, env, n_eval_episodes=1, warn=False)
    assert np.isfinite(mean)
    env.close()
    with pytest.raises(UserError, match="latent_dim"):
        ActorCriticAgent(LinearObsModel(latent_dim=5), ac.actor)


def test_sampling_temperature_sharpens_the_policy_and_leaves_t1_draws_alone():
    cfg = agent_cfg()
    model = LinearObsModel()
    ac = ActorCritic(model.latent_dim, model.num_actions, cfg.agent)
    with torch.no_grad():  # a policy with a clear mode: pi = softmax([1, 0, 0, 0]) before unimix
        ac.actor.net[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    obs = np.repeat(np.zeros((4, 64, 64), np.uint8)[None], 4000, axis=0)

    def share_of_mode(temperature: float) -> float:
        agent = ActorCriticAgent(model, ac.actor, seed=7, temperature=temperature)
        return float((agent.predict(obs, deterministic=False)[0] == 0).mean())

    with torch.no_grad():
        pi = ac.actor.log_probs(model.encode(obs[:1]).float()).exp()[0]  # [A]
    assert abs(share_of_mode(1.0) - float(pi[0])) < 0.03  # T = 1 samples the policy itself
    sharp = torch.softmax(pi.log() / 0.25, -1)[0]
    assert abs(share_of_mode(0.25) - float(sharp)) < 0.03 and share_of_mode(0.25) > share_of_mode(1.0) + 0.2
    # the default temperature draws exactly what the agent drew before temperatures existed
    a = ActorCriticAgent(model, ac.actor, seed=3).predict(obs[:64], deterministic=False)[0]
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        logp = ac.actor.log_probs(model.encode(obs[:64]).float())
    assert np.array_equal(a, torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1).numpy())
    with pytest.raises(ValueError, match="temperature"):
        ActorCriticAgent(model, ac.actor, temperature=0.0)


# ------------------------------------------------------------------------------------------ training loop
def test_train_resume_and_load(tiny_data, tmp_path, monkeypatch):
    from experiments import train_agent as ta

    cfg = agent_cfg(f"run.runs_dir={tmp_path}", "agent.updates=12", "agent.checkpoint_every=4",
                    "agent.start_latents=200", "agent.batch_size=8", "environment.max_episode_frames=400")
    model = LinearObsModel()
    wm_path = tmp_path / "wm.pt"  # only its path is recorded; the model is passed in
    real_update = ActorCritic.update
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(ActorCritic, "update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ta.train_agent(cfg, wm_path, data=tiny_data, model=model, progress=False)
    monkeypatch.setattr(ActorCritic, "update", real_update)
    run_dir = next((tmp_path / "train-agent").iterdir())
    ckpt = load_agent_checkpoint(run_dir / "agent.pt")
    # The last checkpoint (every 4 updates) survives; the interrupted step is not saved half-done.
    assert ckpt["state"]["updates"] == 4 and ckpt["step"] == 4
    summary = ta.train_agent(cfg, resume=run_dir, model=model, progress=False)
    assert summary["resumed_from"] == 4 and summary["updates"] == 12
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "train/imagined_return" in r]
    assert train_steps[-1] == 12 and max(train_steps) == 12
    assert {"train/entropy", "train/actor_loss", "train/critic_loss", "train/return_scale",
            "perf/updates_per_s"} <= set(rows[-2])
    assert any("eval/return_mean" in r for r in rows)
    assert load_agent_checkpoint(run_dir)["state"]["updates"] == 12
    agent = load_agent(run_dir / "agent.pt", model)
    assert agent.act(np.zeros((4, 64, 64), np.uint8)) in range(NUM_ACTIONS)


def test_bad_agent_checkpoints(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_agent_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_agent_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"kind": "stage2"}, other)
    with pytest.raises(UserError, match="not an agent checkpoint"):
        load_agent_checkpoint(other)


def test_imagination_after_real_history_matches_imagine_with_that_context():
    """agent.imagine_context: the step-wise rollout after a per-rollout real history agrees with imagine() given the
    same history, the history changes the rollout, and the actor-critic trains on it."""
    from experiments.builders import build_world_model_transformer
    from worldmodel.world_model import WorldModel

    cfg = agent_cfg("agent.imagine_context=2")
    torch.manual_seed(0)
    dyn = build_world_model_transformer(cfg)
    with torch.no_grad():
        dyn.head.weight.normal_(0, 0.3)
    wm = WorldModel(nn.Identity(), dyn)
    B, K, h = 3, 2, dyn.max_len + 2
    z0, ctx, ctx_a = torch.randn(B, wm.latent_dim), torch.randn(B, K, wm.latent_dim), torch.randint(0, 4, (B, K))
    g = torch.Generator().manual_seed(1)
    traj = imagine_with_policy(wm, z0, lambda z: torch.randint(0, 4, (z.shape[0],), generator=g), h, ctx, ctx_a)
    lat, rew, con = wm.imagine(z0, traj["actions"], context=ctx, context_actions=ctx_a)
    assert torch.allclose(traj["latents"][:, 1:], lat, atol=1e-5) and torch.allclose(traj["rewards"], rew, atol=1e-5)
    assert torch.allclose(traj["continues"], con, atol=1e-6)
    alone, _, _ = wm.imagine(z0, traj["actions"])
    assert (alone - lat).abs().max() > 1e-3  # the history is read
    with pytest.raises(ValueError, match="context"):
        wm.imagine_policy(z0, lambda z: torch.zeros(len(z), dtype=torch.long), 2, ctx[:2], ctx_a[:2])
    out = ActorCritic(wm.latent_dim, wm.num_actions, cfg.agent).update(wm, z0, None, ctx, ctx_a)
    assert np.isfinite(out["train/actor_loss"]) and np.isfinite(out["train/critic_loss"])


def test_imagination_starts_take_the_real_steps_before_each_start_inside_its_episode():
    """Two episodes of 4 and 3 frames laid end to end; K = 2: the history of each start is the two frames before it
    in its own episode, oldest first, with their actions; missing steps repeat the episode's first frame with NOOP."""
    latents = torch.arange(7, dtype=torch.float32)[:, None].repeat(1, 3)  # frame g has latent g
    eps = [Episode(frames=np.zeros((n + 1, 8, 8), np.uint8), actions=np.array(a), rewards=np.zeros(n, np.float32),
                   life_loss=np.zeros(n, bool), terminated=np.zeros(n, bool), truncated=np.zeros(n, bool),
                   labels=np.zeros((n + 1, 5), np.int16)) for n, a in ((3, [1, 2, 3]), (2, [3, 1]))]  # frames 0-3, 4-6
    rows, acts = history_frames(eps, np.arange(7), 2)
    s = ImaginationStarts(latents, torch.arange(7), torch.from_numpy(rows), torch.from_numpy(acts))
    assert len(s) == 7 and s.context == 2
    assert s.context_rows.tolist() == [[0, 0], [0, 0], [0, 1], [1, 2], [4, 4], [4, 4], [4, 5]]
    assert s.context_actions.tolist() == [[0, 0], [0, 1], [1, 2], [2, 3], [0, 0], [0, 3], [3, 1]]
    b = s.batch(torch.tensor([3, 6]), "cpu")
    assert b["z0"][:, 0].tolist() == [3.0, 6.0] and b["context"][..., 0].tolist() == [[1.0, 2.0], [4.0, 5.0]]
    rows, acts = history_frames(eps, np.arange(7), 0)
    plain = ImaginationStarts(latents, torch.arange(7), torch.from_numpy(rows), torch.from_numpy(acts))
    plain = plain.batch(torch.tensor([5]), "cpu")
    assert plain["context"] is None and plain["z0"][0, 0] == 5.0


def test_train_agent_imagines_after_real_history_and_refuses_more_than_the_model_saw(untrained_world_model,
                                                                                      tiny_data, tmp_path):
    from experiments.train_agent import encode_start_latents, train_agent
    from worldmodel import load_world_model

    cfg = agent_cfg(f"run.runs_dir={tmp_path}", "agent.updates=3", "agent.start_latents=40",
                    "agent.checkpoint_every=3", "agent.imagine_context=2", "environment.max_episode_frames=200")
    wm = load_world_model(untrained_world_model)
    starts, _ = encode_start_latents(wm, tiny_data, 40, 0, 4, cfg.agent)
    plain, _ = encode_start_latents(wm, tiny_data, 40, 0, 4, agent_cfg().agent)
    idx = torch.arange(40)
    assert torch.allclose(starts.batch(idx, "cpu")["z0"], plain.batch(idx, "cpu")["z0"], atol=1e-6)  # same starts
    assert starts.batch(idx, "cpu")["context"].shape == (40, 2, wm.latent_dim)
    s = train_agent(cfg, untrained_world_model, data=tiny_data, progress=False)
    assert s["updates"] == 3 and np.isfinite(s["final_train"]["train/critic_loss"])
    limit = wm.context_length - 1
    with pytest.raises(UserError, match=f"agent.imagine_context.*at most {limit}"):
        load_config("tiny", [f"agent.imagine_context={limit + 1}"])
    big = agent_cfg(f"agent.imagine_context={limit + 1}", f"vjepa2_world_model.stage2.sequence_length={limit + 3}")
    with pytest.raises(UserError, match=f"at most {limit}"):  # the world model decides, not the config
        train_agent(big, untrained_world_model, data=tiny_data, progress=False)


# ------------------------------------------------------------------------------------------ CLI end to end
@pytest.fixture(scope="module")
def untrained_world_model(tmp_path_factory, tiny_data):
    """A Stage-2 checkpoint file in the format of worldmodel.world_model with untrained (tiny-preset) networks."""
    return save_untrained_world_model(tmp_path_factory.mktemp("wm") / "best.pt", data_dir=tiny_data)


def test_cli_train_agent_end_to_end(cli, untrained_world_model, tmp_path):
    common = ["--preset", "tiny", "--wandb", "disabled", "--set", f"run.runs_dir={tmp_path}",
              "--set", "agent.updates=6", "--set", "agent.checkpoint_every=3", "--set", "agent.start_latents=64",
              "--set", "environment.max_episode_frames=400"]
    res = cli("train-agent", "--world-model", str(untrained_world_model), *common)  # data found via the checkpoint
    assert res.returncode == 0, res.stderr
    assert "agent checkpoint:" in res.stdout and "real-env return" in res.stdout
    run_dir = next((tmp_path / "train-agent").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["updates"] == 6 and np.isfinite(summary["final_train"]["train/critic_loss"])
    assert load_agent_checkpoint(run_dir / "agent.pt")["world_model"] == str(untrained_world_model)


def test_cli_train_agent_bad_input(tmp_path, untrained_world_model):
    from click.testing import CliRunner

    from run import cli as run_cli

    def invoke(*args):  # in-process: the same CLI class, without a Python start-up per case
        return CliRunner().invoke(run_cli, ["train-agent", "--preset", "tiny", "--wandb", "disabled", *args])

    res = invoke()
    assert res.exit_code == 2 and "--world-model" in res.stderr
    stage1 = tmp_path / "s1.pt"
    torch.save({"kind": "stage1"}, stage1)
    res = invoke("--world-model", str(stage1))
    assert res.exit_code == 2 and "stage2" in res.stderr and res.exception.__class__ is SystemExit
    res = CliRunner().invoke(run_cli, ["train-agent", "--resume", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.stderr
    res = invoke("--world-model", str(untrained_world_model), "--data", str(tmp_path / "nodata"))
    assert res.exit_code == 2 and "nodata" in res.stderr


def test_plan_in_env_with_agent(untrained_world_model, tiny_data, tmp_path):
    from experiments.plan import plan_in_env
    from experiments.train_agent import train_agent

    cfg = agent_cfg(f"run.runs_dir={tmp_path}", "agent.updates=2", "agent.start_latents=32",
                    "environment.max_episode_frames=200")
    agent_pt = train_agent(cfg, untrained_world_model, data=tiny_data, progress=False)["checkpoint"]
    s = plan_in_env(cfg, "actor-critic", agent=agent_pt, episodes=1, max_steps=20, compare_random=False,
                    progress=False)  # the world model comes from the agent checkpoint
    assert s["actor-critic"]["episodes"] == 1 and s["agent"] == agent_pt
    cem_cfg = agent_cfg(f"run.runs_dir={tmp_path}", "planner.use_value=true", "planner.policy_samples=4",
                        "environment.max_episode_frames=200")
    s = plan_in_env(cem_cfg, "cem", untrained_world_model, agent=agent_pt, episodes=1, max_steps=10,
                    compare_random=False, progress=False)
    assert s["cem"]["episodes"] == 1
    with pytest.raises(UserError, match="--agent"):
        plan_in_env(cfg, "actor-critic", untrained_world_model, episodes=1, progress=False)


def test_world_model_imagine_with_context_reuses_the_prefilled_history():
    """wm.imagine(context=...) with a batch-1 history: equal to the batch-B history, prefilled once per history."""
    from experiments.builders import build_world_model_transformer
    from worldmodel.world_model import WorldModel

    torch.manual_seed(0)
    dyn = build_world_model_transformer(agent_cfg())
    with torch.no_grad():
        dyn.head.weight.normal_(0, 0.3)
    wm = WorldModel(nn.Identity(), dyn)
    z0, acts = torch.randn(5, wm.latent_dim), torch.randint(0, 4, (5, 6))
    ctx, ctx_a = torch.randn(1, 3, wm.latent_dim), torch.randint(0, 4, (1, 3))
    calls = []
    prefill = dyn.prefill
    dyn.prefill = lambda c, ca, n: (calls.append(1) if len(c) == 1 else None) or prefill(c, ca, n)  # shared ones
    first = wm.imagine(z0, acts, context=ctx, context_actions=ctx_a)
    again = wm.imagine(z0, acts, context=ctx, context_actions=ctx_a)
    assert len(calls) == 1  # the same history tensors: prefilled once
    full = wm.imagine(z0, acts, context=ctx.expand(5, -1, -1), context_actions=ctx_a.expand(5, -1))
    other = wm.imagine(z0, acts, context=ctx + 1.0, context_actions=ctx_a)
    assert len(calls) == 2  # a new history tensor is prefilled again
    for x, y, w in zip(first, again, full):
        assert torch.allclose(x, y) and torch.allclose(x, w, atol=1e-5)
    assert not torch.allclose(first[0], other[0], atol=1e-3)


def test_the_recorded_world_model_is_found_from_another_folder(tmp_path, monkeypatch):
    """An agent checkpoint records its world model relative to the folder train-agent ran in; from another folder
    the path is looked up under the folders above the checkpoint, and returned as recorded when none holds it."""
    from agent.player import recorded_world_model

    home = tmp_path / "home"
    run = home / "runs" / "learn" / "r1"
    run.mkdir(parents=True)
    (run / "world_model.pt").write_bytes(b"x")
    ckpt = {"world_model": "runs/learn/r1/world_model.pt"}
    monkeypatch.chdir(home)
    assert recorded_world_model(ckpt, "runs/learn/r1/agent.pt") == Path("runs/learn/r1/world_model.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert recorded_world_model(ckpt, run / "agent.pt") == home / "runs/learn/r1/world_model.pt"
    assert recorded_world_model({"world_model": "runs/none.pt"}, run / "agent.pt") == Path("runs/none.pt")


def test_train_agent_self_imitates_its_start_frames(untrained_world_model, tiny_data, tmp_path):
    """``agent.self_imitation > 0`` in train-agent: the real batch comes from the start frames and is logged."""
    from experiments.train_agent import train_agent

    cfg = agent_cfg(f"run.runs_dir={tmp_path}", "agent.updates=4", "agent.start_latents=64",
                    "agent.checkpoint_every=2", "agent.self_imitation=1", "environment.max_episode_frames=200")
    s = train_agent(cfg, untrained_world_model, data=tiny_data, progress=False)
    rows = [json.loads(line) for line in open(Path(s["run_dir"]) / "metrics.jsonl")]
    sil = [r["train/sil_positive"] for r in rows if "train/sil_positive" in r]
    assert sil and all(0.0 <= v <= 1.0 for v in sil)
    assert np.isfinite(s["final_train"]["train/sil_advantage"])


def test_a_batched_prefill_of_real_history_equals_the_step_by_step_one():
    """KVRollout.prefill(batched=True), the actor-critic's history: one causal pass per block leaves the same keys,
    values and next predictions as K single steps; in train mode (dropout) it falls back to the steps."""
    from experiments.builders import build_world_model_transformer
    from worldmodel.transformer import KVRollout

    torch.manual_seed(0)
    dyn = build_world_model_transformer(agent_cfg()).eval()
    with torch.no_grad():
        dyn.head.weight.normal_(0, 0.3)
    B, K = 4, dyn.max_len - 1
    ctx, ctx_a = torch.randn(B, K, dyn.latent_dim), torch.randint(0, 4, (B, K))
    z, a = torch.randn(B, 1, dyn.latent_dim), dyn.a_in(torch.randint(0, 4, (B, 1)))
    with torch.no_grad():
        steps, once = KVRollout(dyn, B, K + 3, ctx), KVRollout(dyn, B, K + 3, ctx)
        steps.prefill(ctx, ctx_a)
        once.prefill(ctx, ctx_a, batched=True)
        assert once.t == steps.t == K
        assert torch.allclose(once.k[:, :, :, :K], steps.k[:, :, :, :K], atol=1e-5)
        assert torch.allclose(once.v[:, :, :, :K], steps.v[:, :, :, :K], atol=1e-5)
        for x, y in zip(once.step(z, a), steps.step(z, a)):
            assert torch.allclose(x, y, atol=1e-5)
        dyn.train()
        fallback = KVRollout(dyn, B, K, ctx)
        fallback.prefill(ctx, ctx_a, batched=True)  # dropout would differ from step(): the steps are used
        assert torch.equal(fallback.k, steps.k[:, :, :, :K]) and torch.equal(fallback.v, steps.v[:, :, :, :K])

"""Planners: CEM scoring and sampling units, CEM behaviour on hand-made models, the emulator oracle,
the references, and `run.py plan-in-env` end to end (tiny preset)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from envs.breakout import make_env
from experiments.config import load_config
from experiments.play import eval_env_config, play_episode
from planners.cem import CEMPlanner, sample_sequences, score_sequences
from planners.oracle import EmulatorModel, OraclePlanner
from planners.reference import RandomPolicy, TrackerPolicy

from .conftest import save_untrained_world_model

TARGET = (2, 3, 1, 0, 2, 3)  # the one sequence the hand-made model rewards


class PrefixModel:
    """Hand-made model: step h pays 1 while actions 0..h equal TARGET[0..h]; any deviation pays 0 from then on.

    The only sequence of length 6 with the maximal return (6) is TARGET. The latent counts matched steps.
    """

    latent_dim, num_actions, context_length = 2, 4, 1

    def __init__(self, life_loss_action: int | None = None):
        self.calls = 0
        self.life_loss_action = life_loss_action

    def encode(self, obs):
        return torch.zeros(len(obs), self.latent_dim)

    def imagine(self, z0, actions):
        self.calls += 1
        b, h = actions.shape
        target = torch.tensor(TARGET[:h]).expand(b, h)  # [B, H]
        matched = (actions == target).long().cumprod(dim=1).float()  # [B, H] 1 while the prefix matches
        latents = torch.stack([matched.cumsum(1), torch.zeros_like(matched)], dim=-1)  # [B, H, 2]
        continues = torch.ones(b, h)
        if self.life_loss_action is not None:
            continues = torch.where(actions == self.life_loss_action, 0.0, 1.0)
        return latents, matched, continues


def planner_cfg(**kw):
    base = dict(samples=64, horizon=6, iterations=6, elites=8, smoothing=0.2, discount=1.0, life_loss_penalty=1.0,
                repeat_prob=0.0, use_value=False, policy_samples=0, warm_start_mix=0.0)
    base.update(kw)
    return dataclasses.replace(load_config("tiny").planner, **base)


# ------------------------------------------------------------------------------------------ units
def test_score_known_values():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    continues = torch.tensor([[0.5, 1.0], [1.0, 1.0]])
    # row 0: alive before = [1, 0.5]; 1 * (1 - 2 * 0.5) + 0.5 * (1 - 0) = 0.5; row 1: 0.9 * 2 = 1.8
    s = score_sequences(rewards, continues, discount=0.9, life_loss_penalty=2.0)
    assert torch.allclose(s, torch.tensor([1.0 * (1 - 1.0) + 0.9 * 0.5 * 1.0, 0.9 * 2.0]))
    v = score_sequences(rewards, continues, discount=0.9, life_loss_penalty=2.0, terminal_value=torch.tensor([10., 1.]))
    # + g^H * P(alive after all steps) * V
    assert torch.allclose(v - s, torch.tensor([0.81 * 0.5 * 10.0, 0.81 * 1.0]))


def test_sampling_follows_probs_and_repeats():
    g = torch.Generator().manual_seed(0)
    onehot = torch.nn.functional.one_hot(torch.tensor(TARGET), 4).float()  # [6, 4]
    assert (sample_sequences(onehot, 5, 0.0, g) == torch.tensor(TARGET)).all()
    uniform = torch.full((12, 4), 0.25)
    indep = sample_sequences(uniform, 2000, 0.0, g)
    held = sample_sequences(uniform, 2000, 0.9, g)
    assert indep.shape == held.shape == (2000, 12)
    same_indep = (indep[:, 1:] == indep[:, :-1]).float().mean()
    same_held = (held[:, 1:] == held[:, :-1]).float().mean()
    assert abs(same_indep - 0.25) < 0.03  # independent draws repeat by chance only
    assert abs(same_held - (0.9 + 0.1 * 0.25)) < 0.03  # repeat_prob plus chance
    assert torch.bincount(held[:, 0], minlength=4).min() > 400  # the first step stays uniform


def test_every_agent_returns_one_valid_action_per_step():
    """What play_episode relies on: after reset(env), act(obs) returns a plain int in [0, num_actions)."""
    cfg = load_config("tiny")
    small = planner_cfg(samples=4, horizon=3, iterations=1, elites=1)
    env = make_env(eval_env_config(cfg), seed=0)
    obs, _ = env.reset(seed=0)
    agents = {"cem": CEMPlanner(PrefixModel(), small), "random": RandomPolicy(), "tracker": TrackerPolicy(),
              "oracle": OraclePlanner(small, cfg.environment.frame_skip, cfg.environment.fire_on_life_loss)}
    for name, agent in agents.items():
        agent.reset(env)
        for _ in range(3):
            action = agent.act(obs)
            assert type(action) is int and 0 <= action < 4, (name, action)
            obs, *_ = env.step(action)
    env.close()
    action, info = CEMPlanner(PrefixModel(), small).plan(torch.zeros(1, 2))
    assert type(action) is int and action == info["plan"][0]  # one iteration, one elite: the plan is the best one
    assert len(info["plan"]) == 3 and all(type(x) is int and 0 <= x < 4 for x in info["plan"])
    assert len(info["first_step_probs"]) == 4 and sum(info["first_step_probs"]) == pytest.approx(1.0)


def test_world_model_protocols():
    """The emulator has what CEM needs; only the learned world model has the actor-critic's step-wise rollout."""
    from experiments.builders import build_world_model_transformer
    from worldmodel.protocol import LatentWorldModel, PolicyWorldModel
    from worldmodel.world_model import WorldModel

    wm = WorldModel(torch.nn.Identity(), build_world_model_transformer(load_config("tiny")))
    assert isinstance(wm, PolicyWorldModel) and wm.context_length == wm.dynamics.max_len
    assert isinstance(PrefixModel(), LatentWorldModel)
    assert isinstance(EmulatorModel(), LatentWorldModel) and not isinstance(EmulatorModel(), PolicyWorldModel)


# ------------------------------------------------------------------------------------------ behaviour
def test_cem_finds_the_single_rewarding_sequence():
    model = PrefixModel()
    cem = CEMPlanner(model, planner_cfg(), seed=0)
    cem.reset()
    action = cem.act(np.zeros((4, 64, 64), np.uint8))
    assert action == TARGET[0]
    assert tuple(cem.last_info["plan"]) == TARGET
    assert cem.last_info["best_return"] == pytest.approx(6.0)
    assert model.calls == 6  # one batched imagine per iteration


def test_warm_start_shifts_the_plan():
    cem = CEMPlanner(PrefixModel(), planner_cfg(warm_start_mix=0.1), seed=1)
    z0 = torch.zeros(1, 2)
    cem.plan(z0)
    refit = cem.probs.clone()  # [H, A]
    assert refit.argmax(1).tolist() == list(TARGET)
    cem.shift()
    uniform = torch.full((1, 4), 0.25)
    assert torch.allclose(cem.probs, 0.9 * torch.cat([refit[1:], uniform]) + 0.1 * uniform)
    assert cem.probs.argmax(1)[:-1].tolist() == list(TARGET[1:])  # the plan goes on where it left off
    cem.reset()
    assert torch.allclose(cem.probs, torch.full((6, 4), 0.25))


class HistoryModel(PrefixModel):
    """PrefixModel with a context window that records the history ``imagine`` was given."""

    context_length = 4

    def __init__(self):
        super().__init__()
        self.contexts, self.rows = [], []
        self.n_obs = 0

    def encode(self, obs):
        self.n_obs += 1
        return torch.full((len(obs), self.latent_dim), float(self.n_obs))  # latent k for the k-th observation

    def imagine(self, z0, actions, context=None, context_actions=None):
        self.contexts.append(None if context is None else (context[0, :, 0].tolist(), context_actions[0].tolist()))
        self.rows.append(len(actions))
        assert len(torch.unique(actions, dim=0)) == len(actions) == len(z0), "each distinct candidate once"
        return super().imagine(z0, actions)


def test_cem_feeds_the_real_history_as_context():
    model = HistoryModel()
    cem = CEMPlanner(model, planner_cfg(iterations=1, history_steps=7), seed=0)
    assert cem.history_steps == 3  # capped at the model's window minus the current step
    obs = np.zeros((4, 64, 64), np.uint8)
    taken = [cem.act(obs) for _ in range(5)]
    assert model.contexts[0] is None  # nothing seen yet
    assert model.contexts[1] == ([1.0], taken[:1])  # latent of observation 1 and the action taken in it
    assert model.contexts[4] == ([2.0, 3.0, 4.0], taken[1:4])  # the last 3 steps, oldest first
    cem.reset()
    cem.act(obs)
    assert model.contexts[-1] is None  # a new game starts without history
    assert min(model.rows) < 64  # the warm-started plan repeats candidates: they were imagined once
    off = HistoryModel()
    cem = CEMPlanner(off, planner_cfg(iterations=1, history_steps=0), seed=0)
    cem.act(obs), cem.act(obs)
    assert off.contexts == [None, None]


def test_life_loss_penalty_and_value_change_the_choice():
    # TARGET[0] = 2 now loses a life: with a large penalty the best plan avoids action 2 entirely
    cem = CEMPlanner(PrefixModel(life_loss_action=2), planner_cfg(life_loss_penalty=10.0), seed=0)
    cem.plan(torch.zeros(1, 2))
    assert 2 not in cem.last_info["plan"]
    # a terminal value that prefers a latent the rewards alone never reach: V = 100 * (prefix fully matched)
    value_cfg = planner_cfg(use_value=True, life_loss_penalty=0.0, horizon=3)
    cem = CEMPlanner(PrefixModel(), value_cfg, value_fn=lambda z: 100.0 * (z[:, 0] == 3).float(), seed=0)
    cem.plan(torch.zeros(1, 2))
    assert tuple(cem.last_info["plan"]) == TARGET[:3]


def test_policy_prior_candidates_join_the_search():
    calls = []

    def policy_fn(z0, horizon):
        calls.append((z0.shape, horizon))
        return torch.tensor(TARGET[:horizon]).expand(z0.shape[0], horizon)

    cfg = planner_cfg(samples=16, elites=2, iterations=1, policy_samples=2)
    cem = CEMPlanner(PrefixModel(), cfg, policy_fn=policy_fn, seed=0)
    cem.plan(torch.zeros(1, 2))
    assert calls == [((2, 2), 6)]
    assert tuple(cem.last_info["plan"]) == TARGET  # 16 random draws cannot find it; the prior does
    only_prior = CEMPlanner(PrefixModel(), planner_cfg(samples=4, elites=1, policy_samples=4), policy_fn=policy_fn)
    assert only_prior.act(np.zeros((4, 64, 64), np.uint8)) == TARGET[0]


def test_missing_value_or_policy_is_a_user_error():
    from envs.errors import UserError

    with pytest.raises(UserError, match="use_value"):
        CEMPlanner(PrefixModel(), planner_cfg(use_value=True))
    with pytest.raises(UserError, match="policy_samples"):
        CEMPlanner(PrefixModel(), planner_cfg(policy_samples=4))


# ------------------------------------------------------------------------------------------ emulator oracle
def test_emulator_model_replays_the_real_pipeline_exactly():
    cfg = load_config("tiny")
    env = make_env(eval_env_config(cfg), seed=3)
    obs, _ = env.reset(seed=3)
    model = EmulatorModel(cfg.environment.frame_skip, cfg.environment.fire_on_life_loss)
    model.attach(env)
    rng = np.random.default_rng(0)
    actions = torch.as_tensor(rng.integers(0, 4, size=(2, 60)))  # long [2, 60]
    actions[1] = 0  # NOOP: the ball is lost, a life-loss step must show continue = 0
    ram_before = env.unwrapped.ale.getRAM().copy()
    z0 = model.encode(obs[None])
    lat, rew, cont = model.imagine(z0.expand(2, -1), actions)
    assert lat.shape == (2, 60, 128) and rew.shape == cont.shape == (2, 60)
    assert (env.unwrapped.ale.getRAM() == ram_before).all()  # the live game was restored
    lat2, rew2, _ = model.imagine(z0.expand(2, -1), actions)
    assert torch.equal(lat, lat2) and torch.equal(rew, rew2)  # deterministic, sticky actions included
    assert (cont[1] == 0).any()
    # the real pipeline, stepped with row 0's actions, sees the same rewards and RAM until the first life loss
    for t in range(60):
        obs, reward, terminated, truncated, info = env.step(int(actions[0, t]))
        assert reward == pytest.approx(float(rew[0, t]))
        assert (env.unwrapped.ale.getRAM() == lat[0, t].numpy().astype(np.uint8)).all(), f"step {t}"
        assert bool(info["life_loss"]) == (cont[0, t] == 0)
        if info["life_loss"] or terminated:
            break
    with pytest.raises(ValueError, match="last encoded"):
        model.imagine(torch.zeros(1, 128), actions[:1])
    env.close()


class ConstantPolicy:
    def __init__(self, action: int):
        self.action = action

    def reset(self, env=None) -> None:
        pass

    def act(self, obs) -> int:
        return self.action


def test_oracle_planner_avoids_losing_the_ball():
    """On game 0 every constant action and random play lose the first ball at step 25, and an oracle blind to life
    loss (rewards only) at step 53; the oracle keeps it."""
    cfg = load_config("tiny", ["planner.samples=8", "planner.elites=2", "planner.horizon=25",
                               "planner.iterations=1", "planner.repeat_prob=0.75"])
    env = make_env(eval_env_config(cfg), seed=0)

    def loses_a_life(agent, steps: int = 55) -> bool:
        losses: list[bool] = []
        res = play_episode(agent, env, seed=0, max_steps=steps,
                           on_step=lambda s: losses.append(bool(s["info"]["life_loss"])))
        assert res["length"] == steps
        return any(losses)

    weak = [ConstantPolicy(a) for a in range(4)] + [RandomPolicy(seed=s) for s in range(3)]
    assert all(loses_a_life(agent) for agent in weak)  # the test can tell an oracle from a blind policy
    oracle = OraclePlanner(cfg.planner, cfg.environment.frame_skip, cfg.environment.fire_on_life_loss, seed=0)
    assert not loses_a_life(oracle)
    env.close()


# ------------------------------------------------------------------------------------------ references
def test_random_and_tracker_references():
    cfg = load_config("tiny", ["environment.max_episode_frames=20000"])
    env = make_env(eval_env_config(cfg), seed=0)
    tracker = play_episode(TrackerPolicy(env, seed=0), env, seed=10_000)
    random = play_episode(RandomPolicy(seed=0), env, seed=10_000)
    env.close()
    assert tracker["game_over"] and random["game_over"]
    assert tracker["return"] >= 10 and tracker["return"] > 3 * random["return"]


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An untrained tiny Stage-2 checkpoint (worldmodel.world_model format) and a Stage-1-only one."""
    root = tmp_path_factory.mktemp("ckpt")
    save_untrained_world_model(root / "stage2.pt", stage1_path=root / "stage1.pt")
    return root


def test_cli_plan_in_env_cem_end_to_end(cli, checkpoints, tmp_path):
    res = cli("plan-in-env", "--checkpoint", str(checkpoints / "stage2.pt"), "--planner", "cem", "--episodes", "1",
              "--max-steps", "30", "--video", "--preset", "tiny", "--wandb", "disabled",
              "--set", f"run.runs_dir={tmp_path}")
    assert res.returncode == 0, res.stderr
    assert "cem" in res.stdout and "random" in res.stdout
    run_dir = next((tmp_path / "plan-in-env").iterdir())
    rows = [json.loads(x) for x in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["length"] == 30 and rows[0]["capped"]
    assert {"return", "length", "latency_p50_s", "latency_p95_s"} <= set(rows[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cem"]["episodes"] == 1 and summary["random"]["episodes"] == 1
    import imageio.v2 as imageio

    frames = imageio.mimread(run_dir / "video.gif")
    assert summary["video_frames"] == 30  # the GIF writer merges identical consecutive frames
    assert 1 < len(frames) <= 30 and frames[0].shape[:2] == (256 + 36, 256)


def test_cli_plan_in_env_tracker_writes_wandb(cli, tmp_path):
    res = cli("plan-in-env", "--planner", "tracker", "--episodes", "1", "--max-steps", "50", "--no-random",
              "--preset", "tiny", "--wandb", "offline", "--set", f"run.runs_dir={tmp_path}")
    assert res.returncode == 0, res.stderr
    run_dir = next((tmp_path / "plan-in-env").iterdir())
    assert list((run_dir / "wandb").glob("offline-run-*"))
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/return" in m for m in metrics)


@pytest.mark.parametrize("args,needle", [
    (["--planner", "cem"], "--checkpoint"),
    (["--planner", "random", "--set", "planner.elites=100"], "planner.elites"),
    (["--planner", "random", "--set", "planner.horizon=0"], "planner.horizon"),
    (["--planner", "bogus"], "bogus"),
])
def test_cli_plan_in_env_bad_input(cli, tmp_path, args, needle):
    res = cli("plan-in-env", *args, "--preset", "tiny", "--wandb", "disabled", "--set", f"run.runs_dir={tmp_path}")
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr


def test_cli_stage1_checkpoint_says_run_stage_2(cli, checkpoints, tmp_path):
    res = cli("plan-in-env", "--checkpoint", str(checkpoints / "stage1.pt"), "--preset", "tiny", "--wandb",
              "disabled", "--set", f"run.runs_dir={tmp_path}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "stage 2" in res.stderr.lower() or "--stage 2" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

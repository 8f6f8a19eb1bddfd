"""`run.py learn`: the closed loop on the tiny preset (budget, checkpoints, heads, seeds), the two-hot reward head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from envs.replay import stable_split
from envs.seeds import in_evaluation_block
from experiments.config import load_config
from experiments.learn import learn
from worldmodel.dynamics_loss import LatentSequences, WorldModelLoss
from worldmodel.transformer import WorldModelTransformer, symexp, twohot

BUDGET = 500
TINY = ["run.wandb=disabled", f"baselines.agent_steps={BUDGET}", "learn.eval_every=1000"]


@pytest.fixture(scope="module")
def learn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    cfg = load_config("tiny", [*TINY, f"run.runs_dir={root}"])
    summary = learn(cfg, progress=False, echo=lambda s: None)
    return cfg, summary


def test_learn_spends_exactly_the_budget_and_reports(learn_run):
    cfg, s = learn_run
    assert s["finished"] and s["env_steps"] == BUDGET
    assert s["prefill"]["env_steps"] == cfg.learn.prefill_steps
    run = s["run_dir"]
    manifest = json.load(open(f"{run}/data/manifest.json"))
    # Every step in the replay was an env step of the budget (the game in progress at the end is not stored).
    assert sum(e["length"] for e in manifest["episodes"]) <= BUDGET
    assert {e["policy"] for e in manifest["episodes"]} <= {"random", "actor-critic"}
    assert len(s["returns"]) == cfg.evaluation.episodes and s["curve"][-1]["env_steps"] == BUDGET
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    loop = [r for r in rows if "iteration" in r]
    assert [r["step"] for r in loop] == [300, 400, 500]  # prefill 200, then 100 collected steps per iteration
    assert all("stage2/loss" in r and "train/imagined_return" in r for r in loop)
    assert {k for k in s["timings_s"]} >= {"env", "stage1", "stage2", "agent", "encode", "eval"}


def test_learn_games_never_come_from_an_evaluation_block(learn_run):
    _, s = learn_run
    seeds = [e["game_seed"] for e in json.load(open(f"{s['run_dir']}/data/manifest.json"))["episodes"]]
    assert seeds and all(isinstance(x, int) and in_evaluation_block(x) is None for x in seeds)
    assert len(set(seeds)) == len(seeds), "a game was played twice"
    assert not set(seeds) & set(s["eval_seeds"])


def test_learn_checkpoints_load_as_world_model_and_agent(learn_run):
    from agent.player import load_agent
    from worldmodel import load_world_model

    _, s = learn_run
    wm = load_world_model(s["world_model"])
    agent = load_agent(s["agent"], wm)
    obs = np.zeros((4, 64, 64), np.uint8)
    assert agent.act(obs) in range(4)
    assert wm.dynamics.reward_bins == load_config("tiny").models.world_model.reward_bins


def test_final_agent_reset_trains_a_new_agent_on_the_same_world_model(learn_run, tmp_path):
    """``learn.final_agent_reset``: the final phase trains a new actor-critic for ``final_agent_updates`` updates;
    the world model and the replay are the run without it's."""
    cfg0, ref = learn_run
    cfg = load_config("tiny", [*TINY, f"run.runs_dir={tmp_path}", "learn.final_agent_reset=true"])
    s = learn(cfg, progress=False, echo=lambda m: None)
    a, b = (torch.load(f"{r['run_dir']}/learn.pt", weights_only=True) for r in (ref, s))
    for k in b["world_model"]:
        assert torch.equal(a["world_model"][k], b["world_model"][k]), k
    iterations = ref["iterations"]
    assert a["agent"]["updates"] == iterations * cfg0.learn.agent_updates + cfg0.learn.final_agent_updates
    assert b["agent"]["updates"] == cfg.learn.final_agent_updates
    assert any(not torch.equal(a["agent"]["actor"][k], b["agent"]["actor"][k]) for k in b["agent"]["actor"])
    saved = torch.load(s["agent"], weights_only=True)
    assert saved["state"]["updates"] == cfg.learn.final_agent_updates
    assert s["final"]["episodes"] == cfg.evaluation.episodes


def test_stable_split_keeps_each_episode_on_its_side():
    a, b = stable_split(40, 0.25, 3), stable_split(400, 0.25, 3)
    assert np.array_equal(a, b[:40])
    assert 0.2 < b.mean() < 0.3
    assert not np.array_equal(stable_split(400, 0.25, 4), b)


def test_learn_refuses_bad_settings(tmp_path):
    from click.testing import CliRunner

    from run import cli

    def invoke(*args):
        return CliRunner().invoke(cli, list(args))

    r = invoke("learn", "--preset", "tiny", "--set", "learn.recent_fraction=2", "--set", f"run.runs_dir={tmp_path}")
    assert r.exit_code == 2 and "learn.recent_fraction" in r.stderr and "Traceback" not in r.output
    r = invoke("learn", "--preset", "tiny", "--set", "learn.explore_fraction=1", "--set", f"run.runs_dir={tmp_path}")
    assert r.exit_code == 2 and "learn.explore_fraction" in r.stderr and "Traceback" not in r.output
    r = invoke("learn", "--preset", "tiny", "--set", "learn.collect_temperature=0", "--set", f"run.runs_dir={tmp_path}")
    assert r.exit_code == 2 and "learn.collect_temperature" in r.stderr and "Traceback" not in r.output
    r = invoke("learn", "--preset", "tiny", "--set", "learn.final_agent_reset=true", "--set",
               "learn.final_agent_updates=0", "--set", f"run.runs_dir={tmp_path}")
    assert r.exit_code == 2 and "learn.final_agent_updates" in r.stderr and "Traceback" not in r.output
    r = invoke("learn", "--resume", str(tmp_path / "nope"))
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = invoke("learn", "--resume", str(tmp_path), "--set", "learn.collect_steps=5")
    assert r.exit_code == 2 and "--set" in r.stderr
    r = invoke("learn", "--resume", str(tmp_path))
    assert r.exit_code == 2 and "not a `run.py learn` folder" in r.stderr
    assert not (tmp_path / "learn").exists()


# ------------------------------------------------------------------------------------------ two-hot reward head
def test_twohot_expectation_is_the_value():
    support = torch.linspace(-5, 5, 41)
    x = torch.tensor([0.0, 0.69, 1.61, -2.08, 4.99, 7.0])
    enc = twohot(x, support)
    assert torch.allclose(enc.sum(-1), torch.ones(len(x)))
    assert torch.allclose((enc * support).sum(-1), x.clamp(-5, 5), atol=1e-6)
    assert (enc > 0).sum(-1).max() <= 2


def test_binned_head_starts_at_no_reward_and_learns_a_rare_point():
    torch.manual_seed(0)
    m = WorldModelTransformer(latent_dim=8, num_actions=4, hidden_dim=32, depth=1, heads=2, mlp_dim=32, dropout=0.0,
                              max_len=4, reward_bins=21, reward_range=3.0)
    z, a = torch.randn(64, 4, 8), torch.randint(4, (64, 4))
    _, r, _ = m(z, a)
    assert torch.allclose(r, torch.zeros_like(r), atol=1e-5)  # expected symlog reward 0 at initialisation
    probs = torch.softmax(m(z, a, reward_logits=True)[1], -1)
    assert torch.allclose(probs[..., 10], torch.full_like(probs[..., 10], 0.9), atol=1e-4)
    # A point (reward 1) on 2% of steps, signalled by latent dimension 0 > 2: the head must predict it.
    loss_fn = WorldModelLoss.from_config(load_config("tiny").vjepa2_world_model.stage2)
    loss_fn.teacher_forcing_ratio = 1.0
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(120):
        z = torch.randn(128, 3, 8, generator=g)
        rewards = (z[:, :2, 0] > 2.0).float()  # [B, T]
        batch = {"z": z, "actions": torch.zeros(128, 2, dtype=torch.long), "rewards": rewards,
                 "life_loss": torch.zeros(128, 2, dtype=torch.bool)}
        out = loss_fn(m, batch, train=True, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    z = torch.randn(4096, 1, 8, generator=g)
    _, r, _ = m(z, torch.zeros(4096, 1, dtype=torch.long))
    pred, true = symexp(r[:, 0]) > 0.5, z[:, 0, 0] > 2.0
    recall = float((pred & true).sum() / true.sum())
    precision = float((pred & true).sum() / pred.sum().clamp_min(1))
    assert recall >= 0.5 and precision >= 0.5, (recall, precision)


def test_scoring_sequences_are_oversampled():
    from envs.dataset import TemporalSequenceDataset
    from envs.replay import Episode

    L = 200
    rewards = np.zeros(L, np.float32)
    rewards[[50, 150]] = 1.0
    ep = Episode(frames=np.zeros((L + 1, 64, 64), np.uint8), actions=np.zeros(L, np.int64), rewards=rewards,
                 terminated=np.eye(1, L, L - 1, dtype=bool)[0], truncated=np.zeros(L, bool),
                 life_loss=np.zeros(L, bool), labels=np.zeros((L + 1, 5), np.int16))
    ds = TemporalSequenceDataset([ep], 4, 4, stride=1)
    seqs = LatentSequences(torch.zeros(ds.store.num_frames, 2), ds.store, ds.starts, 4)
    scoring = set(seqs.scoring().tolist())
    hold = {s for s in range(len(seqs)) if any(t in (50, 150) for t in range(ds.starts[s], ds.starts[s] + 4))}
    assert scoring == hold
    rng = np.random.default_rng(0)
    plain = np.isin(seqs.order(rng, 4000, 0.0), list(scoring)).mean()
    over = np.isin(seqs.order(rng, 4000, 0.25), list(scoring)).mean()
    assert plain < 0.06 and 0.25 <= over < 0.32


def test_encoder_refresh_changes_the_encoder_the_world_model_and_the_agent_use(tmp_path, monkeypatch):
    from worldmodel import load_world_model
    from worldmodel.masked_prediction import MaskedPredictionModel, load_encoder, random_shift

    shifted = []  # (pad, batch) of every random shift: the prefill's Stage 1 and the refreshes' steps are augmented

    def counting(obs, pad, *more, generator=None):
        shifted.append((pad, len(obs)))
        return random_shift(obs, pad, *more, generator=generator)

    monkeypatch.setattr("worldmodel.masked_prediction.random_shift", counting)
    cfg = load_config("tiny", [*TINY, f"run.runs_dir={tmp_path}", "learn.encoder_every=100", "learn.encoder_updates=3",
                               "learn.encoder_stage2_updates=2", "vjepa2_world_model.stage1.future_weight=1",
                               "vjepa2_world_model.stage1.random_shift=2"])
    calls, augment = [], MaskedPredictionModel.augment

    def counted(self, obs, future=None):
        calls.append(future is not None)
        return augment(self, obs, future)

    monkeypatch.setattr(MaskedPredictionModel, "augment", counted)
    s = learn(cfg, progress=False, echo=lambda m: None)
    assert len(calls) >= 2 * 3 + 1 and all(calls)  # the future frames travel with the shift, refreshes included
    assert len(shifted) == len(calls) and {p for p, _ in shifted} == {2}
    run = s["run_dir"]
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    assert [r["stage1/refreshes"] for r in rows if "stage1/refreshes" in r] == [1, 2]  # at 300 and 400, not in the last
    # the future-token auxiliary trains the prefill's Stage 1 and is scored on its validation frames
    assert any(r.get("train/future_loss", 0) > 0 for r in rows) and any("val/future_loss" in r for r in rows)
    obs = torch.randint(0, 255, (8, 4, 64, 64), dtype=torch.uint8)
    before = load_encoder(f"{run}/stage1/best.pt")(obs)
    after = load_world_model(s["world_model"]).encode(obs)
    assert not torch.allclose(before, after), "the world model still encodes with the prefill's encoder"
    state = torch.load(f"{run}/learn.pt", weights_only=True)
    assert state["encoder_refresh"]["refreshes"] == 2


def test_final_encoder_refresh_fine_tunes_once_more_before_the_final_phase(tmp_path):
    """``learn.final_encoder_refresh``: the last iteration refreshes the encoder too (at 500, after 300 and 400), and
    world_model.pt encodes with that encoder, not the one of the refresh at 400."""
    from worldmodel import load_world_model

    base = [*TINY, "learn.encoder_every=100", "learn.encoder_updates=3", "learn.encoder_stage2_updates=2"]
    s = learn(load_config("tiny", [*base, f"run.runs_dir={tmp_path / 'on'}", "learn.final_encoder_refresh=true"]),
              progress=False, echo=lambda m: None)
    rows = [json.loads(line) for line in open(f"{s['run_dir']}/metrics.jsonl")]
    assert [(r["step"], r["stage1/refreshes"]) for r in rows if "stage1/refreshes" in r] == [(300, 1), (400, 2),
                                                                                           (500, 3)]
    assert torch.load(f"{s['run_dir']}/learn.pt", weights_only=True)["encoder_refresh"]["refreshes"] == 3
    off = learn(load_config("tiny", [*base, f"run.runs_dir={tmp_path / 'off'}"]), progress=False, echo=lambda m: None)
    obs = torch.randint(0, 255, (8, 4, 64, 64), dtype=torch.uint8)
    # same draws up to the last iteration: the replays agree, the final encoders do not
    sha = [[e["sha256"] for e in json.load(open(f"{r['run_dir']}/data/manifest.json"))["episodes"]] for r in (s, off)]
    assert sha[0] == sha[1]
    assert not torch.allclose(load_world_model(s["world_model"]).encode(obs),
                              load_world_model(off["world_model"]).encode(obs))


def test_final_stage2_refit_fits_new_dynamics_on_the_same_replay_and_resumes(learn_run, tmp_path):
    """``learn.final_stage2_refit``: the final phase fits Stage 2 anew (stage2_final/), the world model the agent and
    world_model.pt use is that fit's best, the replay is the run without it's; its epoch rows sit at the last env step
    as stage2_final/*; stopped before the final iteration and resumed, it ends with the same weights."""
    _, ref = learn_run
    over = [*TINY, "learn.final_stage2_refit=true", "vjepa2_world_model.stage2.num_epochs=2"]
    s = learn(load_config("tiny", [*over, f"run.runs_dir={tmp_path / 'a'}"]), progress=False, echo=lambda m: None)
    sha = [[e["sha256"] for e in json.load(open(f"{r['run_dir']}/data/manifest.json"))["episodes"]] for r in (ref, s)]
    assert sha[0] == sha[1]
    best = torch.load(f"{s['run_dir']}/stage2_final/best.pt", weights_only=True)["world_model"]
    wm = torch.load(s["world_model"], weights_only=True)["world_model"]
    old = torch.load(ref["world_model"], weights_only=True)["world_model"]
    assert all(torch.equal(best[k], wm[k]) for k in wm)
    assert any(not torch.equal(old[k], wm[k]) for k in wm)
    rows = [json.loads(line) for line in open(f"{s['run_dir']}/metrics.jsonl")]
    refit = [r for r in rows if any(k.startswith("stage2_final/") for k in r)]
    assert refit and all(r["step"] == BUDGET for r in refit)
    cfg = load_config("tiny", [*over, f"run.runs_dir={tmp_path / 'b'}"])
    part = learn(cfg, progress=False, echo=lambda m: None, max_iterations=2)
    assert not part["finished"]
    done = learn(cfg, resume=part["run_dir"], progress=False, echo=lambda m: None)
    wm2 = torch.load(done["world_model"], weights_only=True)["world_model"]
    assert all(torch.equal(wm[k], wm2[k]) for k in wm)
    assert done["returns"] == s["returns"]


def test_final_refit_trains_its_own_network_which_the_checkpoints_and_a_resume_keep(tmp_path):
    """``learn.final_refit_depth`` / ``final_refit_mlp_dim`` / ``final_refit_dropout``: the refit builds a deeper
    network than the loop's (tiny: depth 1, mlp 64, dropout 0.1), without dropout; world_model.pt and the agent load
    it, and a finished run resumed keeps it."""
    from agent.player import load_agent
    from worldmodel import load_world_model

    over = [*TINY, "learn.final_stage2_refit=true", "vjepa2_world_model.stage2.num_epochs=1",
            "learn.final_refit_depth=2", "learn.final_refit_mlp_dim=96", "learn.final_refit_heads_on_rollout=true",
            "learn.final_refit_dropout=0", f"run.runs_dir={tmp_path}"]
    cfg = load_config("tiny", over)
    s = learn(cfg, progress=False, echo=lambda m: None)
    kwargs = torch.load(s["world_model"], weights_only=True)["world_model_kwargs"]
    assert (kwargs["depth"], kwargs["mlp_dim"], kwargs["dropout"]) == (2, 96, 0.0)
    loop = torch.load(f"{s['run_dir']}/stage2/best.pt", weights_only=True)
    loop_net = loop["world_model_kwargs"]
    assert (loop_net["depth"], loop_net["mlp_dim"], loop_net["dropout"]) == (1, 64, cfg.models.world_model.dropout)
    assert cfg.models.world_model.dropout > 0
    # learn.final_refit_heads_on_rollout: the refit's loss scores the heads on rollout latents, the loop's does not
    refit_cfg = torch.load(f"{s['run_dir']}/stage2_final/best.pt", weights_only=True)["config"]
    assert refit_cfg["vjepa2_world_model"]["stage2"]["heads_on_rollout"] is True
    assert loop["config"]["vjepa2_world_model"]["stage2"]["heads_on_rollout"] is False
    wm = load_world_model(s["world_model"])
    assert len(wm.dynamics.blocks) == 2
    load_agent(s["agent"], wm)
    before = torch.load(s["world_model"], weights_only=True)["world_model"]
    again = learn(cfg, resume=s["run_dir"], progress=False, echo=lambda m: None)
    assert again["finished"] and again["returns"] == s["returns"]
    np.testing.assert_equal(again["heads"], s["heads"])  # NaN where no step scored, in both
    after = torch.load(again["world_model"], weights_only=True)["world_model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_final_collect_steps_run_the_final_phase_early_and_let_its_agent_play_the_rest(tmp_path, monkeypatch):
    """``learn.final_collect_steps``: with 200 of the 500 steps kept, the refit and the new agent come at 300; the
    new agent plays 400 and 500, the refit network keeps learning from those games and the agent gets
    agent_updates more after the last; the budget is spent exactly; stopped after the final phase and resumed, the run
    ends with the same weights and returns."""
    import experiments.learn as learn_module

    played, temperatures = [], []  # the actor module and the sampling temperature of every collection round
    real_play = learn_module.Players.play

    def spy(self, actor, steps, on_episode):
        played.append(actor.actor)
        temperatures.append(actor.temperature)
        return real_play(self, actor, steps, on_episode)

    monkeypatch.setattr(learn_module.Players, "play", spy)
    over = [*TINY, "learn.final_stage2_refit=true", "vjepa2_world_model.stage2.num_epochs=1",
            "learn.final_refit_depth=2", "learn.final_agent_reset=true", "learn.final_collect_steps=200",
            "learn.collect_temperature=0.5"]
    cfg = load_config("tiny", [*over, f"run.runs_dir={tmp_path / 'a'}"])
    s = learn(cfg, progress=False, echo=lambda m: None)
    assert len(played) == 3 and played[1] is played[2] and played[0] is not played[1]  # the new agent plays 400, 500
    assert temperatures == [0.5] * 3  # learn.collect_temperature: the loop's actor and the final one collect with it
    assert s["finished"] and s["env_steps"] == BUDGET
    run = s["run_dir"]
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    loop = [r for r in rows if "iteration" in r]
    assert [r["step"] for r in loop] == [300, 400, 500]
    assert {r["step"] for r in rows if any(k.startswith("stage2_final/") for k in r)} == {300}
    A, F = cfg.learn.agent_updates, cfg.learn.final_agent_updates
    assert [r["agent/updates"] for r in loop] == [A + F, A, 2 * A]
    assert all(r["stage2/updates"] > 0 for r in loop)
    manifest = json.load(open(f"{run}/data/manifest.json"))
    assert sum(e["length"] for e in manifest["episodes"]) <= BUDGET
    wm = torch.load(s["world_model"], weights_only=True)
    assert wm["world_model_kwargs"]["depth"] == 2  # the refit network, which went on learning after the refit
    best = torch.load(f"{run}/stage2_final/best.pt", weights_only=True)["world_model"]
    assert any(not torch.equal(best[k], wm["world_model"][k]) for k in best)
    part_cfg = load_config("tiny", [*over, f"run.runs_dir={tmp_path / 'b'}"])
    part = learn(part_cfg, progress=False, echo=lambda m: None, max_iterations=1)  # stops right after the final phase
    assert not part["finished"] and part["env_steps"] == 300
    done = learn(part_cfg, resume=part["run_dir"], progress=False, echo=lambda m: None)
    assert done["returns"] == s["returns"]
    again = torch.load(done["world_model"], weights_only=True)["world_model"]
    assert all(torch.equal(wm["world_model"][k], again[k]) for k in again)


def test_final_collect_steps_must_leave_part_of_the_budget():
    from envs.errors import UserError

    with pytest.raises(UserError, match="final_collect_steps.*below the budget"):
        load_config("tiny", [*TINY, f"learn.final_collect_steps={BUDGET}"])


def test_a_refit_network_without_the_refit_is_refused():
    from envs.errors import UserError

    with pytest.raises(UserError, match="final_refit_depth.*final_stage2_refit"):
        load_config("tiny", ["learn.final_refit_depth=4"])
    with pytest.raises(UserError, match="final_refit_heads_on_rollout.*final_stage2_refit"):
        load_config("tiny", ["learn.final_refit_heads_on_rollout=true"])
    with pytest.raises(UserError, match="final_refit_dropout.*final_stage2_refit"):
        load_config("tiny", ["learn.final_refit_dropout=0"])
    with pytest.raises(UserError, match="final_refit_dropout.*probability"):
        load_config("tiny", ["learn.final_stage2_refit=true", "learn.final_refit_dropout=1.5"])


def test_resume_drops_episodes_written_after_the_checkpoint_and_replays_the_game_in_progress(learn_run, tmp_path):
    """What a kill between two learn.pt writes leaves behind (an episode the next checkpoint never counted, a game
    in progress) is undone or replayed: the resumed run ends with the uninterrupted run's replay and weights."""
    from envs.replay import ReplayWriter, load_episodes

    _, ref = learn_run
    cfg = load_config("tiny", [*TINY, f"run.runs_dir={tmp_path}"])
    part = learn(cfg, progress=False, echo=lambda m: None, max_iterations=2)
    assert not part["finished"]
    state = torch.load(f"{part['run_dir']}/learn.pt", weights_only=True)
    in_progress = state["player"]["envs"][0]["chosen"]
    assert in_progress, "no game in progress at the checkpoint: the replay of one is not exercised"
    eps, _ = load_episodes(f"{part['run_dir']}/data")
    ReplayWriter(f"{part['run_dir']}/data", append=True).add(eps[-1], {"policy": "written after the checkpoint"})
    done = learn(cfg, resume=part["run_dir"], progress=False, echo=lambda m: None)
    sha = [[e["sha256"] for e in json.load(open(f"{r['run_dir']}/data/manifest.json"))["episodes"]]
           for r in (ref, done)]
    assert sha[0] == sha[1]
    a, b = (torch.load(f"{r['run_dir']}/learn.pt", weights_only=True) for r in (ref, done))
    for k in b["world_model"]:
        assert torch.equal(a["world_model"][k], b["world_model"][k]), k
    assert done["returns"] == ref["returns"]


def test_two_envs_play_distinct_games_and_resume_to_the_uninterrupted_result(tmp_path):
    """``learn.num_envs=2``: both envs' games land in the replay (game seeds numbered across envs, none twice), the
    budget is spent exactly, and a run stopped after an iteration and resumed ends with the same replay and weights."""
    two = [*TINY, "learn.num_envs=2", "learn.explore_fraction=0.5", "learn.explore_hold=7"]
    ref = learn(load_config("tiny", [*two, f"run.runs_dir={tmp_path / 'ref'}"]), progress=False, echo=lambda m: None)
    cfg = load_config("tiny", [*two, f"run.runs_dir={tmp_path / 'part'}"])
    part = learn(cfg, progress=False, echo=lambda m: None, max_iterations=1)
    state = torch.load(f"{part['run_dir']}/learn.pt", weights_only=True)
    assert len(state["player"]["envs"]) == 2 and all(e["chosen"] for e in state["player"]["envs"])
    assert state["player"]["explore"]["random_steps"] > 0
    done = learn(cfg, resume=part["run_dir"], progress=False, echo=lambda m: None)
    assert done["env_steps"] == ref["env_steps"] == BUDGET
    eps = [json.load(open(f"{r['run_dir']}/data/manifest.json"))["episodes"] for r in (ref, done)]
    assert [e["sha256"] for e in eps[0]] == [e["sha256"] for e in eps[1]]
    a, b = (torch.load(f"{r['run_dir']}/learn.pt", weights_only=True) for r in (ref, done))
    # the actor's finished games and the two games in progress: all different games
    seeds = [e["game_seed"] for e in eps[0] if e["policy"] == "actor-critic"] + [
        e["game_seed"] for e in b["player"]["envs"]]
    assert len(seeds) >= 3 and len(set(seeds)) == len(seeds)
    for k in b["world_model"]:
        assert torch.equal(a["world_model"][k], b["world_model"][k]), k
    assert done["returns"] == ref["returns"]


def test_evaluate_stage2_reports_heads_of_a_learn_world_model_on_its_validation_games(learn_run, tmp_path):
    from experiments.report_stage2 import evaluate_stage2, format_report

    _, s = learn_run
    report = evaluate_stage2(s["world_model"], out=tmp_path / "report.json")
    for head in ("rewards", "life_loss"):
        assert {"precision", "recall"} <= set(report[head]["teacher_forced"])
    assert "precision" in format_report(report).split("Life loss")[1]
    manifest = json.load(open(f"{s['run_dir']}/data/manifest.json"))
    n_val = int(stable_split(len(manifest["episodes"]), 0.25, 0).sum())  # tiny: data.val_fraction 0.25
    long_val = [e for e, v in zip(manifest["episodes"], stable_split(len(manifest["episodes"]), 0.25, 0)) if v]
    assert n_val >= 1 and report["life_loss"]["steps"] <= sum(e["length"] for e in long_val)


def test_exploration_segments_play_the_configured_share_of_steps_with_held_random_actions():
    """``learn.explore_fraction``: that share of the collection steps is played by uniform-random actions held for
    ``learn.explore_hold`` steps; the actor plays the rest."""
    from experiments.learn import Players

    class Noop:  # an actor that always chooses NOOP (0)
        def predict(self, obs, deterministic=False):
            return np.zeros(len(obs), dtype=np.int64), None

    cfg = load_config("tiny", ["learn.explore_fraction=0.3", "learn.explore_hold=5"])
    players = Players(cfg, seed=0, num_envs=1)
    players.play(Noop(), 1500, lambda ep, seed: None)
    chosen = players.players[0].chosen
    players.close()
    assert 0.22 < players.random_steps / 1500 < 0.38
    # random segments are runs of one action: every non-NOOP run in the game in progress is a multiple of 5 long
    # (two segments may follow each other), unless it is still running at the end
    runs, cur, length = [], None, 0
    for a in chosen + [-1]:
        if a == cur:
            length += 1
            continue
        if cur not in (None, 0):
            runs.append(length)
        cur, length = a, 1
    assert runs and all(r % 5 == 0 for r in runs[:-1])
    off = load_config("tiny", [])
    assert off.learn.explore_fraction == 0.0


def test_the_loop_self_imitates_its_replay(tmp_path):
    """``agent.self_imitation`` inside `learn`: the agent's updates draw real transitions from the whole replay."""
    cfg = load_config("tiny", [*TINY, f"run.runs_dir={tmp_path}", "agent.self_imitation=1"])
    s = learn(cfg, progress=False, echo=lambda m: None)
    rows = [json.loads(line) for line in open(f"{s['run_dir']}/metrics.jsonl")]
    sil = [r["train/sil_positive"] for r in rows if "train/sil_positive" in r]
    assert len(sil) == s["iterations"] and all(0.0 <= v <= 1.0 for v in sil)


def test_a_refit_after_the_fact_holds_out_the_loops_validation_episodes(learn_run, tmp_path):
    """`pretrain --stage 2 --stage1-checkpoint RUN/world_model.pt --data RUN/data` splits the replay's episodes as the
    loop did (its stable split, recorded in the checkpoint), so the refit never trains on the episodes the loop's own
    refit validated on; with another seed or another replay it splits as pretrain always has."""
    from experiments.pretrain import pretrain_stage2, refit_split
    from worldmodel.checkpoint import load_checkpoint

    cfg, s = learn_run
    source = load_checkpoint(s["world_model"])
    data = source["data_dir"]
    assert source["episode_split"] == "stable"
    assert refit_split(source, data, cfg) == "stable"
    assert refit_split(source, data, load_config("tiny", [*TINY, "run.seed=3"])) == "permutation"
    assert refit_split(source, tmp_path, cfg) == "permutation"
    assert refit_split({k: v for k, v in source.items() if k != "episode_split"}, data, cfg) == "permutation"

    refit_cfg = load_config("tiny", [*TINY, f"run.runs_dir={tmp_path}"])
    r = pretrain_stage2(refit_cfg, stage1_checkpoint=s["world_model"], data=data, max_epochs=1, progress=False,
                        echo=lambda m: None)
    best = load_checkpoint(r["best_checkpoint"])
    assert best["episode_split"] == "stable"  # evaluate --stage 2 of the refit reads the same validation games


def test_the_loops_agent_imagines_after_each_starts_real_history_from_the_replay(tmp_path, monkeypatch):
    """``agent.imagine_context`` inside `learn`: every update gets K real steps before each start, taken from the
    start's own episode in the replay (Replay.starts), and the loop runs to its budget."""
    from agent.actor_critic import ActorCritic
    from envs.replay import Episode
    from experiments.learn import Replay

    def episode(n: int, first_action: int) -> Episode:
        return Episode(frames=np.zeros((n + 1, 8, 8), np.uint8), actions=np.arange(first_action, first_action + n) % 4,
                       rewards=np.zeros(n, np.float32), life_loss=np.zeros(n, bool), terminated=np.zeros(n, bool),
                       truncated=np.zeros(n, bool), labels=np.zeros((n + 1, 5), np.int16))

    cfg = load_config("tiny", [*TINY, f"run.runs_dir={tmp_path}", "agent.imagine_context=3"])
    replay = Replay(cfg, tmp_path / "r", None, torch.device("cpu"))
    replay.episodes = [episode(4, 1), episode(2, 0)]  # frames 0-4, then 5-7
    replay.latents = [torch.arange(5.0)[:, None], torch.arange(5.0, 8.0)[:, None]]
    s = replay.starts(3, torch.device("cpu"))
    assert s.context_rows.tolist()[4] == [1, 2, 3] and s.context_actions.tolist()[4] == [2, 3, 0]
    assert s.context_rows.tolist()[7] == [5, 5, 6] and s.context_actions.tolist()[7] == [0, 0, 1]

    seen = []
    update = ActorCritic.update

    def spy(self, model, z0, real=None, context=None, context_actions=None):
        seen.append(None if context is None else (tuple(context.shape), tuple(context_actions.shape)))
        return update(self, model, z0, real, context, context_actions)

    monkeypatch.setattr(ActorCritic, "update", spy)
    summary = learn(cfg, progress=False, echo=lambda m: None)
    assert summary["env_steps"] == BUDGET and seen
    B, D = cfg.agent.batch_size, cfg.models.shared_latent_dim
    assert all(x == ((B, 3, D), (B, 3)) for x in seen)

"""The evaluation protocol and the honest comparison: the serve, evaluation blocks that training never
reaches, whole games on every observation pipeline, a world model per seed, and tables that extend."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from envs.breakout import FIRE, make_env
from envs.errors import UserError
from envs.replay import load_episodes
from envs.seeds import EVAL_BLOCKS, evaluation_seeds, in_evaluation_block, training_seed
from experiments.config import load_config
from experiments.play import eval_seeds, evaluate
from planners.reference import RandomPolicy
from tests.test_baselines import _cli


# ------------------------------------------------------------------------------------------------ the serve
def _play_noop(env, seed):
    """NOOP every step (an agent that never presses FIRE) until the game ends: (steps, infos)."""
    _, info = env.reset(seed=seed)
    infos, done = [info], False
    while not done:
        _, _, terminated, truncated, info = env.step(0)
        infos.append(info)
        done = terminated or truncated
    return infos


def test_a_swallowed_fire_is_pressed_again_until_the_ball_is_in_play():
    # Sticky actions at 0.9 swallow most FIREs: the serve must retry, each press an ordinary counted step.
    cfg = load_config("tiny", ["environment.repeat_action_probability=0.9", "environment.max_episode_frames=20000"])
    infos = _play_noop(make_env(cfg.environment, seed=0), seed=0)
    serve = np.array([i["serve"] for i in infos[1:]])
    assert infos[-1]["game_over"] and infos[-1]["lives"] == 0  # a NOOP agent still loses all five balls
    runs, run = [], 0
    for s in serve:
        run = run + 1 if s else 0
        runs.append(run)
    assert max(runs) >= 2, "at 0.9 sticky actions some serve needs more than one press"
    assert all(i["action"] == FIRE for i in infos[1:] if i["serve"])
    assert all(i["action"] == 0 for i in infos[1:] if not i["serve"])
    # after every serve (a run of serve steps) the RAM shows the ball in play
    for t in range(1, len(serve)):
        if serve[t - 1] and not serve[t]:
            assert infos[t]["ball_y"] > 0


def test_the_serve_is_bounded(monkeypatch):
    cfg = load_config("tiny", ["environment.serve_max_presses=3", "environment.repeat_action_probability=0.0"])
    env = make_env(cfg.environment, seed=0)
    env.reset(seed=0)
    rules = env.env  # FrameStackObservation -> BreakoutRules
    monkeypatch.setattr(type(rules), "_ball_in_play", lambda self: False)  # a ball that never shows
    infos = [env.step(2)[4] for _ in range(6)]
    assert [i["serve"] for i in infos] == [True, True, True, False, False, False]
    assert [i["action"] for i in infos] == [FIRE, FIRE, FIRE, 2, 2, 2]  # then the agent's actions pass through


def test_collected_actions_are_the_executed_ones(tmp_path):
    from experiments.collect import collect

    cfg = load_config("tiny")
    collect(cfg, tmp_path / "d", steps=200, seed=0, progress=False)
    (ep, *_), _ = load_episodes(tmp_path / "d")
    assert ep.actions[0] == FIRE  # the first step of a game serves
    assert ep.labels[1, 2] > 0  # and the ball is in play after it


# ------------------------------------------------------------------------------------------------ seeds
def test_evaluation_blocks_are_disjoint_and_training_never_reaches_them():
    for block in EVAL_BLOCKS:
        for seed in (0, 1, 2, 913):
            games = evaluation_seeds(block, seed, 10)
            assert {in_evaluation_block(g) for g in games} == {block}
    assert not set(evaluation_seeds("tuning", 0, 100)) & set(evaluation_seeds("heldout", 0, 100))
    assert not set(evaluation_seeds("heldout", 0, 10)) & set(evaluation_seeds("heldout", 1, 10))  # seeds differ
    for seed in (0, 1, 999, 19_999):
        for stream in (0, 1, 500, 99_999):
            assert in_evaluation_block(training_seed(seed, stream)) is None
    with pytest.raises(UserError, match="block"):
        evaluation_seeds("heldout", 5000, 10)


def test_collect_append_never_plays_an_evaluation_game(tmp_path, monkeypatch):
    import experiments.collect as collect_mod

    seen = []
    real = collect_mod.make_env

    def recording_make_env(*args, **kwargs):
        env = real(*args, **kwargs)
        inner = env.reset

        def reset(*, seed=None, options=None):
            if seed is not None:
                seen.append(seed)
            return inner(seed=seed, options=options)

        env.reset = reset
        return env

    monkeypatch.setattr(collect_mod, "make_env", recording_make_env)
    cfg = load_config("tiny")
    for i in range(3):  # 10 episodes in the folder made `seed + 1000 * 10` = the first evaluation game before
        collect_mod.collect(cfg, tmp_path / "d", steps=150, seed=0, append=i > 0, progress=False)
    assert len(seen) == 3 and len(set(seen)) == 3
    assert all(in_evaluation_block(s) is None for s in seen), seen


def test_evaluation_plays_whole_games_on_the_configured_block_and_sticky_setting(monkeypatch):
    cfg = load_config("tiny", ["environment.terminal_on_life_loss=true", "evaluation.block=heldout",
                               "environment.repeat_action_probability=0.0"])
    assert eval_seeds(cfg, 2) == [20_000, 20_001]
    res = evaluate(RandomPolicy(seed=0), cfg, episodes=2, progress=False)
    assert [r["seed"] for r in res] == [20_000, 20_001]
    assert all(r["game_over"] and not r["truncated"] for r in res)  # all lives, despite terminal_on_life_loss
    assert all(r["return"] == r["score_ram"] for r in res)  # raw score
    again = evaluate(RandomPolicy(seed=0), cfg, episodes=2, progress=False)
    assert [r["return"] for r in again] == [r["return"] for r in res]  # no sticky actions: replays exactly
    sticky = dataclasses.replace(cfg, environment=dataclasses.replace(cfg.environment, repeat_action_probability=0.25))
    env_probs = []
    from experiments import play

    real = play.make_eval_env

    def recording(c, *args, **kwargs):
        env_probs.append(c.environment.repeat_action_probability)
        return real(c, *args, **kwargs)

    monkeypatch.setattr(play, "make_eval_env", recording)
    evaluate(RandomPolicy(seed=0), sticky, episodes=1, progress=False)
    assert env_probs == [0.25]


def test_sb3_stack_agents_are_evaluated_on_their_own_frames_by_the_same_protocol():
    cfg = load_config("tiny", ["evaluation.block=heldout"])

    class Probe(RandomPolicy):
        observation_pipeline = "sb3-atari"
        shapes: set = set()

        def act(self, obs):
            self.shapes.add(obs.shape)
            return super().act(obs)

    agent = Probe(seed=0)
    res = evaluate(agent, cfg, episodes=1, progress=False)
    assert agent.shapes == {(4, 84, 84)} and res[0]["seed"] == 20_000
    assert res[0]["game_over"] or res[0]["truncated"]


# ------------------------------------------------------------------------------------------------ comparison
def test_a_world_model_per_seed_and_tables_that_extend(tmp_path):
    out = tmp_path / "cmp"
    common = ["--preset", "tiny", "--wandb", "disabled", "--set", "run.threads=1"]
    res = _cli("compare-baselines", "--seeds", "2", "--agents", "random,actor-critic", "--out", str(out), *common)
    assert res.returncode == 0, res.stderr[-2000:]
    stacks = [json.loads((out / "world-models" / f"s{s}" / "stack.json").read_text()) for s in (0, 1)]
    assert stacks[0]["world_model"] != stacks[1]["world_model"]  # each seed trained its own
    results = [json.loads((out / "actor-critic" / f"s{s}" / "result.json").read_text()) for s in (0, 1)]
    assert [r["hyperparams"]["world_model"] for r in results] == [s["world_model"] for s in stacks]
    assert all(r["world_model_per_seed"] for r in results)
    table = json.loads((out / "results.json").read_text())
    ac = next(a for a in table["agents"] if a["agent"] == "actor-critic")
    assert len(ac["seed_means"]) == 2 and ac["world_model_per_seed"] is True
    assert ac["evaluation_seeds"] == [10_000, 10_001]  # one game per seed, each seed its own game

    # another machine extends the committed table: the reference's pairs are imported, not rerun
    ref = out / "episodes.json"
    assert {(p["agent"], p["seed"]) for p in json.loads(ref.read_text())["pairs"]} == {
        ("random", 0), ("random", 1), ("actor-critic", 0), ("actor-critic", 1)}
    out2 = tmp_path / "cmp2"
    res = _cli("compare-baselines", "--seeds", "2", "--agents", "dqn-sb3", "--reference", str(ref), "--out", str(out2),
               *common)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "imported 4 finished agent/seed pairs" in res.stdout and "0 already finished, 2 to run" in res.stdout
    assert "another platform" not in res.stdout  # made here: a rerun repeats them
    assert all(r["platform"]["cpu_capability"] and r["platform"]["torch"] for r in results)
    names = [a["agent"] for a in json.loads((out2 / "results.json").read_text())["agents"]]
    assert names == ["dqn-sb3", "actor-critic", "random"]
    assert not (out2 / "world-models").exists()
    # --only-finished runs nothing and tables what is there
    res = _cli("compare-baselines", "--seeds", "2", "--agents", "random,ppo-sb3", "--only-finished", "--out", str(out2),
               *common)
    assert res.returncode == 0 and "not running ppo-sb3 seed 0, ppo-sb3 seed 1" in res.stdout
    assert not (out2 / "ppo-sb3").exists() and "| random | 2 |" in (out2 / "results.md").read_text()
    # pairs made on another CPU are imported (their numbers stand) with a note that a rerun here would differ
    moved = json.loads(ref.read_text())
    other = "AVX2" if results[0]["platform"]["cpu_capability"] == "AVX512" else "AVX512"  # not this machine's
    for pair in moved["pairs"]:
        pair["platform"] = {**pair["platform"], "cpu_capability": other}
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    res = _cli("compare-baselines", "--seeds", "2", "--agents", "random", "--only-finished", "--reference",
               str(tmp_path / "moved.json"), "--out", str(tmp_path / "c5"), *common)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "imported pairs made on another platform" in res.stdout and f"{other} there" in res.stdout
    assert "and 1 more" in res.stdout  # three named, the fourth counted
    # a reference made with other settings is refused in one sentence
    res = _cli("compare-baselines", "--agents", "random", "--reference", str(ref), "--out", str(tmp_path / "c3"),
               *common, "--set", "evaluation.episodes=3")
    assert res.returncode == 2 and "other settings" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "c3").exists()  # refused before anything was written
    # ... and so is a pair whose own settings differ: the actor-critics trained their world model and agent with
    # other agent settings, so they are left out of the import (and run, unless --only-finished) ...
    other_agent = ["--set", "agent.entropy_coef=0.5"]
    res = _cli("compare-baselines", "--seeds", "2", "--agents", "random,actor-critic", "--reference", str(ref),
               "--only-finished", "--out", str(tmp_path / "c4"), *common, *other_agent)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "imported 2 finished agent/seed pairs" in res.stdout
    assert "actor-critic seed 0 (agent.entropy_coef: " in res.stdout and "0.5 here" in res.stdout
    assert not (tmp_path / "c4" / "actor-critic").exists()
    # ... and a rerun into the folder that holds them is refused rather than reusing them as this comparison's
    res = _cli("compare-baselines", "--seeds", "2", "--agents", "actor-critic", "--only-finished", "--out", str(out),
               *common, *other_agent)
    assert res.returncode == 2 and "made with other settings (agent.entropy_coef" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_pairs_from_before_recorded_settings_are_checked_on_their_hyperparams():
    """An episodes.json from before result.json recorded its settings: a closed-loop pair is matched on the learn and
    agent sections its hyperparams show (keys added since are not held against it)."""
    from experiments.compare import CompareOptions, pair_mismatch, pair_settings

    cfg = load_config("tiny", ["learn.prefill_steps=300", "learn.prefill_max_steps=300"])
    settings = pair_settings(cfg, "learn", CompareOptions())
    assert settings["learn"]["prefill_steps"] == 300 and "agent" in settings and "environment" in settings
    legacy_learn = {k: v for k, v in settings["learn"].items() if k != "explore_fraction"}  # an older learn section
    legacy = {"agent": "learn", "seed": 0, "hyperparams": {"learn": legacy_learn, "agent": settings["agent"]}}
    assert pair_mismatch(legacy, settings) is None
    other = {**legacy, "hyperparams": {**legacy["hyperparams"], "learn": {**legacy_learn, "prefill_steps": 200}}}
    assert pair_mismatch(other, settings) == "learn.prefill_steps: 200 there, 300 here"
    assert pair_mismatch({**legacy, "settings": settings}, settings) is None
    assert pair_mismatch({**legacy, "settings": {**settings, "learn": {**settings["learn"], "collect_steps": 1}}},
                         settings).startswith("learn.collect_steps: 1 there")
    # an SB3 baseline is decided by the shared sections alone: the closed loop's settings do not touch it
    assert "learn" not in pair_settings(cfg, "dqn", CompareOptions())


def test_recorded_settings_count_keys_added_later_at_their_default():
    """A pair whose recorded settings predate a key matches at the key's code default (the behaviour before the key
    existed) and not when the comparison sets the key otherwise."""
    from experiments.compare import CompareOptions, pair_mismatch, pair_settings

    settings = pair_settings(load_config("tiny"), "learn", CompareOptions())
    older = {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}
    del older["agent"]["eval_temperature"], older["learn"]["final_refit_dropout"]  # keys of later commits
    pair = {"agent": "learn", "seed": 0, "settings": older}
    assert pair_mismatch(pair, settings) is None
    cooler = pair_settings(load_config("tiny", ["agent.eval_temperature=0.5"]), "learn", CompareOptions())
    assert pair_mismatch(pair, cooler) == "agent.eval_temperature: 1.0 there, 0.5 here"
    assert pair_mismatch({**pair, "settings": {**older, "agent": {**older["agent"], "entropy_coef": 9.0}}},
                         settings).startswith("agent.entropy_coef: 9.0 there")


def test_world_model_stack_resumes_an_interrupted_pretraining_and_refuses_other_settings(tmp_path):
    from pathlib import Path

    from experiments.collect import collect
    from experiments.pretrain import pretrain_stage1
    from experiments.world_model_stack import stack_dir, world_model_stack

    cfg = load_config("tiny", ["run.threads=1", "run.wandb=disabled"])
    out = tmp_path / "cmp"
    root = stack_dir(out, 0)
    mine = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, runs_dir=str(root)))
    steps = min(cfg.data.collect_steps, cfg.baselines.agent_steps)
    collect(mine, root / "data", steps, seed=0, progress=False)
    (root / "data.done").write_text(str(steps))
    pretrain_stage1(mine, data=root / "data", max_steps=2, progress=False, echo=lambda m: None)  # interrupted
    (started,) = (root / "pretrain").iterdir()
    stack = world_model_stack(cfg, 0, out, progress=False)
    assert Path(stack["pretrain_run"]) == started and len(list((root / "pretrain").iterdir())) == 1  # resumed
    assert json.loads((started / "stage1_summary.json").read_text())["resumed_from"]["step"] == 2
    assert stack["env_steps"] == steps and Path(stack["agent_checkpoint"]).is_file()
    assert world_model_stack(cfg, 0, out, progress=False) == stack  # a finished stack is reused as it is
    with pytest.raises(UserError, match="other settings"):
        world_model_stack(load_config("tiny", ["run.threads=1", "agent.updates=7"]), 0, out, progress=False)

"""SB3 baselines on the project's pipeline, score statistics and the compare-baselines CLI (tiny preset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import VecTransposeImage, is_vecenv_wrapped

from experiments.baselines import ClipReward, build_model, make_training_env, scaled_hyperparams, train_sb3
from experiments.config import load_config
from experiments.results import (
    bootstrap_ci,
    format_table,
    games_bootstrap_diff_ci,
    human_normalised,
    iqm,
    seed_bootstrap_ci,
    seed_bootstrap_diff_ci,
    summarize_agent,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_cfg():
    return load_config("tiny", ["run.wandb=disabled"])


# ------------------------------------------------------------------ hyperparameters scaled to the budget
def test_dqn_hyperparams_follow_the_budget():
    hp = scaled_hyperparams("dqn", 100_000)
    assert hp["learning_starts"] == 20_000  # a fifth of the budget, not the zoo's 100k
    assert hp["buffer_size"] == 100_000  # the whole budget fits in the buffer
    assert hp["exploration_fraction"] == 0.1 and hp["total_timesteps"] == 100_000
    assert hp["learning_rate"] == 1e-4 and hp["train_freq"] == 4 and hp["target_update_interval"] == 1000


@pytest.mark.parametrize("budget", [256, 30_000, 100_000])
def test_ppo_and_a2c_never_exceed_the_budget(budget):
    for algo in ("ppo", "a2c"):
        hp = scaled_hyperparams(algo, budget)
        rollout = hp["n_envs"] * hp["n_steps"]
        assert 0 < hp["total_timesteps"] <= budget
        assert hp["total_timesteps"] % rollout == 0
    assert scaled_hyperparams("ppo", 100_000)["n_steps"] == 128  # the zoo's rollout where it fits


# ------------------------------------------------------------------ the training pipeline
def test_training_env_is_channel_first_and_not_transposed(tiny_cfg):
    hp = scaled_hyperparams("ppo", 256)
    env = make_training_env(tiny_cfg, hp["n_envs"], seed=0)
    obs = env.reset()
    assert obs.shape == (hp["n_envs"], 4, 64, 64) and obs.dtype == np.uint8
    model = build_model("ppo", hp, env, seed=0)
    assert not is_vecenv_wrapped(model.get_env(), VecTransposeImage)
    assert model.observation_space.shape == (4, 64, 64)
    env.close()


def test_training_env_ends_episodes_at_life_loss(tiny_cfg):
    env = make_training_env(tiny_cfg, 1, seed=3)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        _, _, dones, infos = env.step(rng.integers(4, size=1))
        if dones[0]:
            break
    assert dones[0], "random play should lose a life within 2000 steps"
    assert infos[0]["life_loss"] and infos[0]["lives"] >= 1 and not infos[0]["game_over"]
    env.close()


class _FixedReward(gym.Env):
    observation_space = gym.spaces.Discrete(1)
    action_space = gym.spaces.Discrete(1)

    def __init__(self, reward):
        self.r = reward

    def reset(self, *, seed=None, options=None):
        return 0, {}

    def step(self, action):
        return 0, self.r, False, False, {}


@pytest.mark.parametrize("raw,clipped", [(7.0, 1.0), (4.0, 1.0), (0.0, 0.0), (-2.0, -1.0)])
def test_rewards_are_clipped_to_their_sign(raw, clipped):
    env = ClipReward(_FixedReward(raw))
    env.reset()
    assert env.step(0)[1] == clipped


def test_train_sb3_dqn_tiny(tiny_cfg):
    out = train_sb3("dqn", tiny_cfg)
    assert out.env_steps == 256 and out.model is not None
    assert [p["env_steps"] for p in out.curve] == [128]  # every eval_every steps; the final one comes later
    assert all(len(p["returns"]) == tiny_cfg.baselines.eval_episodes for p in out.curve)
    assert out.hyperparams["learning_starts"] == 51
    assert 0 <= out.agent.act(np.zeros((4, 64, 64), np.uint8)) < 4


# ------------------------------------------------------------------ statistics
def test_iqm_and_normalisation_on_known_values():
    assert iqm(np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0])) == pytest.approx(3.5)  # middle 4 of 8
    assert human_normalised(30.5) == pytest.approx(1.0) and human_normalised(1.7) == pytest.approx(0.0)
    x = np.arange(20.0)
    se = x.std() / np.sqrt(x.size)  # the plug-in standard error of the mean, what the bootstrap estimates
    for level, z in ((0.95, 1.959964), (0.5, 0.674490)):  # against the normal approximation mean +- z * se
        lo, hi = bootstrap_ci(x, "mean", level=level)
        half = z * se  # a CI twice as wide (or as narrow) is off by a whole half-width at both ends
        assert abs(lo - (9.5 - half)) < 0.15 * half and abs(hi - (9.5 + half)) < 0.15 * half


def test_summary_pools_seeds_and_episodes():
    s = summarize_agent("x", [{"seed": 0, "returns": [1, 2], "env_steps": 10, "wall_clock_s": 1.0},
                              {"seed": 1, "returns": [3, 4], "env_steps": 10, "wall_clock_s": 2.0}])
    assert s["episodes"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5 and s["wall_clock_s_total"] == 3.0
    assert s["ci95_mean"][0] <= 2.5 <= s["ci95_mean"][1]
    assert s["ci95_mean_over_seeds"][0] <= 2.5 <= s["ci95_mean_over_seeds"][1]
    assert "95% CI (mean, seeds)" in format_table([s])


def test_the_seed_interval_counts_the_spread_between_training_runs():
    """Three seeds whose agents differ (means 2, 5, 8) but whose games are each precise: the pooled-returns CI
    only sees the games and is narrow; the seed-level CI must span the seeds' spread. Seeds that agree give an
    interval about as wide as the pooled one."""
    rng = np.random.default_rng(1)
    apart = [m + rng.normal(0.0, 0.3, size=10) for m in (2.0, 5.0, 8.0)]
    lo_g, hi_g = bootstrap_ci(np.concatenate(apart), "mean")
    lo_s, hi_s = seed_bootstrap_ci(apart)
    assert hi_g - lo_g < 2.0 < hi_s - lo_s  # games alone: +-0.9 from the 3-point gaps; seeds: near 2..8
    assert lo_s < 3.5 and hi_s > 6.5 and lo_s <= 5.0 <= hi_s
    alike = [5.0 + rng.normal(0.0, 2.0, size=10) for _ in range(3)]
    lo_g, hi_g = bootstrap_ci(np.concatenate(alike), "mean")
    lo_s, hi_s = seed_bootstrap_ci(alike)
    assert 0.6 < (hi_s - lo_s) / (hi_g - lo_g) < 1.6
    one = [np.arange(10.0)]
    assert seed_bootstrap_ci(one) == bootstrap_ci(one[0], "mean", reps=4000)


def test_the_seed_difference_interval_pairs_shared_training_runs():
    """Two arms whose seeds differ by 3 points each but whose gap within every seed is a steady +1: paired by seed
    the seed spread cancels (a narrow interval around +1, excluding 0); drawn apart it does not (the interval
    spans 0). Unequal seed counts cannot pair."""
    rng = np.random.default_rng(2)
    base = [m + rng.normal(0.0, 0.2, size=10) for m in (2.0, 5.0, 8.0)]
    better = [g + 1.0 for g in base]
    d, lo, hi = seed_bootstrap_diff_ci(better, base, paired=True)
    assert d == pytest.approx(1.0) and 0.5 < lo <= d <= hi < 1.5
    d, lo, hi = seed_bootstrap_diff_ci(better, base, paired=False)
    assert lo < 0.0 < 1.0 < hi
    with pytest.raises(ValueError, match="as many seeds"):
        seed_bootstrap_diff_ci(better, base[:2])
    # seeds held fixed, only games resampled: the seed spread never enters, so the interval is narrow around +1
    d, lo, hi = games_bootstrap_diff_ci(better, base)
    assert d == pytest.approx(1.0) and 0.7 < lo <= d <= hi < 1.3


# ------------------------------------------------------------------ the CLI end to end
def _cli(*args, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update({"OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_compare_cli_writes_results_logs_wandb_and_skips_finished_pairs(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare-baselines", "--preset", "tiny", "--seeds", "1", "--agents", "dqn,random", "--out", str(out)]
    res = _cli(*args, "--wandb", "offline")
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    agents = {a["agent"]: a for a in data["agents"]}
    assert set(agents) == {"dqn", "random"}
    assert agents["dqn"]["env_steps"] == [256] and agents["random"]["env_steps"] == [0]
    assert agents["dqn"]["hyperparams"]["buffer_size"] == 256
    assert "| dqn |" in (out / "results.md").read_text()
    assert (out / "dqn" / "s0" / "model.zip").is_file() and (out / "dashboard.html").is_file()
    rows = [json.loads(x) for x in (out / "dqn" / "s0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/return_mean" in r] == [128, 256]  # curve point + final evaluation
    offline = list((out / "dqn" / "s0" / "wandb").glob("offline-run-*"))
    assert offline, "one offline wandb run per agent and seed"
    before = (out / "dqn" / "s0" / "result.json").stat().st_mtime_ns

    res = _cli(*args, "--wandb", "disabled")  # rerun: nothing left to do
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 already finished, 0 to run" in res.stdout
    assert (out / "dqn" / "s0" / "result.json").stat().st_mtime_ns == before


def test_compare_cli_user_errors(tmp_path):
    res = _cli("compare-baselines", "--preset", "tiny", "--agents", "ppo,nope", "--out", str(tmp_path / "a"))
    assert res.returncode == 2 and "unknown agent 'nope'" in res.stderr
    assert "Traceback" not in res.stderr
    out = tmp_path / "b"
    res = _cli("compare-baselines", "--preset", "tiny", "--agents", "random", "--out", str(out), "--wandb", "disabled")
    assert res.returncode == 0, res.stderr[-2000:]
    res = _cli("compare-baselines", "--preset", "tiny", "--agents", "random", "--out", str(out), "--wandb", "disabled",
               "--set", "evaluation.episodes=2")
    assert res.returncode == 2 and "different config" in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------ world-model agents in the registry
def test_world_model_agents_count_their_data_and_need_a_model(tiny_data, tmp_path):
    from experiments.agents import data_env_steps

    assert data_env_steps(tiny_data, None) == (600, tiny_data)
    # With one world model for every seed, the actor-critic still needs its checkpoint.
    res = _cli("compare-baselines", "--preset", "tiny", "--agents", "actor-critic", "--world-model",
               str(tmp_path / "wm.pt"), "--out", str(tmp_path / "c"))
    assert res.returncode == 2 and "needs a trained actor-critic: pass --agent-checkpoint" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_compare_cli_with_world_model_agents(tmp_path):
    """pretrain + train-agent on the tiny preset, then cem and actor-critic through compare-baselines."""
    runs = tmp_path / "runs"
    common = ["--preset", "tiny", "--wandb", "disabled", "--set", f"run.runs_dir={runs}"]
    assert _cli("pretrain", *common).returncode == 0
    wm = next(runs.glob("pretrain/*/stage2/best.pt"))
    assert _cli("train-agent", "--world-model", str(wm), *common).returncode == 0
    agent = next(runs.glob("train-agent/*/agent.pt"))
    out = tmp_path / "cmp"
    res = _cli("compare-baselines", "--agents", "cem,actor-critic", "--world-model", str(wm), "--agent-checkpoint",
               str(agent), "--out", str(out), *common)
    assert res.returncode == 0, res.stderr[-2000:]
    agents = {a["agent"]: a for a in json.loads((out / "results.json").read_text())["agents"]}
    assert agents["cem"]["env_steps"] == [600] and agents["actor-critic"]["env_steps"] == [600]  # the collected data
    assert "World-model training losses" in (out / "dashboard.html").read_text()  # the world model's own run


@pytest.mark.slow
def test_compare_cli_runs_the_closed_loop_as_two_agents_sharing_one_run(tmp_path):
    """`learn` and `learn-cem-value` of one seed share one `run.py learn` run, spend the budget, and a rerun
    reuses it."""
    out = tmp_path / "cmp"
    args = ["compare-baselines", "--preset", "tiny", "--seeds", "1", "--agents", "learn,learn-cem-value,random",
            "--out", str(out), "--wandb", "disabled", "--set", "baselines.agent_steps=400",
            "--set", "learn.eval_every=150"]
    res = _cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    agents = {a["agent"]: a for a in json.loads((out / "results.json").read_text())["agents"]}
    assert agents["learn"]["env_steps"] == [400] and agents["learn-cem-value"]["env_steps"] == [400]
    runs = list((out / "learn-runs" / "s0" / "learn").iterdir())
    assert len(runs) == 1, "both agents of a seed use one closed-loop run"
    learn = json.loads((out / "learn" / "s0" / "result.json").read_text())
    assert [p["env_steps"] for p in learn["curve"]] == [300, 400]  # a learning-curve point, then the final one
    assert learn["hyperparams"]["learn_run"] == str(runs[0])
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert learn["returns"] == summary["returns"]  # the one protocol: the same games, the same agent
    page = (out / "dashboard.html").read_text()
    assert "heads' precision and recall" in page and "learn-runs/s0/learn" in page
    (out / "learn" / "s0" / "result.json").unlink()  # the pair again, over a learn run started with other settings
    res = _cli(*args, "--set", "learn.collect_steps=50")
    assert res.returncode == 2 and "other settings" in res.stderr and "Traceback" not in res.stderr
    res = _cli(*args)  # with its own settings the finished learn run is reused, not run again
    assert res.returncode == 0 and "2 already finished, 1 to run" in res.stdout
    again = json.loads((out / "learn" / "s0" / "result.json").read_text())
    assert again["returns"] == summary["returns"]
    # the reused run's wall-clock is the learn run's over every call plus this pair's games, not this call's
    assert again["wall_clock_s"] >= summary["wall_clock_s"] == pytest.approx(sum(summary["timings_s"].values()))


def test_the_table_of_an_episodes_file_and_its_bad_input(tmp_path):
    """``python -m experiments.results EPISODES.json``: the table with both intervals; a later file's pair of the
    same agent and seed replaces the earlier one; an unreadable file is one sentence and exit code 2."""
    def pairs(agent, means):
        return {"pairs": [{"agent": agent, "seed": s, "returns": [m - 1.0, m + 1.0], "env_steps": 100,
                           "wall_clock_s": 1.0} for s, m in enumerate(means)]}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(pairs("x", [2.0, 4.0])))
    b.write_text(json.dumps(pairs("x", [10.0])))
    r = subprocess.run([sys.executable, "-m", "experiments.results", str(a), str(b)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    row = [line for line in r.stdout.splitlines() if line.startswith("| x |")]
    assert len(row) == 1 and "| 7.00 |" in row[0] and "10.00 / 4.00" in row[0]  # seed 0 replaced by b's
    assert "95% CI (mean, seeds)" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "experiments.results", str(bad)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a readable episodes.json" in r.stderr
    bad.write_text(json.dumps({"pairs": [{"agent": "x", "seed": 0}]}))  # no returns
    r = subprocess.run([sys.executable, "-m", "experiments.results", str(bad)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "has a pair without" in r.stderr


def test_the_diff_of_two_arms_from_episode_files_and_its_bad_input(tmp_path):
    """``python -m experiments.results diff A B``: per-seed returns from compare-baselines episodes.json (``:AGENT``)
    and plan-in-env episodes.jsonl (one seed a file, ``:PLANNER`` where several played), the difference of the
    means and both intervals, equal to the library functions'; a file holding several agents without a name, or a
    missing file, is one sentence and exit code 2."""
    cmp = tmp_path / "cmp" / "episodes.json"
    cmp.parent.mkdir()
    cmp.write_text(json.dumps({"pairs": [{"agent": "learn", "seed": s, "returns": r, "env_steps": 1, "wall_clock_s": 1}
                                         for s, r in enumerate([[6.0, 8.0, 10.0], [2.0, 4.0, 3.0]])]
                                        + [{"agent": "dqn", "seed": 0, "returns": [1.0], "env_steps": 1,
                                            "wall_clock_s": 1}]}))
    runs = []
    for s, r in enumerate([[1.0, 2.0], [3.0, 5.0]]):
        run = tmp_path / f"pie-s{s}"
        run.mkdir()
        rows = [{"planner": "actor-critic", "return": x} for x in r] + [{"planner": "random", "return": 0.0}]
        (run / "episodes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        runs.append(run)

    def diff(*args):
        return subprocess.run([sys.executable, "-m", "experiments.results", "diff", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    r = diff(f"{cmp}:learn", f"{tmp_path}/pie-s*:actor-critic", "--paired")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    a, b = [np.array([6.0, 8.0, 10.0]), np.array([2.0, 4.0, 3.0])], [np.array([1.0, 2.0]), np.array([3.0, 5.0])]
    d, lo, hi = games_bootstrap_diff_ci(a, b)
    _, slo, shi = seed_bootstrap_diff_ci(a, b, paired=True)
    assert out["a"]["per_seed"] == [8.0, 3.0] and out["b"]["per_seed"] == [1.5, 4.0] and out["difference"] == 2.75
    assert out["ci_games_only"] == [round(lo, 2), round(hi, 2)] and d == pytest.approx(2.75)
    assert out["ci_seeds_then_games"] == [round(slo, 2), round(shi, 2)] and out["paired"]
    for args, words in [((str(cmp), str(runs[0]) + ":actor-critic"), "add ':AGENT'"),
                        ((f"{cmp}:learn", str(runs[0])), "add ':PLANNER'"),
                        ((f"{cmp}:learn", str(tmp_path / "none.json") + ":x"), "not a readable"),
                        ((f"{cmp}:learn", f"{cmp}:dqn", "--paired"), "only a has seed 1")]:
        r = diff(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr


def test_the_diff_read_by_a_reader_that_stops_early_ends_quietly(tmp_path):
    """``python -m experiments.results diff A B | head -1``: a reader that closes the pipe before the end is not an
    error of the tool's: exit code 0 and no traceback (the output is larger than a pipe's buffer, so the tool is
    still writing when the reader stops)."""
    cmp = tmp_path / "episodes.json"
    cmp.write_text(json.dumps({"pairs": [{"agent": "learn", "seed": s, "returns": [float(s % 7)], "env_steps": 1,
                                          "wall_clock_s": 1} for s in range(3000)]}))
    proc = subprocess.Popen([sys.executable, "-m", "experiments.results", "diff", f"{cmp}:learn", f"{cmp}:learn"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "{"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err


def test_seeds_for_power_follows_the_normal_approximation():
    """Seeds an arm for 80% power at two-sided 5%: (1.96 + 0.84)^2 x sd^2 / d^2, by hand on small cases; paired arms
    use the spread of the per-seed differences; no figure for a zero difference or a single seed."""
    from experiments.results import compare_arms, seeds_for_power

    # unpaired: var(a) = 2, var(b) = 0, d = 2 -> 7.849 x 2 / 4 = 3.92 -> 4 seeds an arm
    assert seeds_for_power(np.array([1.0, 3.0]), np.array([0.0, 0.0]), paired=False, difference=2.0) == 4
    # paired: differences 6.5 and -1 (var 28.125), d = 2.75 -> 7.849 x 28.125 / 7.5625 = 29.19 -> 30
    assert seeds_for_power(np.array([8.0, 3.0]), np.array([1.5, 4.0]), paired=True, difference=2.75) == 30
    # unpaired: var 12.5 + 3.125 = 15.625 -> 7.849 x 15.625 / 7.5625 = 16.22 -> 17
    assert seeds_for_power(np.array([8.0, 3.0]), np.array([1.5, 4.0]), paired=False, difference=2.75) == 17
    assert seeds_for_power(np.array([1.0, 3.0]), np.array([1.0, 3.0]), paired=True, difference=0.0) is None
    assert seeds_for_power(np.array([5.0]), np.array([1.0, 2.0]), paired=False, difference=3.5) is None
    out = compare_arms([np.array([6.0, 8.0, 10.0]), np.array([2.0, 4.0, 3.0])],
                       [np.array([1.0, 2.0]), np.array([3.0, 5.0])], paired=True, reps=200)
    assert out["seed_sd"] == {"a": 3.54, "b": 1.77, "difference": 5.3} and out["seeds_for_80pct_power"] == 30


def test_probability_of_improvement_counts_seed_pairs_and_ties_half():
    """rliable's P(A > B) over per-seed means, by hand: every seed of a above every seed of b is 1, the reverse 0, a
    tie counts half; the bootstrap interval holds the point and stays within [0, 1]; compare_arms reports it."""
    from experiments.results import compare_arms, probability_of_improvement, probability_of_improvement_ci

    assert probability_of_improvement(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert probability_of_improvement(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    # pairs (1,2) (1,2) (3,2) (3,2): 0 + 0 + 1 + 1 -> 0.5; (2 vs 2) ties -> 0.5 each
    assert probability_of_improvement(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert probability_of_improvement(np.array([2.0]), np.array([2.0, 1.0])) == 0.75
    a = [np.array([6.0, 8.0]), np.array([9.0, 11.0]), np.array([4.0, 4.0])]  # seed means 7, 10, 4
    b = [np.array([5.0, 5.0]), np.array([6.0, 8.0])]  # seed means 5, 7
    # 7>5, 7=7 (half), 10>5, 10>7, 4<5, 4<7 -> (1 + 0.5 + 1 + 1) / 6
    p, lo, hi = probability_of_improvement_ci(a, b, reps=500)
    assert p == pytest.approx(3.5 / 6) and 0.0 <= lo <= p <= hi <= 1.0 and hi - lo > 0.2
    out = compare_arms(a, b, paired=False, reps=200)
    assert out["probability_a_beats_b"]["value"] == round(3.5 / 6, 3)


def test_a_paired_diff_pairs_the_arms_by_training_seed_and_names_a_seed_one_arm_lacks(tmp_path):
    """``diff A B --paired`` matches seed i of a with the same training seed of b, whatever order the files list
    them in (plan-in-env runs name theirs in config.yaml); a seed only one arm holds, or one held twice, is one
    sentence and exit code 2, never a silent pairing of different training runs."""
    def episodes(name, seeds_returns):
        path = tmp_path / name
        path.write_text(json.dumps({"pairs": [{"agent": "learn", "seed": s, "returns": r, "env_steps": 1,
                                               "wall_clock_s": 1} for s, r in seeds_returns]}))
        return f"{path}:learn"

    a = episodes("a.json", [(9, [10.0, 12.0]), (10, [4.0, 6.0])])
    b = episodes("b.json", [(10, [2.0, 4.0]), (9, [8.0, 10.0])])  # the other order
    runs = []
    for s, r in [(10, [2.0, 4.0]), (9, [8.0, 10.0])]:  # plan-in-env runs, sorted 'pie-0' (seed 10) before 'pie-1'
        run = tmp_path / f"pie-{len(runs)}"
        run.mkdir()
        (run / "episodes.jsonl").write_text("".join(json.dumps({"planner": "actor-critic", "return": x}) + "\n"
                                                    for x in r))
        (run / "config.yaml").write_text(f"run:\n  seed: {s}\n")
        runs.append(run)

    def diff(*args):
        return subprocess.run([sys.executable, "-m", "experiments.results", "diff", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    for other in (b, f"{tmp_path}/pie-*:actor-critic"):
        r = diff(a, other, "--paired")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["paired_by"] == "training seed" and out["a"]["seeds"] == out["b"]["seeds"] == [9, 10]
        assert out["b"]["per_seed"] == [9.0, 3.0] and out["seed_sd"]["difference"] == 0.0  # +2 within each seed
    unpaired = json.loads(diff(a, b).stdout)
    assert "paired_by" not in unpaired and unpaired["b"]["per_seed"] == [3.0, 9.0]  # as listed
    short = episodes("c.json", [(9, [8.0]), (11, [1.0])])
    twice = episodes("d.json", [(9, [8.0]), (9, [1.0])])
    for other, words in [(short, "only a has seed 10; only b has seed 11"), (twice, "seed 9 more than once")]:
        r = diff(a, other, "--paired")
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr

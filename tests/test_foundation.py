"""Foundation: config, the Breakout pipeline, replay data on disk, the CLI's edges."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from gymnasium.utils.env_checker import check_env

from envs.breakout import LEFT, NUM_ACTIONS, RIGHT, make_env, make_vec_env
from envs.dataset import FrameStackDataset, TemporalSequenceDataset
from envs.errors import UserError
from envs.replay import load_episodes, split_episodes
from envs.seeds import training_seed
from experiments.collect import collect
from experiments.config import load_config

from .conftest import ROOT


# ----------------------------------------------------------------------------------------------- config
def test_presets_load_and_stack():
    base = load_config(None)
    assert base.vjepa2_world_model.stage1.masking_ratio == 0.4
    assert base.vjepa2_world_model.stage1.ema_decay == 0.996
    assert base.vjepa2_world_model.stage2.sequence_length == 8
    assert base.models.encoder.params.vit.mlp_dim == 512
    for preset in ("tiny", "quick", "full", "atari100k"):
        cfg = load_config(preset)
        assert cfg.preset == preset
    a100k = load_config("atari100k")
    assert a100k.environment.repeat_action_probability == 0.0
    assert a100k.environment.max_episode_frames == 108_000
    assert a100k.baselines.agent_steps == 100_000


def test_dotted_override_and_types():
    cfg = load_config("tiny", ["vjepa2_world_model.stage1.masking_ratio=0.5", "run.seed=7"])
    assert cfg.vjepa2_world_model.stage1.masking_ratio == 0.5 and cfg.run.seed == 7
    cfg = load_config("tiny", ["vjepa2_world_model.stage1.learning_rate=1"])  # int accepted for float
    assert isinstance(cfg.vjepa2_world_model.stage1.learning_rate, float)


def test_defaults_are_the_component_dataclasses():
    """No YAML holds defaults: the default config is the dataclasses' own, and each component owns its config."""
    import experiments.config as config
    from agent.actor_critic import AgentConfig
    from envs.breakout import EnvironmentConfig
    from planners.cem import PlannerConfig
    from worldmodel.dynamics_loss import Stage2Config
    from worldmodel.encoder import VitConfig
    from worldmodel.masked_prediction import PredictorConfig, Stage1Config
    from worldmodel.transformer import WorldModelNetConfig

    assert load_config(None) == config.Config()
    assert not (config.CONFIG_DIR / "default.yaml").exists()
    for cls in (AgentConfig, EnvironmentConfig, PlannerConfig, PredictorConfig, Stage1Config, Stage2Config, VitConfig,
                WorldModelNetConfig):
        assert getattr(config, cls.__name__) is cls  # re-exported for `from experiments.config import ...`
        cls().validate("x")  # the defaults are valid
    with pytest.raises(UserError, match=r"'planner\.elites' = 9 .*planner\.samples=4"):
        PlannerConfig(samples=4, elites=9).validate("planner")
    with pytest.raises(UserError, match=r"'models\.encoder\.params\.vit\.depth'"):
        load_config("tiny", ["models.encoder.params.vit.depth=0"])


@pytest.mark.parametrize("override,fragment", [
    ("vjepa2_world_model.stage1.maskin_ratio=0.5", "vjepa2_world_model.stage1.maskin_ratio"),
    ("vjepa2_world_model.stage1.num_epochs=ten", "vjepa2_world_model.stage1.num_epochs"),
    ("vjepa2_world_model.stage1.masking_ratio=1.5", "vjepa2_world_model.stage1.masking_ratio"),
    ("vjepa2_world_model.stage1.masking_ratio=0", "vjepa2_world_model.stage1.masking_ratio"),
    ("vjepa2_world_model.stage2.rollout_steps=9", "vjepa2_world_model.stage2.rollout_steps"),
    ("run.wandb=maybe", "run.wandb"),
])
def test_bad_config_message(override, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        load_config("tiny", [override])


@pytest.mark.parametrize("args,fragment", [
    (["--set", "vjepa2_world_model.stage1.maskin_ratio=0.5"],
     "unknown config key 'vjepa2_world_model.stage1.maskin_ratio'"),
    (["--set", "models.shared_latent_dim=big"], "'models.shared_latent_dim'"),
    (["--set", "vjepa2_world_model.stage1.masking_ratio=1.2"], "'vjepa2_world_model.stage1.masking_ratio'"),
    (["--set", "vjepa2_world_model.stage2.sequence_length=2"], "sequence_length must be >= rollout_steps"),
    (["--config", "does/not/exist.yaml"], "does not exist"),
    (["--preset", "huge"], "unknown preset 'huge'"),
])
def test_bad_config_cli_exit_code(cli, tmp_path, args, fragment):
    res = cli("collect", "--steps", "10", "--out", str(tmp_path / "d"), *args)
    assert res.returncode == 2, res.stderr
    assert fragment in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_every_command_has_help_with_example():
    from click.testing import CliRunner

    from run import cli as group

    runner = CliRunner()
    res = runner.invoke(group, ["--help"])
    assert res.exit_code == 0
    for name in ("collect", "pretrain", "evaluate", "plan-in-env", "compare-baselines", "demo"):
        assert name in group.commands
    for name in group.commands:
        sub = runner.invoke(group, [name, "--help"])
        assert sub.exit_code == 0, name
        assert "Example" in sub.output, name


# ----------------------------------------------------------------------------------------------- env
@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")  # we check the whole pipeline on purpose
def test_env_checker_passes():
    env = make_env(load_config("tiny").environment, seed=0)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 64, 64) and obs.dtype == np.uint8
    for key in ("paddle_x", "ball_x", "ball_y", "lives", "score"):
        assert key in info
    env.close()


def test_right_moves_paddle_right():
    env = make_env(load_config("tiny").environment, seed=0)
    _, info = env.reset(seed=0)
    x0 = info["paddle_x"]
    for _ in range(5):
        _, _, _, _, info = env.step(RIGHT)
    assert info["paddle_x"] > x0
    x1 = info["paddle_x"]
    for _ in range(5):
        _, _, _, _, info = env.step(LEFT)
    assert info["paddle_x"] < x1


def test_life_loss_and_score_labels():
    cfg = load_config("tiny", ["environment.repeat_action_probability=0.0"])
    env = make_env(cfg.environment, seed=1)
    env.reset(seed=1)
    total, losses, info = 0.0, 0, {}
    for _ in range(2000):
        _, r, term, trunc, info = env.step(0)  # NOOP: the served ball is missed
        total += r
        losses += info["life_loss"]
        if term or trunc:
            break
    assert term and losses == 5 and info["lives"] == 0
    assert info["score"] == total


def test_terminal_on_life_loss_continues_game():
    cfg = load_config("tiny", ["environment.terminal_on_life_loss=true", "environment.repeat_action_probability=0.0"])
    env = make_env(cfg.environment, seed=0)
    _, info = env.reset(seed=0)
    lives = info["lives"]
    for _ in range(1000):
        _, _, term, _, info = env.step(0)
        if term:
            break
    assert info["life_loss"] and info["lives"] == lives - 1
    _, info = env.reset()
    assert info["lives"] == lives - 1  # same game, next life


def test_vector_env_shapes():
    vec = make_vec_env(load_config("tiny").environment, num_envs=2, seed=0)
    obs, info = vec.reset(seed=0)
    assert obs.shape == (2, 4, 64, 64) and obs.dtype == np.uint8
    obs, r, term, trunc, info = vec.step(np.array([1, 2]))
    assert obs.shape == (2, 4, 64, 64) and r.shape == (2,)
    assert info["paddle_x"].shape == (2,)
    vec.close()


# ----------------------------------------------------------------------------------------------- replay data
def test_collection_matches_acting_path_bytes(tmp_path):
    cfg = load_config("tiny")
    out = tmp_path / "d"
    collect(cfg, out, steps=300, seed=3, progress=False)
    episodes, manifest = load_episodes(out)
    store = FrameStackDataset(episodes[:1]).store
    ep = episodes[0]
    env = make_env(cfg.environment, seed=3)
    obs, _ = env.reset(seed=training_seed(3, 0))  # collection plays games of the training range
    acted = [obs]
    for a in ep.actions:
        obs, *_ = env.step(int(a))
        acted.append(obs)
    rebuilt = store.obs(np.arange(len(ep) + 1))
    assert rebuilt.shape == (len(ep) + 1, 4, 64, 64)
    assert np.array_equal(np.stack(acted), rebuilt)


def test_manifest_and_disk_size(tiny_data):
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    assert sum(e["length"] for e in manifest["episodes"]) == 600
    assert all(len(e["sha256"]) == 64 for e in manifest["episodes"])
    episodes, _ = load_episodes(tiny_data)
    frames = sum(len(e.frames) for e in episodes)
    disk = sum(p.stat().st_size for p in (tiny_data / "episodes").glob("*.npz"))
    assert disk <= 1.1 * frames * 64 * 64
    assert episodes[-1].truncated[-1]  # the step budget cut the last episode
    assert manifest["env"]["repeat_action_probability"] == 0.25


def test_sequences_never_cross_episode_end(tiny_data):
    episodes, _ = load_episodes(tiny_data)
    ds = TemporalSequenceDataset(episodes, sequence_length=8)
    b = ds.batch(np.arange(len(ds)))
    assert b["obs"].shape == (len(ds), 9, 4, 64, 64)
    assert b["actions"].shape == (len(ds), 8)
    ep_of = ds.store.episode_of[b["frame_index"].numpy()]
    assert (ep_of == ep_of[:, :1]).all()
    # only the last transition of a sequence may end an episode
    assert not b["terminated"][:, :-1].any()
    expected = sum(max(0, len(e) - 8 + 1) for e in episodes)
    assert len(ds) == expected
    # rewards and actions line up with the episode arrays
    first = ds.batch(np.array([0]))
    assert np.array_equal(first["actions"][0].numpy(), episodes[0].actions[:8])


def test_episode_split_is_by_episode():
    tr, va = split_episodes(10, 0.2, seed=0)
    assert len(va) == 2 and len(tr) == 8 and not set(tr) & set(va)
    with pytest.raises(UserError, match="at least 2 episodes"):
        split_episodes(1, 0.2)


def test_corrupted_file_is_detected(tmp_path):
    out = tmp_path / "d"
    collect(load_config("tiny"), out, steps=300, progress=False)
    victim = sorted((out / "episodes").glob("*.npz"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(UserError, match=victim.name):
        load_episodes(out)
    victim.write_bytes(bytes(data[: len(data) // 3]))  # truncated, checked without checksums too
    with pytest.raises(UserError, match="truncated or corrupted"):
        load_episodes(out, verify=False)


def test_nonempty_folder_refused_or_appended(cli, tmp_path):
    out = tmp_path / "d"
    res = cli("collect", "--steps", "200", "--out", str(out), "--preset", "tiny", "--wandb", "disabled")
    assert res.returncode == 0, res.stderr
    before = (out / "manifest.json").read_text()
    res = cli("collect", "--steps", "200", "--out", str(out), "--preset", "tiny")
    assert res.returncode == 2 and "not empty" in res.stderr and "--append" in res.stderr
    assert (out / "manifest.json").read_text() == before
    res = cli("collect", "--steps", "200", "--out", str(out), "--preset", "tiny", "--append")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(e["length"] for e in manifest["episodes"]) == 400
    load_episodes(out)


def test_killed_collection_leaves_completed_episodes_readable(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "collect", "--steps", "1000000", "--out", str(out),
                             "--preset", "tiny"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            m = out / "manifest.json"
            if m.is_file() and len(json.loads(m.read_text())["episodes"]) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    episodes, manifest = load_episodes(out)
    assert len(episodes) >= 2


def test_run_folder_has_config_metrics_and_offline_wandb(cli, tmp_path):
    res = cli("demo", "--preset", "tiny", "--wandb", "offline", "--set", f"run.runs_dir={tmp_path}",
              "--set", "data.collect_steps=400")
    assert res.returncode == 0, res.stderr
    (run_dir,) = list((tmp_path / "demo").iterdir())
    assert run_dir.name.endswith("-tiny-s0")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["data"]["collect_steps"] == 400 and cfg["preset"] == "tiny"
    assert (run_dir / "metrics.jsonl").read_text().strip()
    offline = list(run_dir.rglob("offline-run-*"))
    assert offline and all(str(p).startswith(str(run_dir)) for p in offline)  # nothing outside the run folder
    assert (run_dir / "demo_summary.json").is_file()
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["command"] == "demo" and len(prov["starts"]) == 1
    start = prov["starts"][0]
    assert start["torch"] == torch.__version__ and start["cpu_capability"] and start["device"] == "cpu"


def test_a_resumed_run_records_every_start_and_platform_differences_name_their_key(tmp_path):
    from experiments.runlog import RunLogger, platform_differences, platform_record

    cfg = load_config("tiny", ["run.wandb=disabled"])
    RunLogger(cfg, "learn", run_dir=tmp_path / "r").close()
    RunLogger(cfg, "learn", run_dir=tmp_path / "r", resume=True).close()
    starts = json.loads((tmp_path / "r" / "provenance.json").read_text())["starts"]
    assert len(starts) == 2 and starts[0]["commit"] == starts[1]["commit"]
    here = platform_record()
    assert platform_differences(here, here) == []
    assert platform_differences({**here, "torch": "2.0.0"}, here) == [f"torch: 2.0.0 there, {here['torch']} here"]
    assert platform_differences(None, here) == ["platform: not recorded there"]


def test_random_actions_cover_action_space(tiny_data):
    episodes, _ = load_episodes(tiny_data)
    acts = np.concatenate([e.actions for e in episodes])
    assert set(np.unique(acts)) == set(range(NUM_ACTIONS))


def test_new_run_dir_never_shares_a_folder_between_concurrent_runs(tmp_path):
    """Two processes started in the same second got the same run folder (a check-then-create race)."""
    from concurrent.futures import ThreadPoolExecutor

    from experiments.runlog import new_run_dir

    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: new_run_dir(tmp_path / "pretrain", "20261129-120000-quick-s0"), range(16)))
    assert len(set(dirs)) == 16 and all(d.is_dir() for d in dirs)
    assert (tmp_path / "pretrain" / "20261129-120000-quick-s0") in dirs
    assert (tmp_path / "pretrain" / "20261129-120000-quick-s0-16") in dirs


@pytest.mark.parametrize("override, key", [
    ("models.world_model.heads=0", "models.world_model.heads"),
    ("models.predictor.heads=0", "models.predictor.heads"),
    ("run.device=foo", "run.device"),
    ("run.seed=-5", "run.seed"),
    ("vjepa2_world_model.stage1.grad_clip=-1", "vjepa2_world_model.stage1.grad_clip"),
    ("vjepa2_world_model.stage2.grad_clip=0", "vjepa2_world_model.stage2.grad_clip"),
    ("vjepa2_world_model.stage1.warmup_epochs=-5", "vjepa2_world_model.stage1.warmup_epochs"),
    ("agent.grad_clip=-1", "agent.grad_clip"),
    ("models.world_model.depth=0", "models.world_model.depth"),
    ("models.world_model.hidden_dim=0", "models.world_model.hidden_dim"),
    ("models.predictor.depth=0", "models.predictor.depth"),
    ("models.encoder.params.vit.mlp_dim=0", "models.encoder.params.vit.mlp_dim"),
    ("baselines.agent_steps=0", "baselines.agent_steps"),
    ("baselines.eval_episodes=0", "baselines.eval_episodes"),
    ("vjepa2_world_model.stage2.reward_pos_weight=0", "vjepa2_world_model.stage2.reward_pos_weight"),
    ("agent.hidden_dim=0", "agent.hidden_dim"),
])
def test_out_of_range_values_name_their_key(override, key):
    from envs.errors import UserError
    from experiments.config import load_config

    with pytest.raises(UserError, match=f"'{key}'.*out of range"):
        load_config("tiny", [override])


def test_a_negative_value_of_any_numeric_key_is_refused_naming_that_key():
    """Every number in the config (sizes, counts, weights, rates, probabilities) is refused at -1 in one sentence
    naming its own key, so no bad value reaches a run; the only key where -1 means something is listed."""
    import dataclasses

    from envs.errors import UserError
    from experiments.config import load_config

    sentinels = {"learn.final_refit_dropout"}  # -1 = the refit keeps the loop's dropout

    def numeric_keys(obj, prefix):
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                yield from numeric_keys(value, key + ".")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                yield key

    keys = list(numeric_keys(load_config("tiny"), ""))
    assert len(keys) > 100 and "models.world_model.depth" in keys
    accepted = []
    for key in keys:
        if key in sentinels:
            continue
        try:
            load_config("tiny", [f"{key}=-1"])
            accepted.append(key)
        except UserError as e:
            assert key in str(e), f"{key}=-1 was refused without naming {key}: {e}"
    assert not accepted, f"-1 accepted for {accepted}"
    with pytest.raises(UserError, match="teacher_forcing_weight"):  # no dynamics loss at all
        load_config("tiny", ["vjepa2_world_model.stage2.teacher_forcing_weight=0",
                             "vjepa2_world_model.stage2.rollout_weight=0"])


def test_runs_dir_that_is_a_file_is_refused(tmp_path):
    from envs.errors import UserError
    from experiments.config import load_config

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="run.runs_dir"):
        load_config("tiny", [f"run.runs_dir={f}"])


@pytest.mark.parametrize("raw, value", [("3e-4", 3e-4), ("1e6", 1e6), ("1E-3", 1e-3), ("0.001", 0.001), ("2", 2.0)])
def test_scientific_notation_is_a_float(raw, value):
    from experiments.config import load_config

    assert load_config("tiny", [f"vjepa2_world_model.stage1.learning_rate={raw}"]).vjepa2_world_model.stage1 \
        .learning_rate == value


def test_vector_collection_keeps_each_envs_games_whole(tmp_path):
    """data.num_envs=2: two collector processes, each env's games written whole and replayable from its own game
    seed (the second env's stream is the writer's stream + 1), the budget counted over both envs, the same
    replay format, and the same folder again from the same seed."""
    cfg = load_config("tiny", ["data.num_envs=2"])
    out = tmp_path / "k2"
    res = collect(cfg, out, steps=401, seed=3, progress=False)
    assert res["steps"] == 401
    episodes, manifest = load_episodes(out)
    assert sum(len(e) for e in episodes) == 401 and manifest["next_stream"] == 2
    for ep in episodes:  # one game per episode: only its last step may end it
        ends = ep.terminated | ep.truncated
        assert not ends[:-1].any() and ends[-1]
        assert len(ep.frames) == len(ep) + 1 and len(ep.labels) == len(ep) + 1
    # The first episode of each env replays from that env's game seed with the recorded actions.
    firsts = {}
    for ep in episodes:
        for stream in (0, 1):
            env = make_env(cfg.environment)
            obs, _ = env.reset(seed=training_seed(3, stream))
            if stream in firsts or not np.array_equal(obs[-1], ep.frames[0]):
                continue
            frames = [obs[-1]]
            for a in ep.actions:
                obs, *_ = env.step(int(a))
                frames.append(obs[-1])
            if np.array_equal(np.stack(frames), ep.frames):
                firsts[stream] = True
    assert set(firsts) == {0, 1}, "each env's first game must replay from its own training game seed"
    again = tmp_path / "again"
    collect(cfg, again, steps=401, seed=3, progress=False)
    assert [e["sha256"] for e in json.loads((again / "manifest.json").read_text())["episodes"]] == \
        [e["sha256"] for e in manifest["episodes"]]


def test_vector_collection_refuses_a_policy_that_reads_the_emulator(tmp_path):
    cfg = load_config("tiny", ["data.num_envs=2"])
    with pytest.raises(UserError, match="data.num_envs=1"):
        collect(cfg, tmp_path / "t", steps=10, policy="tracker", progress=False)
    assert not (tmp_path / "t").exists(), "nothing is written before the refusal"


def test_a_run_opened_inside_another_keeps_both_wandb_runs(tmp_path):
    """compare-baselines' `learn` pair opens the learn run inside the pair's run: with offline wandb the outer run
    must still log after the inner one closed (the second init used to finish the first)."""
    from experiments.runlog import RunLogger

    cfg = load_config("tiny", [f"run.runs_dir={tmp_path}", "run.wandb=offline"])
    outer = RunLogger(cfg, "outer", run_dir=tmp_path / "outer")
    outer.log({"x": 1.0}, step=1)
    inner = RunLogger(cfg, "inner", run_dir=tmp_path / "inner")
    inner.log({"y": 2.0}, step=1)
    inner.close()
    outer.log({"x": 3.0}, step=2)
    assert outer._wandb is not None, "the outer wandb run stopped logging"
    outer.close()
    rows = [json.loads(line) for line in (tmp_path / "outer" / "metrics.jsonl").read_text().splitlines()]
    assert [r["x"] for r in rows] == [1.0, 3.0]
    assert list((tmp_path / "outer").rglob("offline-run-*")) and list((tmp_path / "inner").rglob("offline-run-*"))

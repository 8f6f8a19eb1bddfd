"""Stage-1 pretraining under `torchrun` (PyTorch DDP, gloo on CPU): one run folder, written once by rank 0, the same
losses as a single process with the same global batch, and resume under torchrun after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.config import load_config
from tests.conftest import ROOT

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
STAGE1 = ["pretrain", "--stage", "1", "--preset", "tiny", "--wandb", "disabled"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(prefix: list[str], args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run([*prefix, str(ROOT / "run.py"), *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout[-1500:]}\nstderr:\n{res.stderr[-3000:]}"
    return res


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in _rows(run) if "train/loss" in r]


def _only(folder: Path) -> Path:
    runs = [p for p in folder.iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run folder, found {runs}"
    return runs[0]


@pytest.fixture(scope="module")
def single(tiny_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("single")
    _run([sys.executable], [*STAGE1, "--data", str(tiny_data), "--set", f"run.runs_dir={root}"])
    return _only(root / "pretrain")


def test_torchrun_stage1_matches_one_process_and_writes_once(tiny_data, single, tmp_path):
    res = _run(TORCHRUN, [*STAGE1, "--data", str(tiny_data), "--set", f"run.runs_dir={tmp_path}"])
    run = _only(tmp_path / "pretrain")
    assert res.stdout.count("stage 1 done") == 1, "only rank 0 prints"
    assert sorted(p.name for p in (run / "stage1").iterdir()) == ["best.pt", "latest.pt"]
    ours, theirs = _losses(run), _losses(single)
    assert [s for s, _ in ours] == [s for s, _ in theirs], "rows logged twice or missing (only rank 0 logs)"
    assert len(_rows(run)) == len(_rows(single))
    for (_, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5), "the 2-process global batch must give the single-process loss"
    a = torch.load(run / "stage1" / "latest.pt", weights_only=True)
    b = torch.load(single / "stage1" / "latest.pt", weights_only=True)
    for part in ("online", "target"):
        for k in b[part]:
            assert torch.allclose(a[part][k], b[part][k], atol=1e-4), f"{part}.{k}"


def test_torchrun_stage1_future_term_matches_one_process(tiny_data, tmp_path):
    """The future-token auxiliary (``stage1.future_weight``): each rank's share of it adds up to the global batch's."""
    future = ["--set", "vjepa2_world_model.stage1.future_weight=1", "--set", "vjepa2_world_model.stage1.num_epochs=1"]
    runs = {}
    for name, prefix in (("one", [sys.executable]), ("two", TORCHRUN)):
        _run(prefix, [*STAGE1, "--data", str(tiny_data), *future, "--set", f"run.runs_dir={tmp_path / name}"])
        runs[name] = _only(tmp_path / name / "pretrain")
    ours, theirs = _losses(runs["two"]), _losses(runs["one"])
    assert ours and [s for s, _ in ours] == [s for s, _ in theirs]
    assert any("train/future_loss" in r for r in _rows(runs["two"]))
    for (_, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.slow
def test_torchrun_resumes_after_a_kill(tiny_data, single, tmp_path):
    args = [*STAGE1, "--data", str(tiny_data), "--set", f"run.runs_dir={tmp_path}", "--set",
            "run.checkpoint_every_steps=3"]
    proc = subprocess.Popen([*TORCHRUN, str(ROOT / "run.py"), *args], cwd=ROOT, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("pretrain/*/stage1/latest.pt")):
        assert proc.poll() is None and time.time() < deadline, "the torchrun run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
    proc.wait(timeout=60)
    run = _only(tmp_path / "pretrain")
    ckpt = torch.load(run / "stage1" / "latest.pt", weights_only=True)
    assert ckpt["step"] < 28, "killed after the end: nothing was resumed"
    _run(TORCHRUN, ["pretrain", "--stage", "1", "--resume", str(run)])
    ours, theirs = _losses(run), _losses(single)
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    for (_, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5)


def test_torchrun_stage2_matches_one_process(tiny_data, single, tmp_path):
    """Stage 2 under torchrun: each rank encodes half of the replay (the cache equals one process's encoding), the
    global batch split over 2 ranks gives the single-process losses (dropout and scheduled sampling off: their
    random draws are per row, so a rank's half draws other numbers), and rank 0 alone writes the checkpoints."""
    import shutil

    from envs.dataset import TemporalSequenceDataset
    from envs.replay import load_episodes
    from experiments.pretrain import load_stage1_encoder
    from worldmodel.latent_cache import encode_store

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("latent_cache"))
    args = ["pretrain", "--stage", "2", "--preset", "tiny", "--wandb", "disabled", "--stage1-checkpoint",
            str(single / "stage1" / "best.pt"), "--data", str(data), "--set",
            "vjepa2_world_model.stage2.teacher_forcing_ratio=1.0", "--set", "models.world_model.dropout=0.0"]
    res = _run(TORCHRUN, [*args, "--set", f"run.runs_dir={tmp_path / 'two'}"])
    [cache] = list((data / "latent_cache").glob("latents-*.pt"))
    shared = torch.load(cache, weights_only=True)["latents"]
    encoder = load_stage1_encoder(single / "stage1" / "best.pt", load_config("tiny"))
    episodes, _ = load_episodes(data)
    store = TemporalSequenceDataset(episodes, 4, 4, stride=1).store
    assert torch.allclose(shared, encode_store(encoder, store, progress=False), atol=1e-5)
    _run([sys.executable], [*args, "--set", f"run.runs_dir={tmp_path / 'one'}"])
    assert res.stdout.count("stage 2 done") == 1, "only rank 0 prints"
    one, two = _only(tmp_path / "one" / "pretrain"), _only(tmp_path / "two" / "pretrain")
    assert sorted(p.name for p in (two / "stage2").iterdir()) == ["best.pt", "latest.pt"]

    def losses(run: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["train/stage2/loss"]) for r in _rows(run) if "train/stage2/loss" in r]

    ours, theirs = losses(two), losses(one)
    assert ours and [s for s, _ in ours] == [s for s, _ in theirs]
    for (_, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5)
    # validation: each rank scores its share of the batches, an all-reduce adds them up
    val_two, val_one = ([r["val/stage2/loss"] for r in _rows(run) if "val/stage2/loss" in r] for run in (two, one))
    assert val_two and val_two == pytest.approx(val_one, rel=1e-5)
    a = torch.load(two / "stage2" / "latest.pt", weights_only=True)["world_model"]
    b = torch.load(one / "stage2" / "latest.pt", weights_only=True)["world_model"]
    for k in b:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


@pytest.mark.slow
def test_demo_under_torchrun_splits_the_games_and_writes_once(tmp_path):
    """`make demo`'s path: the tiny demo under torchrun (DDP Stage 1 and 2, the stage reports on different ranks,
    the evaluation games split over the ranks) prints once, writes one demo folder and plays every game once, in
    game order, on the configured evaluation seeds."""
    res = _run(TORCHRUN, ["demo", "--preset", "tiny", "--wandb", "disabled", "--set", f"run.runs_dir={tmp_path}",
                          "--set", "evaluation.episodes=3"], timeout=400)
    assert res.stdout.count("demo finished") == 1 and res.stdout.count("all criteria pass") == 2
    demo = _only(tmp_path / "demo")
    summary = json.loads((demo / "demo_summary.json").read_text())
    assert summary["processes"] == 2
    for agent in ("random", "cem"):
        result = json.loads((demo / "compare" / agent / "s0" / "result.json").read_text())
        assert [e["episode"] for e in result["episodes"]] == [0, 1, 2]
        assert result["eval_seeds"] == [10_000, 10_001, 10_002]
    assert (demo / "compare" / "dashboard.html").is_file()


def test_commands_that_run_in_one_process_refuse_torchrun(tmp_path):
    env = {**ENV, "WORLD_SIZE": "2"}
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), "learn", "--preset", "tiny"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "start it with `python run.py learn`" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_compare_under_torchrun_refuses_agents_that_train(tmp_path):
    res = subprocess.run([*TORCHRUN, str(ROOT / "run.py"), "compare-baselines", "--preset", "tiny", "--agents",
                          "dqn", "--out", str(tmp_path / "c")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and "trains nothing" in res.stderr
    assert not (tmp_path / "c").exists(), "nothing is written before the refusal"


def test_compare_under_torchrun_splits_the_games_in_game_order(tmp_path):
    """Evaluation under torchrun: 3 games over 2 processes come back once each, in game order, on the configured
    seeds, written and printed by rank 0 alone."""
    out = tmp_path / "c"
    res = _run(TORCHRUN, ["compare-baselines", "--preset", "tiny", "--agents", "random", "--out", str(out),
                          "--wandb", "disabled", "--set", "evaluation.episodes=3"])
    assert res.stdout.count("dashboard:") == 1
    result = json.loads((out / "random" / "s0" / "result.json").read_text())
    assert [e["episode"] for e in result["episodes"]] == [0, 1, 2]
    assert result["eval_seeds"] == [10_000, 10_001, 10_002] and len(result["returns"]) == 3


@pytest.mark.slow
def test_torchrun_stage2_resumes_after_a_kill(single, tmp_path):
    """Stage 2 under torchrun killed after its first checkpoint and resumed under torchrun logs the losses of an
    uninterrupted torchrun run (dropout and scheduled sampling on: every rank's draws are restored alike)."""
    args = ["pretrain", "--stage", "2", "--preset", "tiny", "--wandb", "disabled", "--stage1-checkpoint",
            str(single / "stage1" / "best.pt"), "--set", "run.checkpoint_every_steps=3"]
    _run(TORCHRUN, [*args, "--set", f"run.runs_dir={tmp_path / 'whole'}"])
    whole = _only(tmp_path / "whole" / "pretrain")
    proc = subprocess.Popen([*TORCHRUN, str(ROOT / "run.py"), *args, "--set", f"run.runs_dir={tmp_path / 'cut'}"],
                            cwd=ROOT, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("cut/pretrain/*/stage2/latest.pt")):
        assert proc.poll() is None and time.time() < deadline, "the torchrun run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    cut = _only(tmp_path / "cut" / "pretrain")
    steps = torch.load(whole / "stage2" / "latest.pt", weights_only=True)["step"]
    assert torch.load(cut / "stage2" / "latest.pt", weights_only=True)["step"] < steps, "killed after the end"
    _run(TORCHRUN, ["pretrain", "--resume", str(cut)])

    def losses(run: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["train/stage2/loss"]) for r in _rows(run) if "train/stage2/loss" in r]

    ours, theirs = losses(cut), losses(whole)
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    for (_, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5)

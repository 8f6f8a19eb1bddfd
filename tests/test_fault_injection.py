"""Fault injection: the CLI killed with SIGKILL at random moments, resumed with ``--resume``, and compared with an
uninterrupted run of the same command: the same data, weights and logged losses, bit for bit.

The default run kills one pipeline once in each phase (collection, Stage 1, Stage 2), one actor-critic run and one
closed loop (`run.py learn`, before and inside its loop); ``pytest -m slow`` repeats that for more random moments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

PRETRAIN = ["pretrain", "--preset", "tiny", "--wandb", "disabled", "--set", "run.checkpoint_every_steps=5",
            "--set", "data.collect_steps=400"]
AGENT = ["train-agent", "--preset", "tiny", "--wandb", "disabled", "--set", "agent.updates=30",
         "--set", "agent.checkpoint_every=5", "--set", "agent.start_latents=128"]
LEARN = ["learn", "--preset", "tiny", "--wandb", "disabled", "--set", "run.checkpoint_every_steps=5",
         "--set", "baselines.agent_steps=600", "--set", "learn.eval_every=1000", "--set", "learn.encoder_every=200",
         "--set", "learn.encoder_updates=3", "--set", "learn.encoder_stage2_updates=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(args: list[str]) -> None:
    proc = _launch(args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _kill_at(args: list[str], ready: Callable[[], bool], delay: float) -> bool:
    """Run ``run.py ARGS``, SIGKILL it ``delay`` seconds after ``ready()`` first holds; False if it ended first."""
    proc = _launch(args)
    deadline = time.time() + 600
    while not ready():
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            return False
        assert time.time() < deadline, "the run never reached the kill point"
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        return False
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    return True


def _only_run(folder: Path) -> Path | None:
    runs = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    assert len(runs) <= 1, runs
    return runs[0] if runs else None


def _rows(run: Path) -> list[dict]:
    """A run's metrics.jsonl rows, in order, without wall-clock values (``time``, ``perf/*``) and without the rows
    a resume adds (``*resumed_from*``): two runs that trained alike log the same rows, a resumed one no row twice."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if any("resumed_from" in k for k in row):
            continue
        row = {k: v for k, v in row.items() if k != "time" and not k.startswith("perf/")}
        if set(row) - {"step"}:
            out.append(row)
    return out


def _same_tensors(a: dict, b: dict, parts: tuple[str, ...], what: str) -> None:
    for part in parts:
        assert a[part].keys() == b[part].keys()
        for key in b[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{what}: {part}.{key} differs from the uninterrupted run"


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """The uninterrupted pipeline and actor-critic runs."""
    root = tmp_path_factory.mktemp("reference")
    _finish([*PRETRAIN, "--set", f"run.runs_dir={root}"])
    pre = _only_run(root / "pretrain")
    _finish([*AGENT, "--world-model", str(pre / "stage2" / "best.pt"), "--set", f"run.runs_dir={root}"])
    _finish([*LEARN, "--set", f"run.runs_dir={root}"])
    return {"pretrain": pre, "agent": _only_run(root / "train-agent"), "learn": _only_run(root / "learn")}


def _check_pretrain_matches(run: Path, ref: Path) -> None:
    ours = [e["sha256"] for e in json.loads((run / "data" / "manifest.json").read_text())["episodes"]]
    theirs = [e["sha256"] for e in json.loads((ref / "data" / "manifest.json").read_text())["episodes"]]
    assert ours == theirs, "the collected episodes differ from the uninterrupted run"
    _same_tensors(_load(run / "stage1" / "latest.pt"), _load(ref / "stage1" / "latest.pt"),
                  ("online", "target", "predictor"), "stage 1")
    _same_tensors(_load(run / "stage2" / "best.pt"), _load(ref / "stage2" / "best.pt"), ("world_model",), "stage 2")
    assert _rows(run) == _rows(ref), "metrics.jsonl differs: rows lost or logged twice"
    assert not [p for p in run.rglob("*.tmp") if "wandb" not in p.parts]


def _pretrain_killed_in_each_phase(root: Path, rng: np.random.Generator) -> tuple[Path, int]:
    """One pipeline killed once in collection, once in Stage 1 and once in Stage 2, resumed after each kill."""
    runs = root / "pretrain"

    def run() -> Path | None:
        return _only_run(runs)

    def has(name: str) -> Callable[[], bool]:
        return lambda: (r := run()) is not None and (r / name).is_file()

    kills = int(_kill_at([*PRETRAIN, "--set", f"run.runs_dir={root}"], has("data/manifest.json"),
                         float(rng.uniform(0.0, 0.4))))
    folder = run()
    assert folder is not None
    # Stage 1: anywhere from its set-up (before any checkpoint: it starts again) to its last steps.
    kills += _kill_at(["pretrain", "--resume", str(folder)], has("dataset_summary.json"), float(rng.uniform(0.0, 2.5)))
    kills += _kill_at(["pretrain", "--resume", str(folder)], has("stage1_summary.json"), float(rng.uniform(0.0, 2.5)))
    _finish(["pretrain", "--resume", str(folder)])
    return folder, kills


def _agent_killed(root: Path, world_model: Path, rng: np.random.Generator) -> tuple[Path, int]:
    """An actor-critic run killed at a random moment (a shorter one if the run ended first), then resumed."""
    import shutil

    runs = root / "train-agent"
    delay = float(rng.uniform(0.0, 3.0))
    for _ in range(4):
        shutil.rmtree(runs, ignore_errors=True)
        if _kill_at([*AGENT, "--world-model", str(world_model), "--set", f"run.runs_dir={root}"],
                    lambda: _only_run(runs) is not None, delay):
            break
        delay /= 4
    else:
        raise AssertionError("the actor-critic run always ended before the kill")
    folder = _only_run(runs)
    assert folder is not None
    _finish(["train-agent", "--resume", str(folder)])
    return folder, 1


def _check_agent_matches(run: Path, ref: Path) -> None:
    a, b = _load(run / "agent.pt"), _load(ref / "agent.pt")
    assert a["step"] == b["step"]
    _same_tensors(a["state"], b["state"], ("actor", "critic", "slow_critic"), "actor-critic")
    assert _rows(run) == _rows(ref), "metrics.jsonl differs: rows lost or logged twice"


def test_pipeline_killed_in_every_phase_resumes_to_the_uninterrupted_result(reference, tmp_path):
    folder, kills = _pretrain_killed_in_each_phase(tmp_path, np.random.default_rng(0))
    assert kills >= 1, "no kill landed (every phase ended before its kill moment)"
    _check_pretrain_matches(folder, reference["pretrain"])


def test_actor_critic_killed_at_a_random_moment_resumes_to_the_uninterrupted_result(reference, tmp_path):
    world_model = reference["pretrain"] / "stage2" / "best.pt"
    folder, kills = _agent_killed(tmp_path, world_model, np.random.default_rng(0))
    assert kills == 1
    _check_agent_matches(folder, reference["agent"])


def _learn_killed(root: Path, rng: np.random.Generator) -> tuple[Path, int]:
    """A closed-loop run killed once before its loop (prefill or the prefill's Stage 1 / Stage 2) and once inside
    it (after its first learn.pt), resumed after each kill."""
    runs = root / "learn"

    def has(name: str) -> Callable[[], bool]:
        return lambda: (r := _only_run(runs)) is not None and (r / name).is_file()

    kills = int(_kill_at([*LEARN, "--set", f"run.runs_dir={root}"], has("data/manifest.json"),
                         float(rng.uniform(0.0, 3.0))))
    folder = _only_run(runs)
    assert folder is not None
    assert not (folder / "learn.pt").exists() or not kills
    kills += _kill_at(["learn", "--resume", str(folder)], has("learn.pt"), float(rng.uniform(0.0, 1.5)))
    _finish(["learn", "--resume", str(folder)])
    return folder, kills


def _check_learn_matches(run: Path, ref: Path) -> None:
    ours = [e["sha256"] for e in json.loads((run / "data" / "manifest.json").read_text())["episodes"]]
    theirs = [e["sha256"] for e in json.loads((ref / "data" / "manifest.json").read_text())["episodes"]]
    assert ours == theirs, "the replay differs from the uninterrupted run"
    a, b = _load(run / "learn.pt"), _load(ref / "learn.pt")
    assert (a["env_steps"], a["iteration"]) == (b["env_steps"], b["iteration"])
    _same_tensors(a, b, ("world_model",), "closed-loop world model")
    _same_tensors(a["encoder_refresh"], b["encoder_refresh"], ("target", "online"), "closed-loop encoder")
    _same_tensors(a["agent"], b["agent"], ("actor", "critic", "slow_critic"), "closed-loop actor-critic")
    assert [p["returns"] for p in a["curve"]] == [p["returns"] for p in b["curve"]]
    assert _rows(run) == _rows(ref), "metrics.jsonl differs: rows lost or logged twice"
    assert json.loads((run / "summary.json").read_text())["returns"] == b["curve"][-1]["returns"]


def test_learn_killed_twice_resumes_to_the_uninterrupted_result(reference, tmp_path):
    folder, kills = _learn_killed(tmp_path, np.random.default_rng(0))
    assert kills == 2, "a kill did not land (the run ended before its kill moment)"
    _check_learn_matches(folder, reference["learn"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_more_random_kills(reference, tmp_path, seed):
    rng = np.random.default_rng(seed)
    folder, _ = _pretrain_killed_in_each_phase(tmp_path / "pretrain-kills", rng)
    _check_pretrain_matches(folder, reference["pretrain"])
    folder, _ = _agent_killed(tmp_path / "agent-kills", reference["pretrain"] / "stage2" / "best.pt", rng)
    _check_agent_matches(folder, reference["agent"])
    _check_learn_matches(_learn_killed(tmp_path / "learn-kills", rng)[0], reference["learn"])

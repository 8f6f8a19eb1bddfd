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

from tests.conftest import ROOT

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
STAGE1 = ["pretrain", "--stage", "1", "--preset", "tiny", "--wandb", "disabled"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(prefix: list[str], args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run([*prefix, str(ROOT / "run.py"), *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
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

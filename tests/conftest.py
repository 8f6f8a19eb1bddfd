import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python run.py ARGS`` and capture its output (the CLI as a user runs it)."""
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small random-policy replay folder shared by the tests (tiny preset, 600 steps)."""
    from experiments.collect import collect
    from experiments.config import load_config

    out = tmp_path_factory.mktemp("data") / "tiny"
    collect(load_config("tiny"), out, steps=600, progress=False)
    return out

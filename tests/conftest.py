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


def save_untrained_world_model(path: Path, data_dir: Path | None = None, stage1_path: Path | None = None) -> Path:
    """A Stage-2 checkpoint in worldmodel.world_model's format with untrained tiny-preset networks (and, optionally,
    a Stage-1-only checkpoint of the same encoder at ``stage1_path``)."""
    from experiments.builders import build_encoder, build_world_model_transformer
    from experiments.config import load_config
    from worldmodel.checkpoint import save_checkpoint

    cfg = load_config("tiny")
    torch.manual_seed(0)
    vit, dyn = build_encoder(cfg), build_world_model_transformer(cfg)
    wm_kwargs = {**dyn.kwargs, "dropout": 0.0}
    extra = {"data_dir": str(data_dir)} if data_dir is not None else {}
    save_checkpoint({"kind": "stage2", "config": cfg.to_dict(), **extra, "encoder_kwargs": vit.kwargs,
                     "encoder": vit.state_dict(), "world_model_kwargs": wm_kwargs, "world_model": dyn.state_dict()},
                    path)
    if stage1_path is not None:
        save_checkpoint({"kind": "stage1", "config": cfg.to_dict(), "encoder_kwargs": vit.kwargs,
                         "encoder": vit.state_dict()}, stage1_path)
    return path

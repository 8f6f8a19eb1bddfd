"""``run.precision``: bf16 autocast for the Stage-1/2 training forward (the CUDA path; autocast runs on CPUs too)."""

from __future__ import annotations

import math

import torch

from experiments.builders import build_stage1_model, build_world_model_transformer
from experiments.config import load_config
from experiments.runlog import autocast


def test_bf16_autocast_changes_the_arithmetic_not_the_result():
    obs = torch.randint(0, 256, (8, 4, 64, 64), dtype=torch.uint8)
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config("tiny", [f"run.precision={precision}"])
        torch.manual_seed(0)
        model = build_stage1_model(cfg)
        torch.manual_seed(1)
        with autocast(cfg, torch.device("cpu")):
            out = model(obs)
        out["loss"].backward()
        losses[precision] = float(out["loss"].detach())
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads), \
            "weights and their gradients stay fp32"
    assert losses["fp32"] != losses["bf16"], "bf16 autocast was not active"
    assert math.isclose(losses["fp32"], losses["bf16"], rel_tol=0.05)


def test_world_model_forward_under_bf16_autocast():
    cfg = load_config("tiny", ["run.precision=bf16"])
    model = build_world_model_transformer(cfg, 4)
    z, a = torch.randn(2, 4, cfg.models.shared_latent_dim), torch.randint(0, 4, (2, 4))
    with autocast(cfg, torch.device("cpu")):
        pred, rew, cont = model(z, a)
    assert pred.shape == z.shape and torch.isfinite(pred.float()).all()


def test_cuda_without_an_index_means_this_process_gpu(monkeypatch):
    """``run.device=cuda`` names a GPU index (torch.cuda.set_device refuses a bare "cuda"; seen on an H200): the
    first GPU alone, ``LOCAL_RANK`` mod the GPU count under torchrun."""
    from experiments.runlog import setup_torch

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(d))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = load_config("tiny", ["run.device=cuda"])
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # setup_torch turns both on
    try:
        assert setup_torch(cfg) == torch.device("cuda:0")
        monkeypatch.setenv("LOCAL_RANK", "3")
        assert setup_torch(cfg) == torch.device("cuda:1")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert chosen == [torch.device("cuda:0"), torch.device("cuda:1")]

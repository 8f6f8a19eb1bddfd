"""Stage 1: masking, EMA, gradients, losses, diagnostics, checkpoints, resume, CLI (tiny preset)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from envs.errors import UserError
from experiments.builders import build_stage1_model
from experiments.config import load_config
from worldmodel import load_encoder
from worldmodel.checkpoint import load_checkpoint, save_checkpoint
from worldmodel.diagnostics import collapse_reason, effective_rank, ridge_r2
from worldmodel.encoder import MaskedViT, fit_input_stats, random_patch_mask
from worldmodel.masked_prediction import MaskedPredictionLoss, ema_update


def tiny_cfg(tmp_path, *extra):
    return load_config("tiny", ["run.wandb=disabled", f"run.runs_dir={tmp_path / 'runs'}", *extra])


def quiet(_msg: str) -> None:
    pass


# ----------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("ratio", [0.4, 0.25, 0.9])
def test_mask_has_exact_fraction_per_sample(ratio):
    mask = random_patch_mask(32, 64, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (32, 64) and mask.dtype == torch.bool
    assert (mask.sum(1) == round(ratio * 64)).all()
    assert len({tuple(r.tolist()) for r in mask}) > 1  # different patches per sample


def test_masked_patches_become_the_mask_token():
    vit = MaskedViT(image_size=32, in_channels=4, patch_size=16, dim=8, depth=1, heads=2, mlp_dim=16, dropout=0.0)
    obs = torch.randint(0, 256, (2, 4, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([[True, False, False, False], [False, False, False, False]])
    a, _ = vit(obs, mask)
    obs2 = obs.clone()
    obs2[0, :, :16, :16] = 255 - obs2[0, :, :16, :16]  # change only the masked patch of sample 0
    b, _ = vit(obs2, mask)
    assert torch.allclose(a, b)  # the encoder cannot see a masked patch
    c, _ = vit(obs2)
    assert not torch.allclose(a[0], c[0])


def test_ema_arithmetic():
    target, online = nn.Linear(3, 2), nn.Linear(3, 2)
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(1.0)
        for p in online.parameters():
            p.fill_(3.0)
    ema_update(target, online, decay=0.9)
    for p in target.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.9 * 1.0 + 0.1 * 3.0))
    ema_update(target, online, decay=1.0)  # decay 1 freezes the target
    for p in target.parameters():
        assert torch.allclose(p, torch.full_like(p, 1.2))


BOTTLENECK = ["vjepa2_world_model.stage1.target=bottleneck", "models.encoder.params.vit.readout=spatial",
              "models.encoder.params.vit.frame_diffs=true", "vjepa2_world_model.stage1.motion_weighting=1.0"]


@pytest.mark.parametrize("extra", [["vjepa2_world_model.stage1.target=pooled"],
                                   ["vjepa2_world_model.stage1.target=tokens"], BOTTLENECK,
                                   BOTTLENECK + ["vjepa2_world_model.stage1.bottleneck_token_weight=0"]])
def test_no_gradient_reaches_target_encoder(tmp_path, extra):
    cfg = tiny_cfg(tmp_path, *extra)
    model = build_stage1_model(cfg).train()
    assert not model.target.training and not any(p.requires_grad for p in model.target.parameters())
    before = [p.clone() for p in model.target.parameters()]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(torch.randint(0, 256, (4, 4, 64, 64), dtype=torch.uint8))
    out["loss"].backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.online.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.predictor.parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.target.parameters()))  # only EMA moves it
    model.update_target()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.target.parameters()))


def test_spatial_readout_and_frame_diffs():
    vit = MaskedViT(image_size=32, in_channels=4, patch_size=16, dim=8, depth=1, heads=2, mlp_dim=16, dropout=0.0,
                    readout="spatial", readout_channels=3, frame_diffs=True)
    assert vit.patch_embed.in_channels == 7 and vit.readout_out.in_features == 4 * 3
    obs = torch.randint(0, 256, (5, 4, 32, 32), dtype=torch.uint8)
    z, tok = vit(obs)
    assert z.shape == (5, 8) and tok.shape == (5, 4, 8)
    assert torch.allclose(z, vit.readout_out(vit.readout_proj(tok).reshape(5, 12)))
    # The spatial readout tells the patches apart: swapping two patches' tokens changes z (the mean would not).
    assert not torch.allclose(vit.read(tok[:, [1, 0, 2, 3]]), z, atol=1e-6)


@pytest.mark.parametrize("k", [32, 16])
def test_keypoint_readout_shapes_and_coordinates(k):
    """K=32 on D=64: the latent is the K (x, y) pairs in [-1, 1]; K=16: Linear(3K -> D) of (x, y, strength)."""
    vit = MaskedViT(image_size=64, in_channels=4, patch_size=8, dim=64, depth=1, heads=4, mlp_dim=32, dropout=0.0,
                    readout="keypoints", readout_channels=k, frame_diffs=True)
    obs = torch.randint(0, 256, (3, 4, 64, 64), dtype=torch.uint8)
    z, tok = vit(obs)
    assert z.shape == (3, 64) and tok.shape == (3, 64, 64)
    attn = vit.keypoint_attention(tok)  # [B, K, N]
    assert attn.shape == (3, k, 64) and torch.allclose(attn.sum(dim=2), torch.ones(3, k))
    xy = attn @ vit.kp_grid  # [B, K, 2]
    assert xy.abs().max() <= 1.0
    if k == 32:
        assert vit.readout_out is None and torch.allclose(z, xy.flatten(1))
    else:
        assert vit.readout_out.in_features == 3 * k
    # The checkpoint description rebuilds the same encoder (load_encoder uses MaskedViT(**encoder_kwargs)).
    kw = vit.kwargs
    assert kw["readout"] == "keypoints" and kw["readout_channels"] == k
    clone = MaskedViT(**kw)
    clone.load_state_dict(vit.state_dict())
    vit.eval(), clone.eval()
    assert torch.allclose(clone(obs)[0], vit(obs)[0])
    # A keypoint with all its score on one patch sits at that patch's centre: patch (row 2, col 5) of the 8x8 grid.
    with torch.no_grad():
        vit.log_temperature.fill_(-10.0)
        peaked = torch.zeros(1, 64, 64)
        peaked[0, 2 * 8 + 5] = 1.0
        vit.readout_proj.weight.zero_()
        vit.readout_proj.bias.zero_()
        vit.readout_proj.weight[0, 0] = 1.0
        got = (vit.keypoint_attention(peaked) @ vit.kp_grid)[0, 0]
    assert torch.allclose(got, torch.tensor([(5.5 / 8) * 2 - 1, (2.5 / 8) * 2 - 1]), atol=1e-5)

def test_motion_weights_mean_one_and_favour_moving_patches():
    from worldmodel.masked_prediction import motion_weights

    obs = torch.zeros(3, 4, 32, 32, dtype=torch.uint8)
    obs[0, 3, 20, 5] = 200  # something appears in the last frame of sample 0, patch (row 1, col 0) = index 2
    w = motion_weights(obs, patch_size=16, strength=1.0)
    assert w.shape == (3, 4) and w.mean().item() == pytest.approx(1.0)
    assert w[0, 2] == w.max() and torch.allclose(w[1:], w[1:, :1].expand(2, 4))  # static samples: equal weights
    assert torch.allclose(motion_weights(obs, 16, 0.0), torch.ones(3, 4))


def test_masked_prediction_loss_known_values():
    loss = MaskedPredictionLoss()
    pred, tgt = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    tgt[:, 1] = 5.0  # error 5 on the unmasked token must be ignored
    mask = torch.tensor([[True, False, False], [False, False, True]])
    assert loss(pred, tgt, mask).item() == pytest.approx(1.0)
    assert loss(torch.zeros(2, 4), torch.full((2, 4), 0.5)).item() == pytest.approx(0.5)


def test_diagnostics_known_answers():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 16, generator=g, dtype=torch.float64)
    assert effective_rank(z) > 14  # isotropic: close to D
    assert effective_rank(z[:, :1] @ torch.ones(1, 16, dtype=torch.float64)) < 1.01  # rank one
    y = (z @ torch.arange(16, dtype=torch.float64)).numpy()
    assert ridge_r2(z[:1500], y[:1500], z[1500:], y[1500:]) > 0.99
    noise = torch.randn(2000, generator=g, dtype=torch.float64).numpy()
    assert ridge_r2(z[:1500], noise[:1500], z[1500:], noise[1500:]) < 0.05
    assert collapse_reason(1e-4, 1.0, 64) is not None and collapse_reason(0.5, 30.0, 64) is None


# ----------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """An uninterrupted 2-epoch tiny run."""
    from experiments.pretrain import pretrain_stage1

    tmp = tmp_path_factory.mktemp("s1")
    torch.set_num_threads(1)
    return pretrain_stage1(tiny_cfg(tmp), data=tiny_data, progress=False, echo=quiet)


def test_training_writes_checkpoints_and_metrics(trained):
    assert trained["epochs"] == 2 and trained["finished"]
    for name in ("best_checkpoint", "latest_checkpoint"):
        ckpt = load_checkpoint(trained[name], kind="stage1")
        assert {"online", "target", "predictor", "optimizer", "scheduler", "epoch", "step", "early_stopping",
                "rng", "config"} <= set(ckpt)
        # The per-pixel input standardisation was fitted on the training frames, the same for online and target.
        assert ckpt["encoder_kwargs"]["input_norm"] == "pixel"
        assert torch.equal(ckpt["online"]["pixel_std"], ckpt["target"]["pixel_std"])
        assert not torch.equal(ckpt["target"]["pixel_std"], torch.ones_like(ckpt["target"]["pixel_std"]))
        assert ckpt["target"]["pixel_mean"].abs().sum() > 0
    rows = [json.loads(line) for line in open(f"{trained['run_dir']}/metrics.jsonl")]
    keys = set().union(*rows)
    assert {"train/loss", "val/loss", "diag/effective_rank", "diag/probe_r2/paddle_x", "perf/samples_per_s",
            "diag/random/probe_r2/paddle_x"} <= keys


def test_resume_continues_from_saved_epoch_and_step(trained, tiny_data, tmp_path):
    from experiments.pretrain import pretrain_stage1

    torch.set_num_threads(1)
    first = pretrain_stage1(tiny_cfg(tmp_path), data=tiny_data, max_epochs=1, progress=False, echo=quiet)
    assert first["epochs"] == 1 and not first["finished"]
    steps_per_epoch = first["steps"]
    second = pretrain_stage1(load_config("tiny"), resume=first["run_dir"], progress=False, echo=quiet)
    assert second["resumed_from"] == {"epoch": 1, "step": steps_per_epoch}  # the checkpoint was loaded
    assert second["epochs"] == 2 and second["steps"] == 2 * steps_per_epoch
    rows = [json.loads(line) for line in open(f"{first['run_dir']}/metrics.jsonl")]
    assert sum("resumed_from_epoch" in r for r in rows) == 1
    # Exact resumption: the interrupted run ends where the uninterrupted one did.
    for a, b in zip(trained["history"], second["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_same_seed_same_first_epoch_loss(trained, tiny_data, tmp_path):
    from experiments.pretrain import pretrain_stage1

    torch.set_num_threads(1)
    again = pretrain_stage1(tiny_cfg(tmp_path), data=tiny_data, max_epochs=1, progress=False, echo=quiet)
    assert again["history"][0]["train_loss"] == trained["history"][0]["train_loss"]
    other = pretrain_stage1(tiny_cfg(tmp_path, "run.seed=1"), data=tiny_data, max_epochs=1, progress=False,
                            echo=quiet)
    assert other["history"][0]["train_loss"] != trained["history"][0]["train_loss"]


def test_load_encoder_maps_uint8_to_latent(trained):
    enc = load_encoder(trained["best_checkpoint"])
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    z = enc(torch.randint(0, 256, (3, 4, 64, 64), dtype=torch.uint8))
    assert z.shape == (3, 32) and z.dtype == torch.float32  # tiny preset: D = 32
    ckpt = load_checkpoint(trained["best_checkpoint"])
    vit = MaskedViT(**ckpt["encoder_kwargs"])
    vit.load_state_dict(ckpt["target"])  # the downstream encoder is the EMA target
    vit.eval()
    x = torch.randint(0, 256, (2, 4, 64, 64), dtype=torch.uint8)
    assert torch.allclose(enc(x), vit(x)[0])


# ----------------------------------------------------------------------------------------- bad files
def test_bad_checkpoints_give_one_sentence(trained, tmp_path):
    good = open(trained["best_checkpoint"], "rb").read()
    cases = {
        "truncated.pt": good[: len(good) // 2],
        "garbage.pt": np.random.default_rng(0).bytes(4096),
        "empty.pt": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=r"truncated|corrupt|empty"):
            load_encoder(tmp_path / name)
    with pytest.raises(UserError, match="does not exist"):
        load_encoder(tmp_path / "missing.pt")
    save_checkpoint({"kind": "stage2"}, tmp_path / "stage2.pt")
    with pytest.raises(UserError, match="'stage2' checkpoint"):
        load_encoder(tmp_path / "stage2.pt")
    ckpt = load_checkpoint(trained["best_checkpoint"])
    ckpt["target"]["pos_embed"] = torch.zeros(1, 3, 7)
    save_checkpoint(ckpt, tmp_path / "shape.pt")
    with pytest.raises(UserError, match="does not fit"):
        load_encoder(tmp_path / "shape.pt")


def test_cli_bad_checkpoint_exits_2(cli, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    res = cli("evaluate", "--stage", "1", "--checkpoint", str(bad))
    assert res.returncode == 2
    assert res.stderr.startswith("error: checkpoint") and "Traceback" not in res.stderr


# ----------------------------------------------------------------------------------------- CLI
def test_cli_pretrain_and_evaluate_end_to_end(cli, tmp_path):
    runs = tmp_path / "runs"
    res = cli("pretrain", "--stage", "1", "--preset", "tiny", "--wandb", "disabled", "--set",
              f"run.runs_dir={runs}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stage 1 done" in res.stdout
    best = next(runs.glob("pretrain/*/stage1/best.pt"))
    assert (best.parent.parent / "data" / "manifest.json").is_file()  # collected its own data
    out = tmp_path / "report.json"
    res = cli("evaluate", "--stage", "1", "--checkpoint", str(best), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Seed benchmark table" in res.stdout and "Val/Train Ratio" in res.stdout
    report = json.loads(out.read_text())
    assert [r["metric"] for r in report["benchmarks"]] == ["Train Loss", "Val Loss", "Val/Train Ratio"]
    assert all(r["grade"] in ("Excellent", "Good", "Acceptable", "Poor") for r in report["benchmarks"])
    assert len(report["success_criteria"]) == 4
    assert {"probe_r2/paddle_x", "probe_r2/ball_x", "probe_r2/ball_y", "effective_rank"} <= set(
        report["diagnostics"])


def test_bottleneck_variant_trains_and_loads(tiny_data, tmp_path):
    """The bottleneck target with a spatial readout: trains, and load_encoder rebuilds the same encoder."""
    from experiments.pretrain import pretrain_stage1
    from experiments.report_stage1 import evaluate_stage1

    torch.set_num_threads(1)
    res = pretrain_stage1(tiny_cfg(tmp_path, *BOTTLENECK, "vjepa2_world_model.stage1.num_epochs=1"), data=tiny_data,
                          progress=False, echo=quiet)
    assert res["target"] == "bottleneck" and np.isfinite(res["best_val_loss"])
    ckpt = load_checkpoint(res["best_checkpoint"], kind="stage1")
    assert ckpt["encoder_kwargs"]["readout"] == "spatial" and ckpt["encoder_kwargs"]["frame_diffs"] is True
    enc = load_encoder(res["best_checkpoint"])
    vit = MaskedViT(**ckpt["encoder_kwargs"])
    vit.load_state_dict(ckpt["target"])
    vit.eval()
    x = torch.randint(0, 256, (2, 4, 64, 64), dtype=torch.uint8)
    assert enc(x).shape == (2, 32) and torch.allclose(enc(x), vit(x)[0])
    report = evaluate_stage1(res["best_checkpoint"], out=tmp_path / "r.json")
    assert report["target"] == "bottleneck" and np.isfinite(report["diagnostics"]["probe_r2/ball_x"])
    # `make demo` measures the losses and the diagnostics in two processes: the joined report is the same
    from experiments.report_stage1 import measure_stage1

    parts = {**measure_stage1(res["best_checkpoint"], parts=("losses",)),
             **measure_stage1(res["best_checkpoint"], parts=("diagnostics",))}
    joined = evaluate_stage1(res["best_checkpoint"], out=tmp_path / "j.json", measured=parts)
    for key in ("benchmarks", "losses", "diagnostics", "success_criteria"):
        assert joined[key] == report[key], key


def test_motion_map_is_a_distribution_on_the_moving_patch():
    from worldmodel.masked_prediction import motion_map

    obs = torch.zeros(2, 4, 64, 64, dtype=torch.uint8)
    obs[0, 3, 10, 50] = 200  # a "ball" appears in the newest frame, patch row 1, column 6
    m = motion_map(obs, cell=8)
    assert m.shape == (2, 64)
    assert torch.allclose(m.sum(1), torch.ones(2))
    assert int(m[0].argmax()) == 1 * 8 + 6 and m[0].max() > 0.99
    assert torch.allclose(m[1], torch.full((64,), 1 / 64))  # a still frame: uniform


def _assert_aux_head_trained_and_saved(overrides: list[str], head: str, loss_key: str, weight: float) -> nn.Module:
    """A Stage-1 model with an auxiliary head: the head is in the predictor (so checkpointed), the total is the
    masked-latent L1 plus the weighted auxiliary (both reported apart), and the head gets a gradient."""
    model = build_stage1_model(load_config("tiny", overrides))
    assert any(k.startswith(f"{head}.") for k in model.predictor.state_dict())
    obs = torch.randint(0, 255, (4, 4, 64, 64), dtype=torch.uint8)
    out = model(obs)
    assert torch.isclose(out["loss"], out["jepa_loss"] + weight * out[loss_key])
    assert out[loss_key] > 0
    out["loss"].backward()
    assert getattr(model.predictor, head).weight.grad is not None
    return model


def test_motion_map_head_is_trained_and_saved_with_the_predictor():
    _assert_aux_head_trained_and_saved(["vjepa2_world_model.stage1.motion_map_weight=0.5"], "motion_head",
                                       "motion_map_loss", 0.5)
    obs = torch.randint(0, 255, (4, 4, 64, 64), dtype=torch.uint8)
    off = build_stage1_model(load_config("tiny", ["vjepa2_world_model.stage1.motion_map_weight=0"]))
    out = off(obs)
    assert "motion_map_loss" not in out and torch.equal(out["loss"].detach(), out["jepa_loss"])


def test_motion_axes_locate_the_moving_pixel_and_their_head_is_trained_and_saved():
    from worldmodel.masked_prediction import motion_axes

    obs = torch.zeros(2, 4, 64, 64, dtype=torch.uint8)
    obs[0, 3, 10, 50] = 200  # a "ball" appears in the newest frame at row 10, column 50
    cols, rows = motion_axes(obs)
    assert cols.shape == rows.shape == (2, 64)
    assert torch.allclose(cols.sum(1), torch.ones(2)) and torch.allclose(rows.sum(1), torch.ones(2))
    assert int(cols[0].argmax()) == 50 and int(rows[0].argmax()) == 10 and cols[0].max() > 0.99
    assert torch.allclose(cols[1], torch.full((64,), 1 / 64))  # a still frame: uniform

    model = _assert_aux_head_trained_and_saved(["vjepa2_world_model.stage1.motion_axes_weight=0.5",
                                                "vjepa2_world_model.stage1.motion_map_weight=0"],
                                               "motion_axes_head", "motion_axes_loss", 0.5)
    assert model.predictor.motion_axes_head.out_features == 2 * 64  # columns, then rows
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.online.parameters())  # reaches z
    assert not hasattr(build_stage1_model(load_config("tiny")).predictor, "motion_axes_head")  # off by default
    with pytest.raises(UserError, match="motion_axes_weight"):
        load_config("tiny", ["vjepa2_world_model.stage1.motion_axes_weight=-1"])


def test_future_events_look_ahead_within_the_episode_only():
    from envs.dataset import FrameStackDataset
    from envs.replay import Episode

    def episode(rewards, lost):
        n = len(rewards)
        no = np.zeros(n, bool)
        return Episode(frames=np.zeros((n + 1, 8, 8), np.uint8), actions=np.zeros(n, np.int64),
                       rewards=np.asarray(rewards, np.float32), terminated=no, truncated=no,
                       life_loss=np.asarray(lost, bool), labels=np.zeros((n + 1, 5), np.int16))

    # episode A: frames 0-4 (a point at transition 1, a life lost at 3); episode B: frames 5-7 (a life lost at 0)
    ds = FrameStackDataset([episode([0, 1, 0, 0], [0, 0, 0, 1]), episode([0, 0], [1, 0])])
    ev = ds.events(np.arange(8), horizon=2).numpy()
    np.testing.assert_array_equal(ev[:, 0], [0, 0, 1, 1, 0, 1, 0, 0])  # life lost within transitions g, g+1
    np.testing.assert_array_equal(ev[:, 1], [1, 1, 0, 0, 0, 0, 0, 0])  # point scored within them
    # frame 4 (A's last) must not see B's life loss at global frame 5
    assert ds.events(np.array([4]), horizon=5).tolist() == [[0.0, 0.0]]
    assert ds.events(np.array([0]), horizon=1).tolist() == [[0.0, 0.0]]


def test_event_head_is_trained_from_z_and_saved_with_the_predictor(tmp_path):
    cfg = load_config("tiny", ["vjepa2_world_model.stage1.event_weight=0.5",
                               "vjepa2_world_model.stage1.motion_map_weight=0"])
    model = build_stage1_model(cfg)
    assert model.uses_events and any(k.startswith("event_head.") for k in model.predictor.state_dict())
    obs = torch.randint(0, 255, (4, 4, 64, 64), dtype=torch.uint8)
    events = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    out = model(obs, None, None, events)
    assert torch.isclose(out["loss"], out["jepa_loss"] + 0.5 * out["event_loss"])
    out["loss"].backward()
    assert model.predictor.event_head.weight.grad is not None
    assert model.online.patch_embed.weight.grad.abs().sum() > 0  # the events' gradient reaches the encoder
    out = model(obs)  # no targets: the term is left out
    assert "event_loss" not in out and torch.equal(out["loss"].detach(), out["jepa_loss"])
    assert not build_stage1_model(load_config("tiny")).uses_events
    for bad in ("event_weight=-1", "event_horizon=0"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            load_config("tiny", [f"vjepa2_world_model.stage1.{bad}"])


def test_future_items_pair_a_frame_with_the_frame_k_steps_on_and_the_actions_between_within_its_game():
    from envs.dataset import FrameStackDataset
    from envs.replay import Episode

    def episode(first, actions):
        n = len(actions)
        no = np.zeros(n, bool)
        frames = (first + np.arange(n + 1, dtype=np.uint8))[:, None, None] * np.ones((1, 8, 8), np.uint8)
        return Episode(frames=frames, actions=np.asarray(actions, np.int64), rewards=np.zeros(n, np.float32),
                       terminated=no, truncated=no, life_loss=no, labels=np.zeros((n + 1, 5), np.int16))

    # game A: frames 0-4 valued 10..14, actions 1 2 3 1; game B: frames 5-7 valued 50..52, actions 2 3
    ds = FrameStackDataset([episode(10, [1, 2, 3, 1]), episode(50, [2, 3])])
    fut = ds.future(np.arange(8), horizon=2)
    assert fut["obs"].shape == (8, 4, 8, 8)
    # the newest frame of each future stack: t + 2, or the game's last frame where the game ends sooner
    np.testing.assert_array_equal(fut["obs"][:, -1, 0, 0].numpy(), [12, 13, 14, 14, 14, 52, 52, 52])
    np.testing.assert_array_equal(fut["valid"].numpy(), [1, 1, 1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(fut["actions"].numpy(),
                                  [[1, 2], [2, 3], [3, 1], [1, 0], [0, 0], [2, 3], [3, 0], [0, 0]])


def test_future_head_predicts_later_tokens_from_z_and_the_actions_and_trains_in_pretrain(tmp_path):
    cfg = load_config("tiny", ["vjepa2_world_model.stage1.future_weight=0.5",
                               "vjepa2_world_model.stage1.motion_map_weight=0"])
    model = build_stage1_model(cfg)
    assert model.uses_future and any(k.startswith("future_head.") for k in model.predictor.state_dict())
    obs = torch.randint(0, 255, (4, 4, 64, 64), dtype=torch.uint8)
    future = {"obs": torch.randint(0, 255, (4, 4, 64, 64), dtype=torch.uint8),
              "actions": torch.tensor([[0, 1], [2, 3], [1, 1], [0, 0]]), "valid": torch.tensor([1, 1, 1, 0]).bool()}
    out = model(obs, None, None, None, future)
    assert torch.isclose(out["loss"], out["jepa_loss"] + 0.5 * out["future_loss"])
    out["loss"].backward()
    assert model.predictor.future_head.act.weight.grad.abs().sum() > 0  # the actions matter
    assert model.online.patch_embed.weight.grad.abs().sum() > 0  # the gradient reaches the encoder
    # an item whose game ends sooner adds nothing
    only = model(obs[3:], None, None, None, {k: v[3:] for k, v in future.items()})
    assert float(only["future_loss"]) == 0.0
    assert "future_loss" not in model(obs) and not build_stage1_model(load_config("tiny")).uses_future
    for bad in ("future_weight=-1", "future_horizon=0"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            load_config("tiny", [f"vjepa2_world_model.stage1.{bad}"])


def test_pretrain_trains_and_validates_the_future_head(cli, tiny_data, tmp_path):
    runs = tmp_path / "runs"
    res = cli("pretrain", "--stage", "1", "--preset", "tiny", "--data", str(tiny_data), "--wandb", "disabled",
              "--set", f"run.runs_dir={runs}", "--set", "vjepa2_world_model.stage1.future_weight=1",
              "--set", "vjepa2_world_model.stage1.future_horizon=3")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in open(next(runs.glob("pretrain/*/metrics.jsonl")))]
    assert any(r.get("train/future_loss", 0) > 0 for r in rows) and any(r.get("val/future_loss", 0) > 0 for r in rows)


def test_finer_motion_map_cells_locate_the_ball_within_a_patch():
    from worldmodel.masked_prediction import motion_map

    obs = torch.zeros(1, 4, 64, 64, dtype=torch.uint8)
    obs[0, 3, 10, 50] = 200
    m = motion_map(obs, cell=2)  # 32x32 cells of 2 pixels
    assert m.shape == (1, 1024) and int(m[0].argmax()) == 5 * 32 + 25
    model = build_stage1_model(load_config("tiny", ["vjepa2_world_model.stage1.motion_map_cells=8"]))
    assert model.predictor.motion_head.out_features == 64 and model.motion_cell == 8
    assert model(torch.randint(0, 255, (2, 4, 64, 64), dtype=torch.uint8))["motion_map_loss"] > 0
    with pytest.raises(UserError, match="motion_map_cells"):
        load_config("tiny", ["vjepa2_world_model.stage1.motion_map_cells=7"])


def test_pixel_input_norm_standardises_each_pixel_and_travels_in_the_checkpoint():
    vit = MaskedViT(image_size=32, in_channels=4, patch_size=16, dim=8, depth=1, heads=2, mlp_dim=16, dropout=0.0,
                    input_norm="pixel", input_std_floor=0.05)
    frames = torch.randint(0, 256, (64, 4, 32, 32), dtype=torch.uint8)
    frames[:, :, :4] = 200  # a static band (a wall): std 0 there, so the floor applies
    fit_input_stats(vit, frames)
    x = frames.float() / 255.0
    assert torch.allclose(vit.pixel_mean[0, 0], x.mean(dim=(0, 1)), atol=1e-6)
    assert torch.allclose(vit.pixel_std[0, 0, :4], torch.full((4, 32), 0.05))
    assert torch.allclose(vit.pixel_std[0, 0, 4:], x.std(dim=(0, 1))[4:], atol=1e-6)
    # The standardised input is what the patch embedding sees: hook it.
    seen = {}
    vit.patch_embed.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    vit(frames)
    assert seen["x"][:, :, :4].abs().max() < 1e-5  # the static band maps to 0
    assert abs(float(seen["x"][:, :, 4:].mean())) < 0.05 and abs(float(seen["x"][:, :, 4:].std()) - 1.0) < 0.05
    kw = vit.kwargs
    assert kw["input_norm"] == "pixel" and kw["input_std_floor"] == 0.05
    clone = MaskedViT(**kw)
    clone.load_state_dict(vit.state_dict())  # the fitted statistics are buffers of the state dict
    assert torch.equal(clone.pixel_mean, vit.pixel_mean) and torch.equal(clone.pixel_std, vit.pixel_std)
    plain = MaskedViT(image_size=32, in_channels=4, patch_size=16, dim=8, depth=1, heads=2, mlp_dim=16)
    fit_input_stats(plain, frames)  # a no-op without input_norm
    assert "pixel_mean" not in plain.state_dict()


def test_random_shift_crops_a_padded_copy_alike_for_every_frame_and_the_future_frames():
    from worldmodel.masked_prediction import random_shift

    torch.manual_seed(0)
    obs = torch.randint(0, 255, (6, 4, 16, 16), dtype=torch.uint8)
    later = obs.flip(1).clone()  # another stack: it must move by the same offsets
    assert random_shift(obs, 0)[0] is obs
    shifted, shifted_later = random_shift(obs, 2, later, generator=torch.Generator().manual_seed(1))
    assert shifted.dtype == torch.uint8 and shifted.shape == obs.shape
    padded = torch.nn.functional.pad(obs.float(), (2, 2, 2, 2), mode="replicate").to(torch.uint8)
    padded_later = torch.nn.functional.pad(later.float(), (2, 2, 2, 2), mode="replicate").to(torch.uint8)
    offsets = set()
    for b in range(6):  # each sample is one 16x16 window of its padded stack, the same window for all 4 frames
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(shifted[b], padded[b, :, dy:dy + 16, dx:dx + 16])]
        assert hits, b
        dy, dx = hits[0]
        assert torch.equal(shifted_later[b], padded_later[b, :, dy:dy + 16, dx:dx + 16])
        offsets.add((dy, dx))
    assert len(offsets) > 1  # the offsets are drawn per sample


def test_random_shift_trains_stage1_on_shifted_views_only():
    cfg = load_config("tiny", ["vjepa2_world_model.stage1.random_shift=4"])
    model = build_stage1_model(cfg)
    obs = torch.randint(0, 255, (3, 4, 64, 64), dtype=torch.uint8)
    torch.manual_seed(0)
    shifted, none = model.augment(obs)
    assert none is None and not torch.equal(shifted, obs)
    off = build_stage1_model(load_config("tiny"))
    assert off.augment(obs)[0] is obs  # off by default: the batch goes through untouched
    for bad in ("random_shift=-1", "random_shift=17"):
        with pytest.raises(UserError, match="random_shift"):
            load_config("tiny", [f"vjepa2_world_model.stage1.{bad}"])


def test_pretrain_with_random_shift_trains_and_its_encoder_loads(cli, tiny_data, tmp_path):
    runs = tmp_path / "runs"
    res = cli("pretrain", "--stage", "1", "--preset", "tiny", "--data", str(tiny_data), "--wandb", "disabled",
              "--set", f"run.runs_dir={runs}", "--set", "vjepa2_world_model.stage1.random_shift=3")
    assert res.returncode == 0, res.stderr[-2000:]
    enc = load_encoder(next(runs.glob("pretrain/*/stage1/best.pt")))
    assert torch.isfinite(enc(torch.randint(0, 255, (2, 4, 64, 64), dtype=torch.uint8))).all()


def test_random_shift_in_standardised_space_moves_the_encoders_inputs_without_changing_their_scale():
    cfg = load_config("tiny", ["vjepa2_world_model.stage1.random_shift=2",
                               "vjepa2_world_model.stage1.random_shift_space=standardised"])
    model = build_stage1_model(cfg)
    frames = torch.randint(0, 40, (16, 4, 64, 64), dtype=torch.uint8)
    frames[:, :, :, :6] = 200  # a bright wall: a large input once shifted onto pixels that never change
    fit_input_stats(model.online, frames)
    fit_input_stats(model.target, frames)
    mean, std = model.online.pixel_mean, model.online.pixel_std

    def standardised(x):
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - mean) / std

    obs = frames[:6]
    fut = {"obs": frames[6:12], "actions": torch.zeros(6, 2, dtype=torch.long),
           "valid": torch.ones(6, dtype=torch.bool)}
    torch.manual_seed(3)
    shifted, shifted_fut = model.augment(obs, fut)
    padded = torch.nn.functional.pad(standardised(obs), (2, 2, 2, 2), mode="replicate")
    padded_fut = torch.nn.functional.pad(standardised(fut["obs"]), (2, 2, 2, 2), mode="replicate")
    for b in range(6):  # the encoder's input is a window of the padded standardised stack, the future's the same one
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.allclose(standardised(shifted[b:b + 1])[0], padded[b, :, dy:dy + 64, dx:dx + 64], atol=1e-4)]
        assert hits, b
        dy, dx = hits[0]
        assert torch.allclose(standardised(shifted_fut["obs"][b:b + 1])[0], padded_fut[b, :, dy:dy + 64, dx:dx + 64],
                              atol=1e-4)
    # the scale of what the encoder sees stays that of unshifted frames; a raw-pixel shift moves the wall onto
    # pixels of small std
    raw = build_stage1_model(load_config("tiny", ["vjepa2_world_model.stage1.random_shift=2"]))
    raw.online.load_state_dict(model.online.state_dict())
    torch.manual_seed(3)
    assert standardised(shifted).abs().max() <= standardised(obs).abs().max() + 1e-4
    assert standardised(raw.augment(obs)[0]).abs().max() > 2 * standardised(obs).abs().max()
    assert torch.isfinite(model(shifted, None, None, None, shifted_fut)["loss"])
    with pytest.raises(UserError, match="random_shift_space"):
        load_config("tiny", ["vjepa2_world_model.stage1.random_shift_space=both"])

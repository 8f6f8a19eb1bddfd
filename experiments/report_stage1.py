"""``run.py evaluate --stage 1``: the seed's Stage-1 benchmark table, its success criteria, and diagnostics.

Losses are recomputed on the checkpoint's data in eval mode (no dropout) with masks from a fixed
seed, on the training episodes (a sample) and the validation episodes, so the val/train ratio
compares like with like. The representation diagnostics (std, effective rank, linear probes) of the
checkpoint's target encoder stand next to those of a random encoder of the same shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from envs.errors import UserError
from experiments.builders import build_encoder
from experiments.config import Config
from experiments.data import checkpoint_and_data, input_frames, load_split
from experiments.runlog import report_destination, write_json
from worldmodel.checkpoint import load_state
from worldmodel.diagnostics import PROBE_TARGETS, representation_diagnostics, warn_if_collapsed
from worldmodel.encoder import MaskedViT, PooledEncoder, fit_input_stats
from worldmodel.masked_prediction import MaskedPredictionModel, validation_losses

# The seed's Stage-1 benchmark table: upper bounds of Excellent, Good, Acceptable (above: Poor).
BENCHMARKS = {
    "train_loss": ("Train Loss", (0.01, 0.05, 0.1)),
    "val_loss": ("Val Loss", (0.015, 0.06, 0.12)),
    "val_train_ratio": ("Val/Train Ratio", (1.2, 1.5, 2.0)),
}
GRADES = ("Excellent", "Good", "Acceptable", "Poor")
# This project's acceptance for "the encoder learns meaningful representations" (issue 3).
PROBE_THRESHOLDS = {"paddle_x": 0.9, "ball_x": 0.6, "ball_y": 0.6}
MIN_RANK_FRACTION = 0.25  # effective rank >= 16 of 64
BASELINE_MARGIN = 0.1  # probe R^2 must beat the random encoder's by this much
STABLE_VAL_TOLERANCE = 0.05  # "no overfitting": last val loss within 5% of the best one
TRAIN_SAMPLES = 5000  # training observations used to recompute the train loss
RANDOM_BASELINE_SEED_OFFSET = 7919  # the random encoder of the baseline uses run.seed + this


def grade(value: float, bounds: tuple[float, float, float]) -> str:
    for name, bound in zip(GRADES, bounds):
        if value < bound:
            return name
    return GRADES[-1]


def random_baseline(cfg: Config, train_ds, val_ds) -> dict[str, Any]:
    """Diagnostics of a randomly initialised encoder of the same shape and the same input standardisation
    (what training must beat)."""
    state = torch.get_rng_state()
    torch.manual_seed(cfg.run.seed + RANDOM_BASELINE_SEED_OFFSET)
    vit = build_encoder(cfg)
    torch.set_rng_state(state)
    fit_input_stats(vit, input_frames(train_ds, cfg.run.seed))
    enc = PooledEncoder(vit)
    return representation_diagnostics(enc, train_ds, val_ds, seed=cfg.run.seed)


MEASUREMENTS = ("losses", "diagnostics")  # the two costly parts of the report, computable apart (make demo)


def measure_stage1(checkpoint: str | Path, data: str | Path | None = None, parts: tuple[str, ...] = MEASUREMENTS,
                   threads: int = 1) -> dict[str, Any]:
    """The report's measurements of a stage-1 checkpoint: ``"losses"`` (train sample and validation, eval mode,
    fixed masks) and/or ``"diagnostics"`` (the target encoder's std, rank and probes). Each part is
    deterministic, so two processes can compute one part each and :func:`evaluate_stage1` joins them."""
    unknown = set(parts) - set(MEASUREMENTS)
    assert not unknown, f"unknown stage-1 measurements {sorted(unknown)}; choose from {MEASUREMENTS}"
    checkpoint = Path(checkpoint)
    ckpt, cfg, data = checkpoint_and_data(checkpoint, "stage1", data)
    torch.set_num_threads(threads)
    train_ds, val_ds = load_split(cfg, data)
    try:
        encoder = MaskedViT(**ckpt["encoder_kwargs"])  # the encoder as stored, rebuilt from its constructor arguments
    except (KeyError, TypeError, AssertionError) as err:
        raise UserError(f"checkpoint {checkpoint} lacks a valid encoder description ({err}); re-run stage 1") from None
    model = MaskedPredictionModel.from_config(encoder, cfg.vjepa2_world_model.stage1, cfg.models.predictor)
    for name in ("online", "target", "predictor"):
        load_state(getattr(model, name), ckpt[name], checkpoint, name)
    model.eval()
    out: dict[str, Any] = {}
    if "losses" in parts:  # the seed's table grades the masked-prediction L1; an auxiliary loss is reported apart
        out["losses"] = {"train": validation_losses(model, train_ds, seed=cfg.run.seed + 2, max_samples=TRAIN_SAMPLES),
                         "val": validation_losses(model, val_ds, seed=cfg.run.seed + 1)}
    if "diagnostics" in parts:
        out["diagnostics"] = representation_diagnostics(PooledEncoder(model.target), train_ds, val_ds,
                                                        seed=cfg.run.seed)
        if not ckpt.get("random_baseline"):
            out["random_baseline"] = random_baseline(cfg, train_ds, val_ds)
    return out


def evaluate_stage1(checkpoint: str | Path, data: str | Path | None = None, out: str | Path | None = None,
                    threads: int = 1, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a stage-1 checkpoint; writes and returns the report. ``measured``: parts of
    :func:`measure_stage1` already computed (by another process); the rest is computed here."""
    checkpoint = Path(checkpoint)
    dest, note = report_destination(out, checkpoint.with_name(checkpoint.stem + "_eval_stage1.json"))
    ckpt, cfg, data = checkpoint_and_data(checkpoint, "stage1", data)
    measured = dict(measured or {})
    missing = tuple(p for p in MEASUREMENTS if p not in measured)
    if missing:
        measured.update(measure_stage1(checkpoint, data, missing, threads))
    train, val = measured["losses"]["train"], measured["losses"]["val"]
    diag = measured["diagnostics"]
    baseline = ckpt.get("random_baseline") or measured["random_baseline"]
    train_loss, val_loss = train["jepa_loss"], val["jepa_loss"]
    ratio = val_loss / max(train_loss, 1e-12)
    values = {"train_loss": train_loss, "val_loss": val_loss, "val_train_ratio": ratio}
    losses = {"train": train, "val": val}
    table = [{"metric": label, "key": key, "value": values[key], "grade": grade(values[key], bounds)}
             for key, (label, bounds) in BENCHMARKS.items()]

    history = ckpt.get("history") or []
    val_hist = [float(h.get("val_jepa_loss", h["val_loss"])) for h in history]
    stable = bool(val_hist) and val_hist[-1] <= min(val_hist) * (1 + STABLE_VAL_TOLERANCE)
    probe_ok = {k: diag[f"probe_r2/{k}"] >= thr and diag[f"probe_r2/{k}"] >= baseline[f"probe_r2/{k}"]
                + BASELINE_MARGIN for k, thr in PROBE_THRESHOLDS.items()}
    rank_ok = diag["effective_rank"] >= MIN_RANK_FRACTION * diag["latent_dim"]
    criteria = [
        {"criterion": "Train loss < 0.05", "value": train_loss, "pass": train_loss < 0.05},
        {"criterion": "Val/Train ratio < 1.5", "value": ratio, "pass": ratio < 1.5},
        {"criterion": f"No overfitting (last val loss within {STABLE_VAL_TOLERANCE:.0%} of the best)",
         "value": val_hist[-1] if val_hist else None, "pass": stable},
        {"criterion": "Encoder learns meaningful representations (probe R^2 paddle_x >= 0.9, ball_x >= 0.6, "
                      f"ball_y >= 0.6, each >= random + {BASELINE_MARGIN}; effective rank >= "
                      f"{MIN_RANK_FRACTION:.0%} of D; no collapse)",
         "value": {**{k: diag[f"probe_r2/{k}"] for k in PROBE_TARGETS}, "effective_rank": diag["effective_rank"]},
         "pass": all(probe_ok.values()) and rank_ok and not diag["collapsed"]},
    ]
    report = {
        "checkpoint": str(checkpoint), "data_dir": str(data), "target": ckpt.get("target_kind"),
        "epoch": int(ckpt.get("epoch", 0)), "step": int(ckpt.get("step", 0)), "benchmarks": table, "losses": losses,
        "success_criteria": criteria,
        "diagnostics": diag, "random_baseline": baseline, "history": history,
        "all_criteria_pass": all(c["pass"] for c in criteria),
    }
    if dest is not None:
        write_json(dest, report)
    report["report_path"] = str(dest) if dest is not None else None
    report["report_note"] = note
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [f"Stage 1 evaluation of {r['checkpoint']} ({r['target']} target, epoch {r['epoch']}, step {r['step']})",
             "", "Seed benchmark table", f"  {'Metric':<18}{'Value':>10}  Grade"]
    lines += [f"  {row['metric']:<18}{row['value']:>10.4f}  {row['grade']}" for row in r["benchmarks"]]
    if "motion_map_loss" in r["losses"]["val"]:
        tr, va = r["losses"]["train"]["motion_map_loss"], r["losses"]["val"]["motion_map_loss"]
        lines.append("  (losses above: the masked-latent L1; training also minimised the motion-map cross-entropy, "
                     f"train {tr:.4f} / val {va:.4f})")
    lines += ["", "Seed success criteria"]
    for c in r["success_criteria"]:
        lines.append(f"  [{'PASS' if c['pass'] else 'FAIL'}] {c['criterion']}")
    d, b = r["diagnostics"], r["random_baseline"]
    lines += ["", "Representation diagnostics (target encoder vs random encoder of the same shape)",
              f"  {'':<26}{'trained':>10}{'random':>10}"]
    for key in ["std_mean", "std_min", "effective_rank", "effective_rank_uncentred",
                *[f"probe_r2/{k}" for k in PROBE_TARGETS]]:
        lines.append(f"  {key:<26}{d.get(key, float('nan')):>10.4f}{b.get(key, float('nan')):>10.4f}")
    warn_if_collapsed(d, lines.append)
    saved = (f"report written to {r['report_path']}" if r.get("report_path")
             else f"report not written: {r['report_note']}; pass --out PATH to save it")
    lines += ["", f"all criteria pass: {r['all_criteria_pass']}", saved]
    return "\n".join(lines)

"""``run.py evaluate --stage 2``: the seed's Stage-2 table and success criteria, and what a planner needs.

* Losses (the training objective's parts) are recomputed in eval mode with the evaluation protocol
  (pure teacher forcing; rollout of ``rollout_steps`` from ``z_0``) on a sample of the training
  sequences and on all validation sequences, so the val/train ratio compares like with like.
* Open-loop latent error: from a real ``z_0`` of a validation sequence, ``imagine`` with the true
  actions, L1 against the real latents at horizons 1..8, next to copy-last (``z_k = z_0``) and the
  mean training latent.
* Rewards: precision and recall of "reward > 0" (predicted reward > 0.5 points), one step ahead
  (teacher forcing) and imagined (open loop over horizons 1..8).
* Life loss: ROC AUC of ``1 - continue_prob`` against the life-loss flag, one step and imagined, and
  precision and recall of "a life is lost" (predicted continue probability < 0.5).
* Probe: a ridge regression from latent to paddle_x / ball_x / ball_y fitted on real training
  latents, applied to imagined latents; mean absolute error against the RAM truth per horizon,
  next to the same probe on the real latents (its floor) and on copy-last latents.
* Steering (what a planner needs from the life-loss head): on validation frames where the ball is
  descending in the lower half of its range and more than 20 RAM units from the paddle's centre,
  imagine 12 steps of constant RIGHT and of constant LEFT from the frame's latent; the model "steers"
  toward the side whose imagined survival (product of continue probabilities) is higher. Reported: the
  fraction of frames where that side is the ball's side (0.5 is chance), the same fraction weighted
  by the survival gap, and the mean gap. A model whose life-loss prediction reads only "the ball is
  low" has a high AUC and steers at chance; a CEM planner or an actor trained on it cannot do better.
* History: open-loop error over 16 imagined steps after ``context_length - 1`` real steps, from the
  last real latent alone and with the real steps as ``imagine`` context (as the CEM planner imagines),
  each divided by copy-last's, and the imagined life-loss AUC of both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.errors import UserError
from experiments.builders import build_world_model_loss
from experiments.data import checkpoint_and_data, load_sequences
from experiments.report_stage1 import GRADES, grade
from experiments.runlog import report_destination, write_json
from worldmodel.checkpoint import load_checkpoint
from worldmodel.diagnostics import BALL_Y, PROBE_TARGETS
from worldmodel.dynamics_loss import LatentSequences, evaluate_losses
from worldmodel.transformer import symexp
from worldmodel.world_model import load_world_model

# The seed's Stage-2 benchmark table: upper bounds of Excellent, Good, Acceptable (above: Poor).
BENCHMARKS = {
    "latent_total": ("Total Loss", (0.1, 0.3, 0.5)),
    "teacher_forcing": ("Teacher Forcing Loss", (0.08, 0.2, 0.4)),
    "rollout": ("Rollout Loss", (0.15, 0.4, 0.6)),
    "val_train_ratio": ("Val/Train Ratio", (1.2, 1.5, 2.0)),
}
OPEN_LOOP_HORIZON = 8
TRAIN_SEQUENCES = 4000  # training sequences used to recompute the train losses
PROBE_TRAIN_FRAMES = 20000
HISTORY_HORIZON = 16  # imagined steps after the real history in the history report (CEM's horizon is 20)
STEER_HORIZON = 12  # imagined steps of constant RIGHT / LEFT (about half a ball crossing)
STEER_MIN_DISTANCE = 20  # RAM units between the ball and the paddle's centre (the paddle is 16 wide)
REWARD_THRESHOLD = 0.5  # predicted points above which a step counts as "rewarding"
STABLE_VAL_TOLERANCE = 0.05  # "validation loss stable": last val loss within 5% of the best one
MIN_EPOCHS = 15


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties); NaN when a class is empty."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over runs of ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_recall(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp = int((pred & true).sum())
    return {"precision": tp / pred.sum() if pred.sum() else float("nan"),
            "recall": tp / true.sum() if true.sum() else float("nan"),
            "predicted_positive": int(pred.sum()), "true_positive_steps": int(true.sum())}


class LinearProbe:
    """Ridge regression (standardised features, intercept, alpha 1) from latents to RAM labels."""

    def __init__(self, z: torch.Tensor, y: np.ndarray, alpha: float = 1.0):
        z = z.double()
        self.mu, self.sd = z.mean(0), z.std(0).clamp_min(1e-8)
        x = (z - self.mu) / self.sd
        yt = torch.as_tensor(y, dtype=torch.float64)
        self.y_mu = yt.mean()
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        self.w = torch.linalg.solve(x.T @ x + alpha * eye, x.T @ (yt - self.y_mu))

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return ((z.double() - self.mu) / self.sd) @ self.w + self.y_mu


def evaluate_stage2(checkpoint: str | Path, data: str | Path | None = None, out: str | Path | None = None,
                    threads: int = 1, progress: bool = False) -> dict[str, Any]:
    """Evaluate a stage-2 checkpoint; writes and returns the report."""
    checkpoint = Path(checkpoint)
    dest, note = report_destination(out, checkpoint.with_name(checkpoint.stem + "_eval_stage2.json"))
    kind = load_checkpoint(checkpoint)["kind"]
    if kind != "stage2":
        raise UserError(f"checkpoint {checkpoint} is a {kind!r} checkpoint; `evaluate --stage 2` needs a 'stage2' "
                        "checkpoint (runs/pretrain/<run>/stage2/best.pt)")
    ckpt, cfg, data = checkpoint_and_data(checkpoint, "stage2", data)
    torch.set_num_threads(threads)
    wm = load_world_model(checkpoint)
    model, loss_fn = wm.dynamics, build_world_model_loss(cfg)
    # A `run.py learn` world model validates on the loop's own held-out games.
    train_seq, val_seq, _ = load_sequences(cfg, data, wm.encoder, wm.device, progress,
                                           split=ckpt.get("episode_split", "permutation"))

    train = evaluate_losses(model, loss_fn, train_seq, max_sequences=TRAIN_SEQUENCES)
    val = evaluate_losses(model, loss_fn, val_seq)
    ratio = val["latent_total"] / max(train["latent_total"], 1e-12)
    values = {**val, "val_train_ratio": ratio}
    table = [{"metric": label, "key": key, "value": values[key], "grade": grade(values[key], bounds),
              "train": train.get(key)} for key, (label, bounds) in BENCHMARKS.items()]

    # Open-loop and head diagnostics on non-overlapping validation windows of 8 steps.
    H = OPEN_LOOP_HORIZON
    store, latents = val_seq.store, val_seq.latents
    val_eps = np.unique(store.episode_of[val_seq.starts])
    win = _windows(store, val_eps, H)
    seqs = LatentSequences(latents, store, win, H)
    b = seqs.batch(np.arange(len(seqs)))
    z, a = b["z"], b["actions"]  # [N, H+1, D], [N, H]
    with torch.inference_mode():
        lat, rew_im, cont_im = wm.imagine(z[:, 0], a)  # [N, H, D], [N, H], [N, H]
        T = model.max_len
        tf_pred, tf_rew, tf_cont = model(z[:, :T], a[:, :T])  # one step ahead, teacher forced (first T steps)
    train_mask = np.isin(store.episode_of, np.unique(store.episode_of[train_seq.starts]))
    z_mean = latents[torch.from_numpy(np.flatnonzero(train_mask))].mean(0)  # [D]
    true = z[:, 1:]
    open_loop = {
        "horizon": list(range(1, H + 1)),
        "model": (lat - true).abs().mean((0, 2)).tolist(),
        "copy_last": (z[:, :1] - true).abs().mean((0, 2)).tolist(),
        "mean_latent": (z_mean - true).abs().mean((0, 2)).tolist(),
        "windows": len(seqs),
    }
    open_loop["model_over_copy_last"] = [m / max(c, 1e-12) for m, c in zip(open_loop["model"], open_loop["copy_last"])]

    r_true = b["rewards"].cpu().numpy() > 0
    ll_true = b["life_loss"].cpu().numpy()
    rewards = {
        "teacher_forced": precision_recall(symexp(tf_rew).cpu().numpy() > REWARD_THRESHOLD, r_true[:, :T]),
        "imagined": precision_recall(rew_im.cpu().numpy() > REWARD_THRESHOLD, r_true),
        "threshold_points": REWARD_THRESHOLD,
    }
    life = {
        "auc_teacher_forced": roc_auc(-tf_cont.cpu().numpy().ravel(), ll_true[:, :T].ravel()),
        "auc_imagined": roc_auc(-cont_im.cpu().numpy().ravel(), ll_true.ravel()),
        "auc_imagined_per_horizon": [roc_auc(-cont_im[:, k].cpu().numpy(), ll_true[:, k]) for k in range(H)],
        "life_loss_steps": int(ll_true.sum()), "steps": int(ll_true.size),
        # A step is predicted to lose a life when P(continue) < 0.5.
        "teacher_forced": precision_recall(torch.sigmoid(tf_cont).cpu().numpy() < 0.5, ll_true[:, :T]),
        "imagined": precision_recall(cont_im.cpu().numpy() < 0.5, ll_true),
    }
    probe = _probe_report(latents, store, train_mask, z, lat, b["labels"].cpu().numpy(), cfg.run.seed)
    steering = steering_report(wm, latents, store, val_eps)
    with torch.inference_mode():
        with_history = history_report(wm, latents, store, val_eps)

    history = ckpt.get("history") or []
    val_hist = [float(h["val"]["latent_total"]) for h in history]  # the seed's (validation) Total Loss
    stable = bool(val_hist) and val_hist[-1] <= min(val_hist) * (1 + STABLE_VAL_TOLERANCE)
    epochs = int(ckpt.get("epoch", 0))
    h4 = open_loop["model_over_copy_last"][min(3, H - 1)]
    criteria = [
        {"criterion": "Total loss reaches the 0.1-0.3 range (or below)", "value": val["latent_total"],
         "pass": val["latent_total"] <= 0.3},
        {"criterion": "Rollout loss > teacher-forcing loss", "value": [val["rollout"], val["teacher_forcing"]],
         "pass": val["rollout"] > val["teacher_forcing"]},
        {"criterion": f"Training runs for {MIN_EPOCHS}+ epochs", "value": epochs, "pass": epochs >= MIN_EPOCHS},
        {"criterion": f"Validation loss stable (last within {STABLE_VAL_TOLERANCE:.0%} of the best) and val/train "
                      "ratio < 1.5", "value": [val_hist[-1] if val_hist else None, ratio],
         "pass": stable and ratio < 1.5},
        {"criterion": "World model learns temporal dynamics (open-loop latent error at horizon 4 <= 0.5x copy-last)",
         "value": h4, "pass": h4 <= 0.5},
    ]
    report = {
        "checkpoint": str(checkpoint), "data_dir": str(data), "epoch": epochs, "step": int(ckpt.get("step", 0)),
        "benchmarks": table, "train_losses": train, "val_losses": val, "success_criteria": criteria,
        "open_loop": open_loop, "rewards": rewards, "life_loss": life, "probe": probe, "steering": steering,
        "open_loop_with_history": with_history, "history": history,
        "all_criteria_pass": all(c["pass"] for c in criteria),
    }
    if dest is not None:
        write_json(dest, report)
    report["report_path"] = str(dest) if dest is not None else None
    report["report_note"] = note
    return report


def steering_report(wm, latents: torch.Tensor, store, episodes: np.ndarray, horizon: int = STEER_HORIZON,
                    min_distance: int = STEER_MIN_DISTANCE) -> dict[str, Any]:
    """Does imagined survival prefer moving toward the ball? (see the module docstring)"""
    from envs.breakout import LEFT, RIGHT
    from planners.reference import TrackerPolicy

    y = store.labels.astype(np.int64)  # [G, 5]
    g = np.flatnonzero(np.isin(store.episode_of, episodes))
    g = g[g + 1 < store.num_frames]
    g = g[store.episode_of[g] == store.episode_of[g + 1]]  # frames with a successor in the same episode
    paddle, ball_x, ball_y = y[g, 0] + TrackerPolicy.PADDLE_CENTER, y[g, 1], y[g, BALL_Y]
    descending = (ball_y > 0) & (y[g + 1, BALL_Y] > ball_y)
    low = ball_y > (np.median(ball_y[descending]) if descending.any() else 0)
    sel = descending & low & (np.abs(ball_x - paddle) > min_distance)
    out: dict[str, Any] = {"horizon": horizon, "min_distance": min_distance, "frames": int(sel.sum())}
    if not sel.any():
        return {**out, "agreement": float("nan"), "gap_weighted_agreement": float("nan"), "mean_gap": float("nan")}
    z0 = latents[torch.from_numpy(g[sel])]
    alive = {}
    for a in (RIGHT, LEFT):
        _, _, cont = wm.imagine(z0, torch.full((len(z0), horizon), a, dtype=torch.long))
        alive[a] = cont.prod(1).double().cpu().numpy()
    prefer_right = alive[RIGHT] > alive[LEFT]
    agree = prefer_right == ((ball_x - paddle)[sel] > 0)
    gap = np.abs(alive[RIGHT] - alive[LEFT])
    return {**out, "agreement": float(agree.mean()),
            "gap_weighted_agreement": float((gap * agree).sum() / gap.sum()) if gap.sum() > 0 else float("nan"),
            "mean_gap": float(gap.mean())}


def history_report(wm, latents: torch.Tensor, store, episodes: np.ndarray, horizon: int = HISTORY_HORIZON
                   ) -> dict[str, Any]:
    """Open-loop error with and without real history, as the CEM planner imagines (``planner.history_steps``).

    Non-overlapping validation windows of ``K + horizon`` transitions, ``K = context_length - 1``: imagine
    ``horizon`` steps from the latent after ``K`` real steps, once from that latent alone and once with
    the ``K`` real latents and actions as context. Errors are L1 over latents divided by copy-last's.
    """
    K = wm.context_length - 1
    out: dict[str, Any] = {"history_steps": K, "horizon": list(range(1, horizon + 1)), "windows": 0}
    try:
        starts = _windows(store, episodes, K + horizon)
    except UserError:
        return out
    b = LatentSequences(latents, store, starts, K + horizon).batch(np.arange(len(starts)))
    z, a, ll = b["z"], b["actions"], b["life_loss"].cpu().numpy()[:, K:]  # [N, K+H+1, D], [N, K+H], [N, H]
    true = z[:, K + 1:]
    copy = (z[:, K:K + 1] - true).abs().mean((0, 2))  # [H]
    lat0, _, c0 = wm.imagine(z[:, K], a[:, K:])
    lat1, _, c1 = wm.imagine(z[:, K], a[:, K:], context=z[:, :K], context_actions=a[:, :K]) if K else (lat0, 0, c0)
    return {**out, "windows": len(starts),
            "no_history": ((lat0 - true).abs().mean((0, 2)) / copy).tolist(),
            "with_history": ((lat1 - true).abs().mean((0, 2)) / copy).tolist(),
            "auc_no_history": roc_auc(-c0.cpu().numpy().ravel(), ll.ravel()),
            "auc_with_history": roc_auc(-c1.cpu().numpy().ravel(), ll.ravel())}


def _windows(store, episodes: np.ndarray, H: int) -> np.ndarray:
    """Start frames of non-overlapping windows of ``H`` transitions inside the given episodes."""
    starts = []
    for e in episodes:
        off, n_trans = store.frame_offsets[e], store.frame_counts[e] - 1
        if n_trans >= H:
            starts.append(off + np.arange(0, n_trans - H + 1, H))
    if not starts:
        raise UserError(f"no validation episode has {H} transitions; collect more data")
    return np.concatenate(starts)


def _probe_report(latents: torch.Tensor, store, train_mask: np.ndarray, z: torch.Tensor, lat: torch.Tensor,
                  labels: np.ndarray, seed: int) -> dict[str, Any]:
    """Probe MAE (RAM units) per horizon on imagined, real and copy-last latents."""
    idx = np.flatnonzero(train_mask)
    if len(idx) > PROBE_TRAIN_FRAMES:
        idx = np.sort(np.random.default_rng(seed).choice(idx, PROBE_TRAIN_FRAMES, replace=False))
    z_tr, y_tr = latents[torch.from_numpy(idx)], store.labels[idx].astype(np.float64)
    H = lat.shape[1]
    out: dict[str, Any] = {"horizon": list(range(1, H + 1)), "train_frames": int(len(idx))}
    for name, col in PROBE_TARGETS.items():
        fit = y_tr[:, BALL_Y] != 0 if col in (1, BALL_Y) else np.ones(len(y_tr), bool)
        probe = LinearProbe(z_tr[torch.from_numpy(fit)], y_tr[fit, col])
        truth = labels[:, 1:, col]  # [N, H]
        valid = labels[:, 1:, BALL_Y] != 0 if col in (1, BALL_Y) else np.ones_like(truth, bool)
        N, D = z.shape[0], z.shape[-1]
        imagined = probe(lat.reshape(-1, D)).view(N, H).cpu().numpy()
        real = probe(z[:, 1:].reshape(-1, D)).view(N, H).cpu().numpy()
        copy = probe(z[:, 0]).cpu().numpy()[:, None].repeat(H, 1)

        out[name] = {"imagined": _mae(imagined, truth, valid), "real": _mae(real, truth, valid),
                     "copy_last": _mae(copy, truth, valid),
                     "label_std": float(truth[valid].std()) if valid.any() else float("nan")}
    return out


def _mae(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> list[float]:
    """Mean absolute error per horizon (column) over the valid entries."""
    err = np.abs(pred - truth)
    return [float(err[:, k][valid[:, k]].mean()) if valid[:, k].any() else float("nan") for k in range(err.shape[1])]


def _fmt(v: float) -> str:
    return f"{v:.3f}" if v == v else "nan"


def format_report(r: dict[str, Any]) -> str:
    lines = [f"Stage 2 evaluation of {r['checkpoint']} (epoch {r['epoch']}, step {r['step']})", "",
             "Seed benchmark table (validation episodes; train in brackets)",
             f"  {'Metric':<22}{'Value':>9}  {'(train)':>9}  Grade"]
    for row in r["benchmarks"]:
        tr = f"({row['train']:.4f})" if row["train"] is not None else ""
        lines.append(f"  {row['metric']:<22}{row['value']:>9.4f}  {tr:>9}  {row['grade']}")
    lines.append(f"  grades: {', '.join(GRADES)} by the seed's thresholds")
    v = r["val_losses"]
    lines.append(f"  other heads (val): reward loss {v['reward']:.4f}, continuation BCE {v['continue']:.4f}")
    lines += ["", "Seed success criteria"]
    lines += [f"  [{'PASS' if c['pass'] else 'FAIL'}] {c['criterion']}" for c in r["success_criteria"]]
    ol = r["open_loop"]
    lines += ["", f"Open-loop latent L1 (imagine with the true actions, {ol['windows']} validation windows)",
              "  horizon   " + "".join(f"{h:>8}" for h in ol["horizon"])]
    for key in ("model", "copy_last", "mean_latent", "model_over_copy_last"):
        lines.append(f"  {key:<10}" + "".join(f"{x:>8.4f}" for x in ol[key]))
    rw, ll = r["rewards"], r["life_loss"]
    lines += ["", f"Rewards > 0 (predicted > {rw['threshold_points']} points)"]
    for k in ("teacher_forced", "imagined"):
        pr = rw[k]
        lines.append(f"  {k:<15} precision {_fmt(pr['precision'])}  recall {_fmt(pr['recall'])}  "
                     f"({pr['predicted_positive']} predicted, {pr['true_positive_steps']} true)")
    lines += ["", f"Life loss ({ll['life_loss_steps']} of {ll['steps']} steps)",
              f"  AUC teacher forced {_fmt(ll['auc_teacher_forced'])}   imagined {_fmt(ll['auc_imagined'])}"]
    for k in ("teacher_forced", "imagined"):
        if k in ll:  # P(continue) < 0.5
            pr = ll[k]
            lines.append(f"  {k:<15} precision {_fmt(pr['precision'])}  recall {_fmt(pr['recall'])}  "
                         f"({pr['predicted_positive']} predicted, {pr['true_positive_steps']} true)")
    lines += ["  imagined AUC per horizon " + " ".join(_fmt(x) for x in ll["auc_imagined_per_horizon"])]
    p = r["probe"]
    lines += ["", f"Stage-1 linear probe on imagined latents: mean abs error vs RAM (fitted on {p['train_frames']} "
              "real train latents)", "  horizon            " + "".join(f"{h:>7}" for h in p["horizon"])]
    for name in PROBE_TARGETS:
        for k in ("imagined", "real", "copy_last"):
            lines.append(f"  {name + ' ' + k:<19}" + "".join(f"{x:>7.2f}" for x in p[name][k]))
        lines.append(f"  ({name} label std {p[name]['label_std']:.2f})")
    st = r.get("steering")
    if st:
        lines += ["", f"Steering: {st['frames']} validation frames with the ball descending, low and > "
                  f"{st['min_distance']} units from the paddle; {st['horizon']} imagined steps of RIGHT vs LEFT",
                  f"  higher imagined survival on the ball's side: {_fmt(st['agreement'])} of frames (chance 0.5), "
                  f"{_fmt(st['gap_weighted_agreement'])} weighted by the survival gap "
                  f"(mean gap {_fmt(st['mean_gap'])})"]
    hist = r.get("open_loop_with_history")
    if hist and hist["windows"]:
        lines += ["", f"Open-loop latent L1 / copy-last after {hist['history_steps']} real steps "
                  f"({hist['windows']} validation windows; CEM imagines with this history, planner.history_steps)",
                  "  horizon      " + "".join(f"{h:>6}" for h in hist["horizon"])]
        lines.append("  no history   " + "".join(f"{x:>6.3f}" for x in hist["no_history"]))
        lines.append("  with history " + "".join(f"{x:>6.3f}" for x in hist["with_history"]))
        lines.append(f"  imagined life-loss AUC: no history {_fmt(hist['auc_no_history'])}, with history "
                     f"{_fmt(hist['auc_with_history'])}")
    saved = (f"report written to {r['report_path']}" if r.get("report_path")
             else f"report not written: {r['report_note']}; pass --out PATH to save it")
    lines += ["", f"all criteria pass: {r['all_criteria_pass']}", saved]
    return "\n".join(lines)

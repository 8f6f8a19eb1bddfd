"""The episode-return dashboard: ONE self-contained HTML file (no network), plus PNG copies of its plots.

``build_dashboard(run_dirs, out_html)`` reads saved runs and draws:

- learning curves: evaluation return against env steps for every agent and seed (from each pair's
  ``result.json`` of a ``compare-baselines`` folder); agents that do not learn from env steps
  (random, tracker, oracle, world-model agents evaluated once) appear as one point at their env
  steps and a dashed level line;
- final return distributions: box plot with every game's return per agent (seeds x episodes);
- world-model training losses: every ``*loss*`` metric in the ``metrics.jsonl`` of the other runs
  given (pretrain runs, demo runs, the `learn` runs inside a comparison folder), one panel per run, and the
  reward and life-loss heads' validation precision and recall over a `learn` run.

Plots are matplotlib PNGs embedded as base64 ``data:`` URIs; a small inline script checks that
every image decoded and writes the outcome to ``<body data-plots=...>`` (the headless-browser test
reads it). ``python run.py dashboard RUN_DIR...`` rebuilds the page from saved runs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from envs.errors import UserError  # noqa: E402
from experiments.results import HUMAN_SCORE, RANDOM_SCORE, format_table, summarize_agent  # noqa: E402

RESULT_FILE = "result.json"


# --------------------------------------------------------------------------------------- reading
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interrupt; the rest of the file is still good
    return rows


def collect_runs(run_dirs: list[str | Path]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, list]]]:
    """Agent results (label -> per-seed results) and loss curves (run label -> metric -> [(step, value)])."""
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"run folder {d} does not exist; pass folders written by compare-baselines, pretrain or "
                            "demo")
    results: dict[str, list[dict[str, Any]]] = {}
    losses: dict[str, dict[str, list]] = {}
    result_files = {d: sorted(d.rglob(RESULT_FILE)) for d in dirs}
    compare_dirs = [d for d in dirs if result_files[d]]
    for d in dirs:
        for path in result_files[d]:
            res = json.loads(path.read_text())
            label = res["agent"] if len(compare_dirs) <= 1 else f"{d.name}/{res['agent']}"
            results.setdefault(label, []).append(res)
        pair_folders = {p.parent for p in result_files[d]}
        for mpath in sorted(d.rglob("metrics.jsonl")):
            if mpath.parent in pair_folders:
                continue
            series: dict[str, list] = {}
            for row in _read_jsonl(mpath):
                step = row.get("step")
                if step is None:
                    continue
                for k, v in row.items():
                    wanted = "loss" in k or (k.startswith("heads/") and k.endswith(("recall", "precision")))
                    if wanted and isinstance(v, (int, float)) and math.isfinite(v):
                        series.setdefault(k, []).append((step, float(v)))
            if series:
                rel = mpath.parent.relative_to(d) if mpath.parent != d else Path(".")
                label = d.name if str(rel) == "." else f"{d.name}/{rel}"
                losses[label] = series
    for v in results.values():
        v.sort(key=lambda r: r["seed"])
    if not results and not losses:
        raise UserError(f"no results (result.json) or loss metrics (metrics.jsonl) found under "
                        f"{', '.join(map(str, dirs))}; pass compare-baselines, pretrain or demo run folders")
    return results, losses


# --------------------------------------------------------------------------------------- plots
def _colors(labels: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _mean_band(runs: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Env steps evaluated by every seed, the mean over seeds there and a 95% bootstrap band of that mean."""
    import numpy as np

    from experiments.results import bootstrap_ci

    per_seed = [{p["env_steps"]: p["mean"] for p in r["curve"]} for r in runs]
    steps = sorted(set.intersection(*(set(d) for d in per_seed)))
    mean, lo, hi = [], [], []
    for x in steps:
        v = np.array([d[x] for d in per_seed])
        a, b = bootstrap_ci(v, "mean")
        mean.append(float(v.mean()))
        lo.append(a)
        hi.append(b)
    return steps, mean, lo, hi


def plot_learning_curves(results: dict[str, list[dict[str, Any]]]):
    """Per agent: each seed thin, the mean over seeds bold with a 95% bootstrap band (agents that learn from env
    steps); agents evaluated once (random among them) are a point and a dashed level. Human and random play (the
    Atari-100k literature's 30.5 and 1.7, experiments.results) are reference lines."""
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    colors = _colors(list(results))
    xmax = max([p["env_steps"] for runs in results.values() for r in runs for p in r["curve"]] + [1])
    for label, runs in results.items():
        curves = [r for r in runs if len({p["env_steps"] for p in r["curve"]}) > 1]
        for r in runs:
            points = {p["env_steps"]: p["mean"] for p in r["curve"]}  # the final evaluation wins a shared step
            xs, ys = list(points), list(points.values())
            if len(xs) == 1:  # not trained on env steps: its level across the plot
                ax.axhline(ys[0], color=colors[label], ls="--", lw=1, alpha=0.5)
                ax.plot(xs, ys, "o", color=colors[label], ms=4, alpha=0.8)
            else:
                ax.plot(xs, ys, "-", color=colors[label], lw=0.8, alpha=0.45)
        if len(curves) >= 2:
            steps, mean, lo, hi = _mean_band(curves)
            if steps:
                ax.fill_between(steps, lo, hi, color=colors[label], alpha=0.18, lw=0)
                ax.plot(steps, mean, "-o", color=colors[label], lw=2.4, ms=3,
                        label=f"{label} (mean of {len(curves)} seeds)")
                continue
        ax.plot([], [], "-o" if curves else "o", color=colors[label], label=f"{label} ({len(runs)} seed"
                f"{'s' if len(runs) > 1 else ''})")
    ax.axhline(HUMAN_SCORE, color="black", ls=":", lw=1.2, label=f"human {HUMAN_SCORE:g}")
    ax.axhline(RANDOM_SCORE, color="grey", ls="-.", lw=1.0, label=f"random {RANDOM_SCORE:g} (literature)")
    ax.set_xlim(0, xmax * 1.03)
    ax.set_xlabel("env steps (agent steps, frame skip 4)")
    ax.set_ylabel("evaluation return (full game, raw score)")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def plot_final_distributions(results: dict[str, list[dict[str, Any]]]):
    labels = list(results)
    data = [[x for r in results[label] for x in r["returns"]] for label in labels]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(labels) + 2), 4.5), dpi=100)
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    colors = _colors(labels)
    for i, (label, values) in enumerate(zip(labels, data), 1):
        jitter = [i + 0.15 * math.sin(7.3 * k) for k in range(len(values))]  # deterministic spread
        ax.scatter(jitter, values, s=12, color=colors[label], alpha=0.7, zorder=3)
    ax.set_ylabel("return per game (seeds x episodes)")
    ax.set_title("Final return distributions")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_losses(label: str, series: dict[str, list]):
    """One panel per training stage (keys naming ``stage2`` apart from the rest: their steps differ)."""
    groups: dict[str, list[str]] = {}
    two_stages = any("stage2" in k for k in series) and any("stage2" not in k for k in series)
    for key in sorted(series):
        if key.startswith("heads/"):
            title = "Reward / life-loss heads (validation)"
        else:
            title = ("Stage 2" if "stage2" in key else "Stage 1") if two_stages else ""
        groups.setdefault(title, []).append(key)
    fig, axes = plt.subplots(1, len(groups), figsize=(8 if len(groups) == 1 else 12, 4), dpi=100, squeeze=False)
    for ax, (title, keys) in zip(axes[0], groups.items()):
        for key in keys:
            steps, values = zip(*series[key])
            ax.plot(steps, values, "-" if len(steps) > 1 else "o", label=key, lw=1.2, ms=4)
        heads = title.startswith("Reward")
        if not heads and all(v > 0 for key in keys for _, v in series[key]):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("precision / recall" if heads else "loss")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"World-model training losses: {label}")
    fig.tight_layout()
    return fig


def _png(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    path.write_bytes(data)
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------------------- page
_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.plot'));
  var bad = imgs.filter(function (im) {
    var box = im.getBoundingClientRect();
    return !(im.complete && im.naturalWidth > 0 && im.naturalHeight > 0 && box.width > 0 && box.height > 0);
  });
  bad.forEach(function (im) { console.error('plot failed to draw: ' + im.alt); });
  document.body.setAttribute('data-plots', (bad.length === 0 ? 'ok' : 'failed') + ':' +
                             (imgs.length - bad.length) + '/' + imgs.length);
});
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
img.plot { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #666; font-size: 0.9em; }
"""


def _md_table_to_html(md: str) -> str:
    rows = [line.strip().strip("|").split("|") for line in md.splitlines() if line.strip()]
    head, body = rows[0], rows[2:]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out + ["</table>"])


def build_dashboard(run_dirs: list[str | Path], out_html: str | Path | None = None) -> Path:
    """Write the dashboard of ``run_dirs`` to ``out_html`` (default: first run folder/dashboard.html).

    PNG copies go to ``plots/`` next to the HTML file. Returns the HTML path.
    """
    results, losses = collect_runs(run_dirs)
    out_html = Path(out_html) if out_html is not None else Path(run_dirs[0]) / "dashboard.html"
    plot_dir = out_html.parent / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    if results:
        summaries = [summarize_agent(label, runs) for label, runs in results.items()]
        preset = next(iter(results.values()))[0].get("preset", "?")
        sections.append(f"<h2>Results</h2><p class='note'>Preset <code>{html.escape(str(preset))}</code>; "
                        "full-game raw scores over seeds x episodes; evaluation seeds disjoint from training "
                        "seeds.</p>" + _md_table_to_html(format_table(summaries)))
        for name, title, fig in (("learning_curves", "Learning curves", plot_learning_curves(results)),
                                 ("final_returns", "Final return distributions", plot_final_distributions(results))):
            b64 = _png(fig, plot_dir / f"{name}.png")
            sections.append(f"<h2>{title}</h2><img class='plot' alt='{name}' src='data:image/png;base64,{b64}'>")
    else:
        sections.append("<p class='note'>No compare-baselines results among the runs given.</p>")
    if losses:
        sections.append("<h2>World-model training losses</h2>")
        if any(k.startswith("heads/") for series in losses.values() for k in series):
            sections.append("<p class='note'>Closed-loop (<code>run.py learn</code>) runs also show the reward and "
                            "life-loss heads' precision and recall on validation episodes over training.</p>")
        for i, (label, series) in enumerate(losses.items()):
            name = f"losses_{i}"
            b64 = _png(plot_losses(label, series), plot_dir / f"{name}.png")
            sections.append(f"<img class='plot' alt='{html.escape(label)} losses' "
                            f"src='data:image/png;base64,{b64}'>")
    else:
        sections.append("<p class='note'>No world-model training runs given (pass pretrain run folders to "
                        "<code>run.py dashboard</code> to add their losses).</p>")
    sources = "".join(f"<li><code>{html.escape(str(Path(d)))}</code></li>" for d in run_dirs)
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Breakout episode returns</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>Breakout: episode-return dashboard</h1>\n"
            f"<p class='note'>Built from:</p><ul>{sources}</ul>\n" + "\n".join(sections)
            + f"\n<script>{_CHECK_SCRIPT}</script>\n</body></html>\n")
    tmp = out_html.with_name(out_html.name + ".tmp")
    tmp.write_text(page)
    os.replace(tmp, out_html)
    return out_html

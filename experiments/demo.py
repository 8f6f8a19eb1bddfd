"""`make demo`: the whole pipeline on one preset, printing what each stage produced.

collection -> Stage 1 -> Stage 2 (one pretrain run folder) -> both evaluations -> CEM and random
playing full games under the one evaluation protocol -> the episode-return dashboard. Everything
lands in ``runs/demo/<time>-<preset>-s<seed>/``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click

from experiments import distributed
from experiments.collect import format_summary, summarize
from experiments.config import Config
from experiments.runlog import open_run, setup_torch


def run_demo(cfg: Config, agents: tuple[str, ...] = ("random", "cem")) -> dict:
    from experiments.compare import CompareOptions, compare_baselines
    from experiments.pretrain import pretrain_both
    from experiments.report_stage1 import evaluate_stage1, measure_stage1
    from experiments.report_stage1 import format_report as format_stage1
    from experiments.report_stage2 import evaluate_stage2
    from experiments.report_stage2 import format_report as format_stage2
    from experiments.results import format_table

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    grp = distributed.setup(setup_torch(cfg))
    echo = click.echo if grp.main else (lambda *a, **k: None)  # under torchrun rank 0 alone prints
    # The demo folder's own log holds the stage timings and final returns; each stage's run keeps its own
    # wandb run (one active wandb run per process, so the demo's own log skips wandb).
    demo_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, wandb="disabled"))
    run = open_run(demo_cfg, "demo")
    demo_dir = run.dir
    echo(f"demo folder: {demo_dir}" + (f" ({grp.world} processes)" if grp.active else ""))

    def lap(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 1)
        echo(f"[{name}: {timings[name]:.0f} s]")

    # 1. collection + Stage 1 + Stage 2 in one pretrain run folder inside the demo folder
    t = time.perf_counter()
    wm_cfg = _with_runs_dir(cfg, demo_dir)
    result = pretrain_both(wm_cfg)
    lap("pretrain (collect + stage 1 + stage 2)", t)
    pretrain_dir, data_dir = Path(result["run_dir"]), Path(result["data_dir"])
    if grp.main:
        echo(format_summary(summarize(data_dir, cfg.data.val_fraction, cfg.run.seed, verify=False)))

    # 2. both evaluations. Under torchrun rank 0 measures Stage 1's losses while rank 1 measures its encoder's
    # diagnostics and then evaluates Stage 2 (the two halves take about as long); rank 0 writes both reports.
    t = time.perf_counter()
    stage1_ckpt = pretrain_dir / "stage1" / "best.pt"
    jobs = {0: lambda: ("stage1", measure_stage1(stage1_ckpt, parts=("losses",))),
            1: lambda: ("stage1", measure_stage1(stage1_ckpt, parts=("diagnostics",))),
            2: lambda: ("stage2", format_stage2(evaluate_stage2(result["best_checkpoint"])))}
    owner = {0: 0, 1: 1 % grp.world, 2: 1 % grp.world}
    with distributed.solo():  # each job is one process's work
        mine = [jobs[j]() for j in sorted(jobs) if owner[j] == grp.rank]
    done = [item for items in distributed.gather(mine) for item in items]
    if grp.main:
        measured = {k: v for kind, part in done if kind == "stage1" for k, v in part.items()}
        echo(format_stage1(evaluate_stage1(stage1_ckpt, measured=measured)))
        echo(next(text for kind, text in done if kind == "stage2"))
    lap("evaluate stages 1 and 2", t)

    # 3. CEM and random in the real game, the same evaluation protocol as compare-baselines
    t = time.perf_counter()
    opts = CompareOptions(world_model=Path(result["best_checkpoint"]), data=data_dir, pretrain_runs=[pretrain_dir])
    report = compare_baselines(wm_cfg, list(agents), seeds=1, out=demo_dir / "compare", opts=opts)
    lap("play full games (" + ", ".join(agents) + ")", t)
    echo(format_table(report["summaries"]))
    timings["total"] = round(time.perf_counter() - t0, 1)
    echo(f"demo finished in {timings['total'] / 60:.1f} min")
    echo(f"dashboard: {report['dashboard']}")
    summary = {"pretrain_run": str(pretrain_dir), "world_model": result["best_checkpoint"],
               "results": report["results_json"], "dashboard": report["dashboard"], "timings_s": timings,
               "processes": grp.world}
    run.log({f"perf/{k.split(' ')[0]}_s": v for k, v in timings.items()}
            | {f"eval/{r['agent']}_return_mean": r["mean"] for r in report["summaries"]}, step=0)
    run.write_json("demo_summary.json", summary)
    run.close()
    return summary


def _with_runs_dir(cfg: Config, demo_dir: Path) -> Config:
    """The same config with runs written under the demo folder (so one folder holds the whole demo)."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, runs_dir=str(demo_dir)))

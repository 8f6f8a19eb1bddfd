"""`make demo`: the whole pipeline on one preset, printing what each stage produced."""

from __future__ import annotations

import click

from experiments.collect import collect, format_summary, summarize
from experiments.config import Config
from experiments.runlog import RunLogger


def run_demo(cfg: Config) -> None:
    with RunLogger(cfg, "demo") as run:
        click.echo(f"run folder: {run.dir}")
        data_dir = run.dir / "data"
        collect(cfg, data_dir, cfg.data.collect_steps, policy=cfg.data.policy)
        summary = summarize(data_dir, cfg.data.val_fraction, cfg.run.seed)
        run.write_json("dataset_summary.json", summary)
        run.log({"data/transitions": summary["transitions"], "data/episodes": summary["episodes"],
                 "data/return_mean": summary["episode_return"]["mean"]}, step=0)
        click.echo(format_summary(summary))

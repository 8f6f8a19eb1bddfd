#!/usr/bin/env python
"""Command line for JEPA world models on Atari Breakout.

Each command parses its options and calls one function in ``experiments/``. Errors a user can
cause are printed as one sentence with exit code 2 (no traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from envs.errors import UserError

PRESET_HELP = "Config preset stacked on the defaults: tiny, quick, full or atari100k."


class CLI(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: completed work is saved", err=True)
            sys.exit(130)


def config_options(fn):
    """--preset, --config, --set, --seed, --wandb: shared by every command that builds a config."""
    fn = click.option("--wandb", "wandb_mode", type=click.Choice(["offline", "online", "disabled"]), default=None,
                      help="wandb mode (default from run.wandb: offline; files stay in the run folder).")(fn)
    fn = click.option("--seed", type=int, default=None, help="Run seed (run.seed).")(fn)
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                      help="Override a config key, e.g. --set vjepa2_world_model.stage1.masking_ratio=0.5 "
                           "(repeatable).")(fn)
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                      help="Extra YAML file stacked on the preset.")(fn)
    fn = click.option("--preset", default="quick", show_default=True, help=PRESET_HELP)(fn)
    return fn


def build_config(preset, config_file, overrides, seed, wandb_mode):
    from experiments.config import load_config

    overrides = list(overrides)
    if seed is not None:
        overrides.append(f"run.seed={seed}")
    if wandb_mode is not None:
        overrides.append(f"run.wandb={wandb_mode}")
    return load_config(preset, overrides, config_file)


@click.group(cls=CLI, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """JEPA world models for Atari Breakout: collect data, pretrain, evaluate, plan, compare.

    \b
    Example:
      python run.py collect --policy random --steps 5000 --out data/random5k
    """


@cli.command()
@click.option("--policy", type=click.Choice(["random", "tracker"]), default="random", show_default=True,
              help="Behaviour policy.")
@click.option("--steps", type=int, required=True, help="Agent steps to collect (frame skip 4 each).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Data folder to write (refused if non-empty, unless --append).")
@click.option("--append", is_flag=True, help="Add episodes to an existing data folder.")
@config_options
def collect(policy, steps, out, append, preset, config_file, overrides, seed, wandb_mode):
    """Collect Breakout episodes to disk as single 64x64 frames with a manifest.

    \b
    Example:
      python run.py collect --policy random --steps 5000 --out data/random5k
    """
    from experiments.collect import collect as run_collect
    from experiments.collect import format_summary

    cfg = build_config(preset, config_file, overrides, seed, wandb_mode)
    summary = run_collect(cfg, out, steps, policy=policy, append=append)
    click.echo(format_summary(summary))


@cli.command()
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-verify", is_flag=True, help="Skip the checksum check of every episode file.")
def summary(data, no_verify):
    """Print the summary of a replay data folder (checksums verified).

    \b
    Example:
      python run.py summary data/random5k
    """
    from experiments.collect import format_summary, summarize

    click.echo(format_summary(summarize(data, verify=not no_verify)))


@cli.command()
@config_options
def demo(preset, config_file, overrides, seed, wandb_mode):
    """The whole pipeline on one preset (what `make demo` runs).

    \b
    Example:
      python run.py demo --preset quick
    """
    from experiments.demo import run_demo

    cfg = build_config(preset, config_file, overrides, seed, wandb_mode)
    run_demo(cfg)


if __name__ == "__main__":
    cli()

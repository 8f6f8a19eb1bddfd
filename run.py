#!/usr/bin/env python
"""Command line for JEPA world models on Atari Breakout.

Each command parses its options and calls one function in ``experiments/``. Errors a user can
cause are printed as one sentence with exit code 2 (no traceback).
"""

from __future__ import annotations

import errno
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
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                raise
            # Files are written atomically (temp file + rename), so what was already written is intact.
            where = f" {err.filename}" if err.filename else ""
            click.echo(f"error: cannot write{where} ({err.strerror}); choose a writable place (--out, or "
                       "--set run.runs_dir=DIR) or free disk space", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            if ctx.invoked_subcommand == "collect":
                click.echo("interrupted: the finished episodes and the one in progress (marked truncated) are in "
                           "the folder; add more with --append", err=True)
            else:
                click.echo("interrupted: continue from the last checkpoint with --resume RUN_DIR", err=True)
            sys.exit(130)


class AgentName(click.ParamType):
    """Agent names from the registry (``experiments/agents.py``), read when the command line is parsed.

    Args:
        acting_only: accept only agents that act without env-step training (plan-in-env, collect).
        many: a comma-separated list (compare-baselines), converted to a list without duplicates.
    """

    name = "agent"

    def __init__(self, acting_only: bool = False, many: bool = False):
        self.acting_only, self.many = acting_only, many

    def names(self) -> list[str]:
        from experiments.agents import agent_names

        return agent_names(acting_only=self.acting_only)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "NAME[,NAME...]" if self.many else f"[{'|'.join(self.names())}]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):  # already converted (a default given as a list)
            return value
        names = [v.strip() for v in value.split(",") if v.strip()] if self.many else [value]
        accepted = self.names()
        if not names:
            self.fail(f"is empty; pass a comma-separated list from: {', '.join(accepted)}", param, ctx)
        for name in names:
            if name not in accepted:
                self.fail(f"unknown agent '{name}'; accepted: {', '.join(accepted)}", param, ctx)
        return list(dict.fromkeys(names)) if self.many else value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in self.names() if n.startswith(incomplete)]


class AgentOption(click.Option):
    """An option of :class:`AgentName` type whose help ends with each accepted agent's description."""

    @property
    def help(self) -> str | None:
        from experiments.agents import REGISTRY

        described = "; ".join(f"{n}: {REGISTRY[n].description}" for n in self.type.names())
        return f"{self._help} ({described})." if self._help else None

    @help.setter
    def help(self, text: str | None) -> None:
        self._help = text


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


def refuse_options_with_resume(resume) -> None:
    """``--resume`` continues with the run's saved config: config options given beside it would be ignored, so
    they are refused instead."""
    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" if name != "overrides" else "--set"
             for name in ("preset", "config_file", "overrides", "seed", "wandb_mode")
             if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
    given = ["--config" if g == "--config-file" else "--wandb" if g == "--wandb-mode" else g for g in given]
    if resume is not None and given:
        raise UserError(f"--resume continues {resume} with the config saved in it, so {', '.join(given)} would be "
                        "ignored; drop them, or start a new run with them instead of --resume")


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
    import os

    command = click.get_current_context().invoked_subcommand
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and command not in TORCHRUN_COMMANDS:
        raise UserError(f"`run.py {command}` runs in one process; start it with `python run.py {command}`, not "
                        f"torchrun (torchrun runs: {', '.join(TORCHRUN_COMMANDS)})")


# Commands that run under `torchrun --nproc_per_node=N` (experiments/distributed.py): pretrain splits each batch
# over the processes, compare-baselines (acting agents only) and demo split the evaluation games as well.
TORCHRUN_COMMANDS = ("pretrain", "demo", "compare-baselines")


@cli.command()
@click.option("--policy", cls=AgentOption, type=AgentName(acting_only=True), default="random", show_default=True,
              help="Behaviour policy")
@click.option("--steps", type=int, required=True, help="Agent steps to collect (frame skip 4 each).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Data folder to write (refused if non-empty, unless --append).")
@click.option("--append", is_flag=True, help="Add episodes to an existing data folder.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Stage-2 world-model checkpoint (--policy cem).")
@click.option("--agent", "agent_path", type=click.Path(path_type=Path), default=None,
              help="train-agent checkpoint (agent.pt): --policy actor-critic, or cem's value and policy prior.")
@config_options
def collect(policy, steps, out, append, checkpoint, agent_path, preset, config_file, overrides, seed, wandb_mode):
    """Collect Breakout episodes to disk as single 64x64 frames with a manifest.

    \b
    Example:
      python run.py collect --policy random --steps 5000 --out data/random5k
    """
    from experiments.collect import collect as run_collect
    from experiments.collect import format_summary, summarize

    cfg = build_config(preset, config_file, overrides, seed, wandb_mode)
    run_collect(cfg, out, steps, policy=policy, append=append, checkpoint=checkpoint, agent=agent_path)
    click.echo(format_summary(summarize(out, cfg.data.val_fraction, cfg.run.seed)))


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
    from experiments import distributed
    from experiments.demo import run_demo

    cfg = build_config(preset, config_file, overrides, seed, wandb_mode)
    try:
        run_demo(cfg)
    finally:
        distributed.teardown()


@cli.command("compare-baselines")
@click.option("--agents", cls=AgentOption, type=AgentName(many=True), default="ppo,dqn,random", show_default=True,
              help="Comma-separated agents")
@click.option("--seeds", "num_seeds", type=int, default=1, show_default=True,
              help="Training seeds per agent: run.seed, run.seed+1, ...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Comparison folder [default: runs/compare-baselines/<preset>]; rerunning with the same folder "
                   "skips finished agent/seed pairs.")
@click.option("--world-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="One Stage-2 world-model checkpoint for every seed (cem, actor-critic) [default: each seed "
                   "collects, pretrains and trains its own, under OUT/world-models/].")
@click.option("--agent-checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="One actor-critic checkpoint from train-agent for every seed (actor-critic; value/prior for "
                   "cem) [default: each seed trains its own].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Replay folder the world model was trained on: its transitions count as the world-model "
                   "agents' env steps.")
@click.option("--pretrain-run", "pretrain_runs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Pretrain run folder whose losses go on the dashboard (repeatable).")
@click.option("--reference", "references", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="episodes.json of a comparison made with the same settings (e.g. docs/results/"
                   "atari100k_episodes.json): its finished pairs join the table and are not rerun (repeatable).")
@click.option("--only-finished", is_flag=True,
              help="Run nothing: write the table and dashboard of the pairs already finished (and imported).")
@config_options
def compare_baselines(agents, num_seeds, out, world_model, agent_checkpoint, data, pretrain_runs, references,
                      only_finished, preset, config_file, overrides, seed, wandb_mode):
    """Train and evaluate agents at one env-step budget; write results.md, results.json and a dashboard.

    \b
    Examples:
      python run.py compare-baselines --preset quick --seeds 1 --agents ppo,dqn,random
      python run.py compare-baselines --preset atari100k --seeds 3 --agents random,cem-value,actor-critic \\
          --reference docs/results/atari100k_episodes.json   # a world model per seed; extends the table
    """
    from experiments.compare import CompareOptions
    from experiments.compare import compare_baselines as run_compare

    cfg = build_config(preset, config_file, overrides, seed, wandb_mode)
    opts = CompareOptions(world_model=world_model, agent_checkpoint=agent_checkpoint, data=data,
                          pretrain_runs=list(pretrain_runs), references=list(references))
    from experiments import distributed

    try:
        report = run_compare(cfg, agents, num_seeds, out=out, opts=opts, only_finished=only_finished)
        if distributed.group().main:  # under torchrun, rank 0 alone prints
            click.echo(Path(report["results_md"]).read_text())
            click.echo(f"results: {report['results_json']}")
            click.echo(f"dashboard: {report['dashboard']}")
    finally:
        distributed.teardown()


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [default: FIRST_RUN_DIR/dashboard.html]; PNG copies go to plots/ beside it.")
def dashboard(run_dirs, out):
    """Rebuild the episode-return dashboard (one offline HTML file) from saved runs.

    \b
    Example:
      python run.py dashboard runs/compare-baselines/quick runs/pretrain/20250101-120000-quick-s0
    """
    from experiments.dashboard import build_dashboard

    click.echo(f"dashboard: {build_dashboard(list(run_dirs), out)}")


@cli.command()
@click.option("--stage", type=click.Choice(["1", "2"]), default=None,
              help="Which stage to train [default: collection (unless --data), stage 1, then stage 2].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Replay folder to train on (default: collect data.collect_steps random-policy steps first).")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder to continue from its latest checkpoint (its saved config is used).")
@click.option("--stage1-checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Stage-1 checkpoint whose encoder Stage 2 uses (or a Stage-2 checkpoint, e.g. a learn run's "
                   "world_model.pt: Stage 2 is refit from scratch over its encoder).")
@config_options
def pretrain(stage, data, resume, stage1_checkpoint, preset, config_file, overrides, seed, wandb_mode):
    """Pretrain the world model: Stage 1 (masked-latent encoder) or Stage 2.

    \b
    Example:
      python run.py pretrain --stage 1 --preset quick --data data/quick30k
      python run.py pretrain --stage 1 --resume runs/pretrain/20261129-103007-quick-s0
      python run.py pretrain --stage 2 --stage1-checkpoint runs/pretrain/<run>/stage1/best.pt
      python run.py pretrain --preset quick   # collect, stage 1, stage 2 in one run folder
      torchrun --standalone --nproc_per_node=2 run.py pretrain --stage 1 --preset quick --data data/quick30k
    """
    from experiments import distributed

    refuse_options_with_resume(resume)
    cfg = build_config(preset, config_file, overrides, seed, wandb_mode)
    try:
        _pretrain(cfg, stage, data, resume, stage1_checkpoint)
    finally:
        distributed.teardown()


def _pretrain(cfg, stage, data, resume, stage1_checkpoint):
    from experiments import distributed

    if stage == "1":
        from experiments.pretrain import pretrain_stage1

        result = pretrain_stage1(cfg, data=data, resume=resume)
        line = (f"stage 1 done: best val loss {result['best_val_loss']:.4f} (epoch {result['best_epoch']}), "
                f"checkpoint {result['best_checkpoint']}")
    elif stage == "2":
        from experiments.pretrain import pretrain_stage2

        result = pretrain_stage2(cfg, stage1_checkpoint=stage1_checkpoint, data=data, resume=resume)
        line = (f"stage 2 done: {result['epochs']} epochs, best val loss {result['best_val_loss']:.4f} (epoch "
                f"{result['best_epoch']}), checkpoint {result['best_checkpoint']}") if result else ""
    else:
        from experiments.pretrain import pretrain_both

        result = pretrain_both(cfg, data=data, resume=resume)
        line = (f"stage 2 done: {result['epochs']} epochs, best val loss {result['best_val_loss']:.4f} (epoch "
                f"{result['best_epoch']}), world model {result['best_checkpoint']}")
    if distributed.group().main:  # under torchrun, rank 0 alone prints
        click.echo(line)


@cli.command()
@click.option("--stage", type=click.Choice(["1", "2"]), required=True, help="Which stage to evaluate.")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="Checkpoint file (.pt).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Replay folder to evaluate on (default: the one the checkpoint was trained on).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON report path (default: next to the checkpoint).")
def evaluate(stage, checkpoint, data, out):
    """Evaluate a checkpoint: the seed's benchmark table with grades, success criteria and diagnostics.

    \b
    Example:
      python run.py evaluate --stage 1 --checkpoint runs/pretrain/20261129-103007-quick-s0/stage1/best.pt
      python run.py evaluate --stage 2 --checkpoint runs/pretrain/20261129-103007-quick-s0/stage2/best.pt
    """
    if stage == "2":
        from experiments.report_stage2 import evaluate_stage2
        from experiments.report_stage2 import format_report as format_report2

        click.echo(format_report2(evaluate_stage2(checkpoint, data=data, out=out)))
        return
    from experiments.report_stage1 import evaluate_stage1, format_report

    report = evaluate_stage1(checkpoint, data=data, out=out)
    click.echo(format_report(report))


@cli.command("train-agent")
@click.option("--world-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Stage-2 world-model checkpoint to imagine in (required unless --resume).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Replay folder whose frames seed imagination [default: the world model's training data].")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="train-agent run folder to continue from its agent.pt (its saved config is used).")
@config_options
def train_agent(world_model, data, resume, preset, config_file, overrides, seed, wandb_mode):
    """Train the actor-critic purely in imagination on a Stage-2 world model (DreamerV3-style).

    \b
    Example:
      python run.py train-agent --world-model runs/pretrain/<run>/stage2/best.pt --preset quick
      python run.py train-agent --resume runs/train-agent/<run>
    """
    from experiments.train_agent import format_summary
    from experiments.train_agent import train_agent as run_train_agent

    refuse_options_with_resume(resume)
    cfg = build_config(preset, config_file, overrides, seed, wandb_mode)
    if world_model is None and resume is None:
        raise click.UsageError("pass --world-model PATH (a Stage-2 checkpoint) or --resume RUN_DIR")
    click.echo(format_summary(run_train_agent(cfg, world_model, data=data, resume=resume)))


@cli.command()
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="learn run folder to continue (its saved config is used).")
@config_options
def learn(resume, preset, config_file, overrides, seed, wandb_mode):
    """Closed-loop model-based RL: the agent collects its own data within the env-step budget
    (baselines.agent_steps), the world model keeps learning from it, the agent keeps learning in imagination.

    \b
    Example:
      python run.py learn --preset atari100k --seed 0
      python run.py learn --resume runs/learn/<run>
    """
    from experiments.learn import format_summary
    from experiments.learn import learn as run_learn

    refuse_options_with_resume(resume)
    cfg = build_config(preset, config_file, overrides, seed, wandb_mode)
    click.echo(format_summary(run_learn(cfg, resume=resume)))


@cli.command("plan-in-env")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Stage-2 world-model checkpoint (--planner cem) [default: the one --agent was trained on].")
@click.option("--planner", "planner_name", cls=AgentOption, type=AgentName(acting_only=True), default="cem",
              show_default=True, help="Agent that plays")
@click.option("--agent", "agent_path", type=click.Path(path_type=Path), default=None,
              help="train-agent checkpoint (agent.pt): plays with --planner actor-critic; with cem its critic is the "
                   "terminal value (planner.use_value=true) and its actor the policy prior (planner.policy_samples).")
@click.option("--episodes", type=int, default=None, help="Full games to play (default evaluation.episodes).")
@click.option("--max-steps", type=int, default=None, help="Cap each game at this many agent steps (slow oracle).")
@click.option("--video", is_flag=True, help="Write video.gif of the first game with the predicted return drawn.")
@click.option("--no-random", is_flag=True, help="Do not also play the random policy on the same seeds.")
@config_options
def plan_in_env(checkpoint, planner_name, agent_path, episodes, max_steps, video, no_random, preset, config_file,
                overrides, seed, wandb_mode):
    """Play full Breakout games with a planner; returns beside random's, episodes.jsonl and summary.json.

    \b
    Example:
      python run.py plan-in-env --checkpoint runs/pretrain/<run>/stage2/best.pt --planner cem --episodes 5
      python run.py plan-in-env --planner oracle --episodes 1 --max-steps 500 --set planner.horizon=30
      python run.py plan-in-env --planner actor-critic --agent runs/train-agent/<run>/agent.pt
      python run.py plan-in-env --planner cem --agent runs/train-agent/<run>/agent.pt \\
        --set planner.use_value=true --set planner.policy_samples=16
    """
    from experiments.plan import format_plan_summary
    from experiments.plan import plan_in_env as run_plan

    cfg = build_config(preset, config_file, overrides, seed, wandb_mode)
    if agent_path is not None and checkpoint is not None and planner_name == "cem" and not cfg.planner.use_value \
            and cfg.planner.policy_samples == 0:
        click.echo("note: --agent is unused while planner.use_value=false and planner.policy_samples=0", err=True)
    summary = run_plan(cfg, planner_name, checkpoint, episodes=episodes, video=video, max_steps=max_steps,
                       compare_random=not no_random, agent=agent_path)
    click.echo(format_plan_summary(summary))


if __name__ == "__main__":
    cli()

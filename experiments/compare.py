"""`run.py compare-baselines`: every agent at one env-step budget, one evaluation protocol, one table.

The comparison folder (``--out``, default ``runs/compare-baselines/<preset>``) holds::

    compare.json              the config the comparison was started with (a rerun must match it)
    <agent>/s<seed>/          one run per agent and seed: config.yaml, metrics.jsonl (learning curve
                              as eval/* against env steps), result.json (final evaluation), model.zip
                              (SB3 agents) and an offline wandb run; all of them in one wandb group
    results.json, results.md  statistics per agent (experiments/results.py)
    dashboard.html, plots/    the episode-return dashboard (experiments/dashboard.py)

    world-models/s<seed>/     without --world-model / --agent-checkpoint: the seed's own world model
                              (collection, Stage 1 + 2, actor-critic: experiments/world_model_stack.py),
                              shared by the world-model agents (cem, cem-value, actor-critic) of that seed
    episodes.json             every finished pair's per-episode results (small JSON, no models): commit it,
                              and `--reference episodes.json` on another machine extends the same table

A pair whose ``result.json`` exists is finished and skipped on a rerun; an unfinished pair folder
(interrupted run) is started again from scratch. ``--reference FILE`` imports the finished pairs of an
``episodes.json`` made with the same settings, so only new agents or seeds are run. Each pair records the settings
that decide it (:func:`pair_settings`): a reference pair made with other ones is not imported, and a finished pair
of the folder made with other ones is refused, never reused as this comparison's.

Every agent is scored by :func:`experiments.play.evaluate` (full games, raw score,
evaluation seeds disjoint from training seeds, ``evaluation.episodes`` games per training seed).
Agents come from the one registry (:mod:`experiments.agents`): each entry builds (and, for the SB3
baselines, trains) an agent for one seed and reports the env steps it consumed; world-model agents
count the transitions of the replay data their world model was trained on (``--data``, else the
folder the world-model checkpoint records).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch

from envs.errors import UserError
from experiments import distributed
from experiments.agents import LEARN_AGENTS, REGISTRY, AgentInputs, AgentSpec, agent_names, check_needs, get_spec
from experiments.config import Config
from experiments.play import evaluate, summarize_returns
from experiments.runlog import (
    NullRun,
    RunLogger,
    platform_differences,
    platform_record,
    seed_everything,
    setup_torch,
    tqdm,
    write_json,
)
from experiments.world_model_stack import STACK_SECTIONS

RESULT_FILE = "result.json"
EPISODES_FILE = "episodes.json"


@dataclass
class CompareOptions:
    """What the command line passes besides the config."""

    world_model: Path | None = None  # Stage-2 checkpoint (default: the one agent_checkpoint was trained on)
    agent_checkpoint: Path | None = None  # train-agent checkpoint: actor-critic, critic value / prior for cem
    data: Path | None = None  # replay folder the world model was trained on (its env steps)
    pretrain_runs: list[Path] = field(default_factory=list)  # runs whose losses go on the dashboard
    references: list[Path] = field(default_factory=list)  # episodes.json files whose finished pairs are imported


# The flag that supplies each input an agent may need (experiments.agents.check_needs).
FLAGS = {"world_model": "--world-model", "agent_checkpoint": "--agent-checkpoint"}


def parse_agents(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` checked against the registry, duplicates dropped (order kept)."""
    if not names:
        raise UserError(f"--agents is empty; pass a comma-separated list from: {', '.join(agent_names())}")
    for name in names:
        get_spec(name)
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------- folders
def default_out(cfg: Config) -> Path:
    return Path(cfg.run.runs_dir) / "compare-baselines" / cfg.preset


# Config sections that decide a pair's result: finished pairs are reused only while these match. The world
# model's and the actor-critic's own settings live in their checkpoints, which the options name.
COMPARABLE_SECTIONS = ("environment", "evaluation", "baselines", "planner")


def _comparable(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: tree.get(k) for k in COMPARABLE_SECTIONS}


# The further sections that decide the result of an agent that trains a world model of its own: the per-seed stack
# of the world-model agents (without --world-model / --agent-checkpoint; the stack's own settings) and the closed loop.
LEARN_PAIR_SECTIONS = (*STACK_SECTIONS, "learn")


def pair_settings(cfg: Config, name: str, opts: CompareOptions) -> dict[str, Any]:
    """What decides one agent/seed pair's result besides its seed: the comparison's sections, then the agent's own
    (its world model's and actor-critic's sections when it trains them, else the checkpoints it was given)."""
    tree = cfg.to_dict()
    spec = REGISTRY[name]
    own: dict[str, Any] = {}
    if name in LEARN_AGENTS:
        own = {k: tree.get(k) for k in LEARN_PAIR_SECTIONS}
    elif spec.needs and opts.world_model is None and opts.agent_checkpoint is None:
        own = {k: tree.get(k) for k in STACK_SECTIONS}
    elif spec.needs:
        own = {"world_model": str(opts.world_model or ""), "agent_checkpoint": str(opts.agent_checkpoint or "")}
    return json.loads(json.dumps({**_comparable(tree), **own}))


def _first_difference(theirs: Any, ours: Any, path: str = "") -> str:
    """``key: theirs -> ours`` for the first setting that differs (dotted key)."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for k in [*theirs, *(k for k in ours if k not in theirs)]:
            if theirs.get(k) != ours.get(k):
                return _first_difference(theirs.get(k), ours.get(k), f"{path}.{k}" if path else k)
    return f"{path or 'settings'}: {theirs!r} there, {ours!r} here"


# Pairs written before result.json recorded its settings: what their hyperparams show of the agent's own sections.
LEGACY_HYPERPARAM_SECTIONS = ("learn", "agent")


def with_later_keys(theirs: Any, defaults: Any) -> Any:
    """``theirs`` (settings recorded by an older commit) with every key it lacks and ``defaults`` has filled in from
    ``defaults``: a key added later defaults to the behaviour before it existed, so an older pair was made with the
    key's default (recursive over nested sections; values that are not sections are kept as recorded)."""
    if not isinstance(theirs, dict) or not isinstance(defaults, dict):
        return theirs
    out = {k: with_later_keys(v, defaults.get(k)) for k, v in theirs.items()}
    out.update({k: v for k, v in defaults.items() if k not in theirs})
    return out


def pair_mismatch(res: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """Why a finished pair was made with other settings than ``settings`` (None when it was not, or when it does
    not record them: a pair from before settings were recorded is checked on what its hyperparams show). Keys added
    after the pair was made count at their code default (:func:`with_later_keys`): at the default the pair matches,
    set otherwise it does not."""
    if "settings" in res:
        defaults = Config().to_dict()  # the sections the pair recorded, each with its later keys at their default
        theirs = json.loads(json.dumps({k: with_later_keys(v, defaults.get(k)) for k, v in res["settings"].items()}))
        return None if theirs == settings else _first_difference(theirs, settings)
    hp = res.get("hyperparams") or {}
    for section in LEGACY_HYPERPARAM_SECTIONS:
        theirs, ours = hp.get(section), settings.get(section)
        if isinstance(theirs, dict) and isinstance(ours, dict):
            common = {k: theirs[k] for k in theirs if k in ours}
            if common != {k: ours[k] for k in common}:
                return _first_difference(common, {k: ours[k] for k in common}, section)
    return None


def _check_out(out: Path, cfg: Config) -> None:
    marker = out / "compare.json"
    mine = {"preset": cfg.preset, "config": _comparable(cfg.to_dict())}
    if marker.is_file():
        try:
            theirs = json.loads(marker.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{marker} is corrupted; delete it or pass a new --out folder") from None
        if _comparable(theirs.get("config") or {}) != mine["config"]:
            raise UserError(f"--out {out} holds a comparison made with a different config (preset "
                            f"{theirs.get('preset')!r}); pass a new --out folder or the same preset and --set options")
        return
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(mine, indent=1))


def export_episodes(out: Path, cfg: Config) -> Path:
    """``episodes.json``: the settings and every finished pair's result (per-episode returns, no models)."""
    pairs = [r for rs in load_pair_results(out).values() for r in rs]
    data = {"preset": cfg.preset, "config": _comparable(cfg.to_dict()), "pairs": pairs}
    return write_json(out / EPISODES_FILE, data)


def load_reference(cfg: Config, reference: Path) -> list[dict[str, Any]]:
    """The pairs of ``reference`` (an episodes.json), checked against this comparison's settings."""
    try:
        data = json.loads(Path(reference).read_text())
        pairs, config = data["pairs"], data["config"]
    except FileNotFoundError:
        raise UserError(f"--reference {reference} does not exist; pass an episodes.json from a comparison folder") \
            from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"--reference {reference} is not an episodes.json written by compare-baselines; pass one "
                        "from a comparison folder") from None
    if json.loads(json.dumps(_comparable(cfg.to_dict()))) != config:
        raise UserError(f"--reference {reference} was made with other settings (preset {data.get('preset')!r}); "
                        "pass the preset and --set options it was made with")
    return pairs


def import_reference(out: Path, reference: Path, pairs: list[dict[str, Any]], cfg: Config,
                     opts: CompareOptions) -> tuple[int, list[str], list[str]]:
    """Copy the ``pairs`` of ``reference`` that ``out`` lacks and that were made with this comparison's settings;
    returns how many, why each of the others was left out, and the imported pairs made on another platform (their
    numbers stand, but a rerun here would not repeat them bit for bit)."""
    added, skipped, elsewhere = 0, [], []
    here = platform_record()
    for res in pairs:
        folder = pair_dir(out, res["agent"], int(res["seed"]))
        if (folder / RESULT_FILE).is_file():
            continue
        why = pair_mismatch(res, pair_settings(cfg, res["agent"], opts)) if res["agent"] in REGISTRY else None
        if why is not None:
            skipped.append(f"{res['agent']} seed {res['seed']} ({why})")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / RESULT_FILE, {**res, "imported_from": str(reference)})
        added += 1
        diff = platform_differences(res.get("platform"), here)
        if diff:
            elsewhere.append(f"{res['agent']} seed {res['seed']} ({'; '.join(diff)})")
    return added, skipped, elsewhere


def check_finished_pairs(out: Path, pairs: list[tuple[str, int]], cfg: Config, opts: CompareOptions) -> None:
    """Refuse a comparison folder whose finished pairs (of this run's agents and seeds) were made with other
    settings: they would be reused as this comparison's."""
    for name, seed in pairs:
        path = pair_dir(out, name, seed) / RESULT_FILE
        if path.is_file():
            why = pair_mismatch(json.loads(path.read_text()), pair_settings(cfg, name, opts))
            if why is not None:
                raise UserError(f"--out {out} holds a finished '{name}' seed {seed} made with other settings ({why}); "
                                "pass a new --out folder or the settings it was made with")


def pair_dir(out: Path, agent: str, seed: int) -> Path:
    return out / agent / f"s{seed}"


def load_pair_results(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Finished pairs of a comparison folder: agent -> list of per-seed results (sorted by seed)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(out).glob(f"*/s*/{RESULT_FILE}")):
        res = json.loads(path.read_text())
        found.setdefault(res["agent"], []).append(res)
    for v in found.values():
        v.sort(key=lambda r: r["seed"])
    return found


# --------------------------------------------------------------------------------------- one pair
def run_pair(spec: AgentSpec, cfg: Config, inputs: AgentInputs, seed: int, out: Path, group: str,
             progress: bool = True, extra: dict[str, Any] | None = None,
             settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build/train one agent for one seed, evaluate it, write ``result.json``.

    ``inputs`` are the comparison's (device, world model, agent checkpoint, data); the pair adds its
    learning-curve callbacks. ``extra`` is recorded in the result (the seed's world-model stack), and ``settings``
    (:func:`pair_settings`) decide whether a rerun or another comparison may reuse it.
    """
    folder = pair_dir(out, spec.name, seed)
    main = distributed.group().main
    if folder.exists() and main:  # an interrupted pair: start it again
        shutil.rmtree(folder)
    distributed.barrier()
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))
    seed_everything(seed)
    t0 = time.perf_counter()
    run_cm = (RunLogger(cfg, "compare-baselines", run_dir=folder, group=group, name=f"{spec.name}-s{seed}") if main
              else NullRun(folder))  # under torchrun the other ranks only play their share of the games
    with run_cm as run:
        budget = cfg.baselines.agent_steps
        bars: list[tqdm] = []  # made on the first training step: agents that do not train show no bar

        def on_progress(steps: int) -> None:
            if not bars:
                bars.append(tqdm(total=budget, desc=f"{spec.name} s{seed} train", unit="step", disable=not progress,
                                 leave=False))
            bars[0].update(steps - bars[0].n)

        def on_point(p: dict[str, Any]) -> None:
            run.log({"eval/return_mean": p["mean"], "eval/return_median": p["median"], "eval/return_std": p["std"],
                     "eval/episodes": p["episodes"], "eval/env_steps": p["env_steps"]}, step=p["env_steps"])
            if bars:
                bars[0].set_postfix(eval_return=f"{p['mean']:.1f}")

        built = spec.build(cfg, dataclasses.replace(inputs, on_point=on_point, on_progress=on_progress), seed)
        for bar in bars:
            bar.close()
        build_seconds = time.perf_counter() - t0
        if built.model is not None and main:
            built.model.save(folder / "model.zip")
        t1 = time.perf_counter()
        episodes = evaluate(built.agent, cfg, desc=f"{spec.name} s{seed} eval", progress=progress)
        eval_seconds = time.perf_counter() - t1
        final = summarize_returns(episodes)
        env_steps = int(built.env_steps)
        curve = list(built.curve)
        curve.append({"env_steps": env_steps, "returns": [e["return"] for e in episodes], **final, "final": True})
        run.log({"eval/return_mean": final["mean"], "eval/return_median": final["median"],
                 "eval/return_std": final["std"], "eval/episodes": final["episodes"], "eval/env_steps": env_steps,
                 "final/return_mean": final["mean"], "perf/build_seconds": build_seconds,
                 "perf/eval_seconds": eval_seconds}, step=env_steps)
        result = {
            "agent": spec.name, "seed": seed, "preset": cfg.preset, "returns": [e["return"] for e in episodes],
            "episodes": episodes, "final": final, "env_steps": env_steps, "budget": budget,
            "wall_clock_s": (time.perf_counter() - t0 if built.build_wall_clock_s is None
                             else built.build_wall_clock_s + eval_seconds),
            "build_seconds": build_seconds,
            "train_seconds": built.train_seconds, "eval_seconds": eval_seconds,
            "hyperparams": ({k: v for k, v in built.hyperparams.items() if k != "wall_clock_excludes"}
                            if (extra or {}).get("world_model_per_seed") else built.hyperparams), "curve": curve,
            "eval_seeds": [e["seed"] for e in episodes], "evaluation_block": cfg.evaluation.block,
            # where it was made, as its folder's provenance.json recorded it at the start (the commit that trained
            # it, not one checked out meanwhile): a rerun elsewhere differs bit-wise
            "platform": run.platform,
            **({"settings": settings} if settings is not None else {}), **(extra or {}),
        }
        if main:
            run.write_json(RESULT_FILE + ".partial", result)
            os.replace(folder / (RESULT_FILE + ".partial"), folder / RESULT_FILE)  # the pair is finished only now
    return result


# --------------------------------------------------------------------------------------- comparison
def compare_baselines(cfg: Config, agents: list[str], seeds: int, out: Path | None = None,
                      opts: CompareOptions | None = None, progress: bool = True,
                      dashboard: bool = True, only_finished: bool = False) -> dict[str, Any]:
    """Run (or finish) every agent x seed pair, then write results and the dashboard.

    ``only_finished``: run nothing; write the table and the dashboard of the pairs already finished."""
    opts = opts or CompareOptions()
    agents = parse_agents(agents)
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    torch.set_num_threads(cfg.run.threads or 1)
    device = setup_torch(cfg)
    grp = distributed.setup(device)
    progress = progress and grp.main  # under torchrun rank 0 alone prints and writes
    inputs = AgentInputs(device, world_model=opts.world_model, agent_checkpoint=opts.agent_checkpoint,
                         data=opts.data, count_env_steps=True)
    # Without a world model or agent checkpoint on the command line, every seed trains its own stack.
    per_seed = opts.world_model is None and opts.agent_checkpoint is None
    if not per_seed:
        for name in agents:
            check_needs(REGISTRY[name], inputs, f"agent '{name}'", FLAGS, tail=f", or drop '{name}' from --agents")
    if grp.active:
        for name in agents:
            if REGISTRY[name].trains_in_env or (per_seed and REGISTRY[name].needs):
                raise UserError(f"under torchrun compare-baselines splits evaluation games over the processes but "
                                f"trains nothing, and '{name}' trains (in the env, or a world model per seed); run it "
                                "with plain `python run.py compare-baselines` (or pass --world-model)")
    out = Path(out) if out is not None else default_out(cfg)
    references = {ref: load_reference(cfg, ref) for ref in opts.references}  # checked before anything is written

    def prepare() -> list[tuple[str, int]]:
        _check_out(out, cfg)
        check_finished_pairs(out, pairs, cfg, opts)
        for ref, ref_pairs in references.items():
            added, skipped, elsewhere = import_reference(out, ref, ref_pairs, cfg, opts)
            if progress:
                click.echo(f"imported {added} finished agent/seed pairs from {ref}")
                if skipped:
                    click.echo(f"not imported (made with other settings): {'; '.join(skipped)}")
                if elsewhere:
                    click.echo("note: imported pairs made on another platform, or without a record of theirs (a "
                               "rerun here may give other numbers; README, Reproducibility): "
                               f"{'; '.join(elsewhere[:3])}"
                               + (f" and {len(elsewhere) - 3} more" if len(elsewhere) > 3 else ""))
        return [(a, s) for a, s in pairs if not (pair_dir(out, a, s) / RESULT_FILE).is_file()]

    group = f"compare-{cfg.preset}-{out.resolve().name}"
    seed_list = [cfg.run.seed + k for k in range(seeds)]
    pairs = [(a, s) for a in agents for s in seed_list]
    todo = distributed.on_main(prepare)
    if progress:
        click.echo(f"comparison folder {out}: {len(pairs)} agent/seed pairs, {len(pairs) - len(todo)} already "
                   f"finished, {len(todo)} to run (budget {cfg.baselines.agent_steps:,} agent steps)")
    if only_finished:
        if progress and todo:
            click.echo("--only-finished: not running " + ", ".join(f"{a} seed {s}" for a, s in todo))
        todo = []
    for i, (name, seed) in enumerate(todo, 1):
        if progress:
            click.echo(f"[{i}/{len(todo)}] {name} seed {seed}")
        spec, extra = REGISTRY[name], None
        pair_inputs = dataclasses.replace(inputs, work_dir=out / "learn-runs" / f"s{seed}")
        if per_seed and spec.needs:
            from experiments.world_model_stack import world_model_stack

            stack = world_model_stack(cfg, seed, out, progress=progress)
            pair_inputs = dataclasses.replace(pair_inputs, world_model=Path(stack["world_model"]),
                                              agent_checkpoint=Path(stack["agent_checkpoint"]),
                                              data=Path(stack["data"]))
            extra = {"world_model_per_seed": True, "stack_wall_clock_s": stack["wall_clock_s_total"],
                     "world_model_stack": {k: v for k, v in stack.items() if k != "settings"}}
        elif spec.needs:
            extra = {"world_model_per_seed": False}
        res = run_pair(spec, cfg, pair_inputs, seed, out, group, progress=progress, extra=extra,
                       settings=pair_settings(cfg, name, opts))
        if progress:
            click.echo(f"      {name} seed {seed}: return {res['final']['mean']:.2f} over {res['final']['episodes']} "
                       f"games, {res['env_steps']:,} env steps, {res['wall_clock_s']:.0f} s")
        if res["env_steps"] > cfg.baselines.agent_steps and grp.main:
            click.echo(f"      note: {name} used {res['env_steps']:,} env steps, more than the budget "
                       f"baselines.agent_steps={cfg.baselines.agent_steps:,}", err=True)
    if opts.world_model is not None:  # the world model's own run: its losses go on the dashboard
        run_dir = next((d for d in list(Path(opts.world_model).parents)[:3] if (d / "metrics.jsonl").is_file()), None)
        if run_dir is not None and run_dir not in opts.pretrain_runs:
            opts = dataclasses.replace(opts, pretrain_runs=[*opts.pretrain_runs, run_dir])
    for seed in seed_list:  # the per-seed world models' own runs: their losses go on the dashboard too
        for run_dir in sorted(p.parent for p in (out / "world-models" / f"s{seed}").glob("pretrain/*/metrics.jsonl")):
            if run_dir not in opts.pretrain_runs:
                opts = dataclasses.replace(opts, pretrain_runs=[*opts.pretrain_runs, run_dir])
    return distributed.on_main(lambda: finish(out, agents, seed_list, cfg, opts, dashboard=dashboard))


def finish(out: Path, agents: list[str], seed_list: list[int], cfg: Config, opts: CompareOptions,
           dashboard: bool = True) -> dict[str, Any]:
    from experiments.results import summarize_agent, write_results

    found = load_pair_results(out)
    summaries = []
    # The requested agents first, then every other agent the folder holds (imported or run earlier).
    for name in [*agents, *sorted(set(found) - set(agents))]:
        per_seed = [r for r in found.get(name, []) if r["seed"] in seed_list]
        if per_seed:
            summaries.append(summarize_agent(name, per_seed))
    meta = {"preset": cfg.preset, "budget_agent_steps": cfg.baselines.agent_steps,
            "episodes_per_seed": cfg.evaluation.episodes, "seeds": seed_list, "agents": agents,
            "command": "python run.py " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("run.py") else None,
            "environment": dataclasses.asdict(cfg.environment), "evaluation": dataclasses.asdict(cfg.evaluation),
            "baselines": dataclasses.asdict(cfg.baselines)}
    stacks = {}
    for rs in found.values():
        for r in rs:
            if r["seed"] in seed_list and "stack_wall_clock_s" in r:
                stacks[r["seed"]] = r["stack_wall_clock_s"]
    meta["wall_clock_s_whole_run"] = float(sum(r["wall_clock_s"] for rs in found.values() for r in rs
                                               if r["seed"] in seed_list) + sum(stacks.values()))
    paths = write_results(out, summaries, meta)
    export_episodes(out, cfg)
    report: dict[str, Any] = {"out": str(out), "summaries": summaries, "results_md": str(paths["md"]),
                              "results_json": str(paths["json"])}
    if dashboard:
        from experiments.dashboard import build_dashboard

        report["dashboard"] = str(build_dashboard([out, *opts.pretrain_runs], out / "dashboard.html"))
    return report

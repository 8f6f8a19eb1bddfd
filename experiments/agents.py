"""The one registry of agents: every name that `plan-in-env --planner`, `collect --policy` and
`compare-baselines --agents` accept, and how each is built.

An entry is an :class:`AgentSpec`: a ``build(cfg, inputs, seed) -> BuiltAgent`` function, the inputs it
needs from the command line, a description and whether it learns from env steps (the SB3 baselines train
inside compare-baselines; every other agent acts as it is). A build returns a :class:`BuiltAgent`: the
agent behind the evaluation interface (``reset(env=None)``, ``act(obs) -> int``) and the env steps it
consumed.

Adding an agent touches two files: its own module (``planners/mine.py`` with ``reset`` and ``act``) and
this one (a build function plus a :data:`REGISTRY` entry); the command-line choices are read from here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs.errors import UserError
from experiments.config import Config

if TYPE_CHECKING:
    import torch

    from agent.player import ActorCriticAgent
    from planners.base import Agent
    from planners.cem import PolicyFn, ValueFn
    from worldmodel.protocol import LatentWorldModel

WM_WALL_CLOCK_NOTE = "world-model pretraining and agent training (see their own runs); only evaluation is timed here"


@dataclass
class AgentInputs:
    """What a build may use besides the config: the command's device and the paths it was given."""

    device: torch.device | str = "cpu"  # from experiments.runlog.setup_torch, once per command
    world_model: Path | None = None  # Stage-2 checkpoint (default: the one the agent checkpoint was trained on)
    agent_checkpoint: Path | None = None  # train-agent checkpoint: actor-critic, or critic value / prior for cem
    data: Path | None = None  # replay folder behind the world model (default: the one its checkpoint records)
    model: LatentWorldModel | None = None  # an already loaded world model; replaces loading ``world_model``
    count_env_steps: bool = False  # count the world model's replay transitions (compare-baselines)
    on_point: Callable[[dict[str, Any]], None] | None = None  # learning-curve point of an agent in training
    on_progress: Callable[[int], None] | None = None  # env steps trained so far
    work_dir: Path | None = None  # where an agent that trains keeps its resumable run (compare-baselines: per seed)


@dataclass
class BuiltAgent:
    """One built agent, ready to be evaluated."""

    agent: Agent  # evaluation interface: reset(env=None), act(obs) -> int
    env_steps: int | None  # env steps it consumed (training, or its world model's data); None when not counted
    hyperparams: dict[str, Any]  # what compare-baselines records about it
    curve: list[dict[str, Any]] = field(default_factory=list)  # learning-curve points (agents that train)
    model: Any = None  # an SB3 model, saved as model.zip by compare-baselines
    train_seconds: float = 0.0  # wall-clock of training, without learning-curve evaluations
    # Wall-clock of the build over every call that worked on it (a `learn` run resumed after a kill spans several),
    # without work another pair is charged with; None = this call's build time.
    build_wall_clock_s: float | None = None


@dataclass(frozen=True)
class AgentSpec:
    """One registry entry."""

    name: str
    build: Callable[[Config, AgentInputs, int], BuiltAgent]  # (cfg, inputs, seed) -> BuiltAgent
    description: str  # one line for --help
    needs: tuple[str, ...] = ()  # inputs it cannot do without: "world_model", "agent_checkpoint"
    trains_in_env: bool = False  # learns from env steps (only compare-baselines runs it, within its budget)


# What each need means and how a user supplies it (the flag differs per command).
NEED_TEXT = {"world_model": ("a world model", "PATH to a stage-2 checkpoint"),
             "agent_checkpoint": ("a trained actor-critic", "PATH (an agent.pt written by `run.py train-agent`)")}


def _satisfied(need: str, inputs: AgentInputs) -> bool:
    if need == "world_model":  # an agent checkpoint records the world model it was trained on
        return inputs.model is not None or inputs.world_model is not None or inputs.agent_checkpoint is not None
    return getattr(inputs, need) is not None


def check_needs(spec: AgentSpec, inputs: AgentInputs, subject: str, flags: Mapping[str, str], tail: str = "") -> None:
    """Raise a one-sentence UserError when ``inputs`` lack something ``spec`` needs.

    Args:
        spec: the agent.
        inputs: what the command was given.
        subject: how the command names the agent, e.g. ``"--planner cem"``.
        flags: the command's flag for each need, e.g. ``{"world_model": "--checkpoint"}``.
        tail: appended to the sentence, e.g. ``", or drop 'cem' from --agents"``.
    """
    for need in spec.needs:
        if not _satisfied(need, inputs):
            what, fix = NEED_TEXT[need]
            raise UserError(f"{subject} needs {what}: pass {flags[need]} {fix}{tail}")


def agent_names(acting_only: bool = False) -> list[str]:
    """Registered names in registry order; ``acting_only``: those that act without env-step training."""
    return [name for name, spec in REGISTRY.items() if not (acting_only and spec.trains_in_env)]


def get_spec(name: str, acting_only: bool = False, what: str = "agent") -> AgentSpec:
    """The entry called ``name``; a UserError listing the accepted names otherwise (``what``: how to call it)."""
    names = agent_names(acting_only)
    if name not in names:
        raise UserError(f"unknown {what} '{name}'; accepted: {', '.join(names)}")
    return REGISTRY[name]


def build_agent(name: str, cfg: Config, inputs: AgentInputs | None = None, seed: int | None = None) -> BuiltAgent:
    """Build the agent called ``name`` for ``seed`` (default ``run.seed``); commands call :func:`check_needs` first."""
    return get_spec(name).build(cfg, inputs or AgentInputs(), cfg.run.seed if seed is None else seed)


# --------------------------------------------------------------------------------------- world model + actor-critic
@dataclass
class WorldModelParts:
    """A world model and, when an agent checkpoint was given, the actor-critic trained on it."""

    model: LatentWorldModel  # encode / imagine
    path: Path | None  # its checkpoint (None when it was handed over loaded, without a path)
    actor_critic: ActorCriticAgent | None = None  # plays from observations with the agent checkpoint's actor
    value_fn: ValueFn | None = None  # its critic: CEM's terminal value (planner.use_value)
    policy_fn: PolicyFn | None = None  # its actor rolled out in the model: CEM's policy prior (planner.policy_samples)


def check_frames(model: Any, env: Any, path: str | Path | None) -> None:
    """A one-sentence UserError when ``model`` was trained on frames of another shape than the environment
    config ``env`` makes (``frame_stack_size`` x ``image_height`` x ``image_width``): it names the settings to pass."""
    shape = getattr(model, "frame_shape", None)
    theirs = (int(env.frame_stack_size), int(env.image_height), int(env.image_width))
    if shape is None or tuple(shape) == theirs:
        return
    f, h, w = shape
    raise UserError(f"world model {path or ''} was trained on {f}x{h}x{w} frames but the environment makes "
                    f"{'x'.join(map(str, theirs))}; pass --set environment.image_height={h} --set "
                    f"environment.image_width={w} --set environment.frame_stack_size={f} as when it was trained")


def load_world_model_parts(inputs: AgentInputs, seed: int, env: Any = None) -> WorldModelParts:
    """The one place where a world model and an actor-critic are wired together.

    The world model is ``inputs.model``, else loaded from ``inputs.world_model``, else from the path the
    agent checkpoint records (the world model it was trained on). With ``inputs.agent_checkpoint``: its
    actor-critic over that model (sampling seeded with ``seed``), its critic as ``value_fn`` and its
    actor as a seeded ``policy_fn``. With ``env`` (an environment config) the model's frames must be the ones
    it makes (:func:`check_frames`).
    """
    import torch

    path = None if inputs.world_model is None else Path(inputs.world_model)
    ckpt = None
    if inputs.agent_checkpoint is not None:
        from agent.player import load_agent_checkpoint, recorded_world_model

        ckpt = load_agent_checkpoint(inputs.agent_checkpoint)
        path = path or recorded_world_model(ckpt, inputs.agent_checkpoint)
    model = inputs.model
    if model is None:
        if path is None:
            raise ValueError("no world model to load: check_needs(spec, inputs, ...) before building")
        from worldmodel import load_world_model

        model = load_world_model(path, device=inputs.device)
    if env is not None:
        check_frames(model, env, path)
    if ckpt is None:
        return WorldModelParts(model, path)
    from agent.actor_critic import policy_prior
    from agent.player import ActorCriticAgent, build_agent_nets

    actor, critic = build_agent_nets(ckpt, getattr(model, "device", inputs.device), inputs.agent_checkpoint)
    ac = ActorCriticAgent(model, actor, critic, seed=seed)
    prior = policy_prior(ac.actor, model, torch.Generator().manual_seed(seed))
    return WorldModelParts(model, path, ac, ac.critic, prior)


def data_env_steps(data: str | Path | None, world_model: str | Path | None) -> tuple[int, Path]:
    """Transitions of the replay data behind a world model: the env steps a world-model agent consumed.

    ``data`` if given, else the folder the ``world_model`` checkpoint records
    (:func:`experiments.data.world_model_data_dir`, a one-sentence UserError when it records none).
    """
    from envs.replay import read_manifest
    from experiments.data import world_model_data_dir

    if data is None:
        if world_model is None:
            raise ValueError("data_env_steps needs the replay folder or the world-model checkpoint")
        data = world_model_data_dir(world_model)
    manifest = read_manifest(data)
    return int(sum(int(e["length"]) for e in manifest["episodes"])), Path(data)


def _world_model_hyperparams(inputs: AgentInputs, parts: WorldModelParts) -> tuple[int | None, dict[str, Any]]:
    """Env steps (when counted) and what every world-model agent records about its sources."""
    hp: dict[str, Any] = {"world_model": str(parts.path), "wall_clock_excludes": WM_WALL_CLOCK_NOTE}
    if not inputs.count_env_steps:
        return None, hp
    steps, data = data_env_steps(inputs.data, parts.path)
    return steps, {**hp, "data": str(data)}


# --------------------------------------------------------------------------------------- builders
def _build_random(cfg: Config, inputs: AgentInputs, seed: int) -> BuiltAgent:
    from planners.reference import RandomPolicy

    return BuiltAgent(RandomPolicy(seed=seed), 0, {"policy": "uniform random"})


def _build_tracker(cfg: Config, inputs: AgentInputs, seed: int) -> BuiltAgent:
    from planners.reference import TrackerPolicy

    return BuiltAgent(TrackerPolicy(seed=seed), 0,
                      {"policy": "RAM ball tracker (reads the emulator; a reference, not a learner)"})


def _build_oracle(cfg: Config, inputs: AgentInputs, seed: int) -> BuiltAgent:
    from planners.oracle import OraclePlanner

    agent = OraclePlanner(cfg.planner, cfg.environment.frame_skip, cfg.environment.fire_on_life_loss, seed=seed)
    return BuiltAgent(agent, 0, {"planner": dataclasses.asdict(cfg.planner),
                                 "model": "emulator (reference, not a learner)"})


def _build_cem(cfg: Config, inputs: AgentInputs, seed: int) -> BuiltAgent:
    from planners.cem import CEMPlanner

    parts = load_world_model_parts(inputs, seed, cfg.environment)
    steps, hp = _world_model_hyperparams(inputs, parts)
    agent = CEMPlanner(parts.model, cfg.planner, value_fn=parts.value_fn, policy_fn=parts.policy_fn, seed=seed)
    return BuiltAgent(agent, steps, {"planner": dataclasses.asdict(cfg.planner), **hp,
                                     "agent_checkpoint": str(inputs.agent_checkpoint or "")})


# CEM with the actor-critic's critic as terminal value and 16 of 32 candidates from its actor: the
# README's best world-model agent on the quick preset (9.00 vs 2.40 on tuning games 10000-10004).
CEM_VALUE_PLANNER = {"use_value": True, "policy_samples": 16, "samples": 32}


def _build_cem_value(cfg: Config, inputs: AgentInputs, seed: int) -> BuiltAgent:
    planner = dataclasses.replace(cfg.planner, **CEM_VALUE_PLANNER)
    planner.validate("planner")
    return _build_cem(dataclasses.replace(cfg, planner=planner), inputs, seed)


def _build_actor_critic(cfg: Config, inputs: AgentInputs, seed: int) -> BuiltAgent:
    parts = load_world_model_parts(inputs, seed, cfg.environment)
    assert parts.actor_critic is not None, "actor-critic needs inputs.agent_checkpoint (see check_needs)"
    parts.actor_critic.deterministic = cfg.agent.greedy_eval
    parts.actor_critic.temperature = cfg.agent.eval_temperature
    steps, hp = _world_model_hyperparams(inputs, parts)
    return BuiltAgent(parts.actor_critic, steps, {"agent": dataclasses.asdict(cfg.agent), **hp,
                                                  "agent_checkpoint": str(inputs.agent_checkpoint),
                                                  "policy": cfg.agent.eval_policy_label})


def _build_sb3(algo: str, pipeline: str = "project") -> Callable[[Config, AgentInputs, int], BuiltAgent]:
    def build(cfg: Config, inputs: AgentInputs, seed: int) -> BuiltAgent:
        from experiments.baselines import train_sb3

        return train_sb3(algo, cfg, seed=seed, device=inputs.device, on_point=inputs.on_point,
                         on_progress=inputs.on_progress, pipeline=pipeline)

    return build


def learn_run(cfg: Config, inputs: AgentInputs, seed: int) -> dict[str, Any]:
    """The summary of the `run.py learn` run of ``seed`` in ``inputs.work_dir`` (run now, resumed when a kill
    stopped it, reused when finished: `learn` and `learn-cem-value` of one seed share it)."""
    import yaml

    from experiments.config import config_from_dict
    from experiments.learn import learn

    if inputs.work_dir is None:
        raise ValueError("the learn agents need inputs.work_dir (compare-baselines sets it per seed)")
    root = Path(inputs.work_dir)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed, runs_dir=str(root)))
    runs = sorted(p.parent for p in (root / "learn").glob("*/config.yaml")) if (root / "learn").is_dir() else []
    if runs:
        theirs = config_from_dict(yaml.safe_load((runs[-1] / "config.yaml").read_text())).to_dict()
        ours = cfg.to_dict()
        if {k: v for k, v in theirs.items() if k != "run"} != {k: v for k, v in ours.items() if k != "run"}:
            raise UserError(f"the learn run of seed {seed} in {runs[-1]} was started with other settings than this "
                            "comparison's; pass a new --out folder or the settings it was started with")
        if (runs[-1] / "summary.json").is_file():
            import json

            return json.loads((runs[-1] / "summary.json").read_text())
    return learn(cfg, resume=runs[-1] if runs else None, progress=False)


def _learn_hyperparams(cfg: Config, s: dict[str, Any]) -> dict[str, Any]:
    return {"learn": dataclasses.asdict(cfg.learn), "agent": dataclasses.asdict(cfg.agent),
            "stage2": dataclasses.asdict(cfg.vjepa2_world_model.stage2), "learn_run": s["run_dir"],
            "world_model": s["world_model"], "agent_checkpoint": s["agent"], "learn_timings_s": s["timings_s"],
            "reward_head": s["heads"]}


def _build_learn(cfg: Config, inputs: AgentInputs, seed: int) -> BuiltAgent:
    s = learn_run(cfg, inputs, seed)
    parts = load_world_model_parts(dataclasses.replace(inputs, world_model=Path(s["world_model"]),
                                                       agent_checkpoint=Path(s["agent"]), model=None), seed,
                                    cfg.environment)
    parts.actor_critic.deterministic = cfg.agent.greedy_eval
    parts.actor_critic.temperature = cfg.agent.eval_temperature
    curve = [{k: v for k, v in p.items() if k != "eval_seeds"} for p in s["curve"][:-1]]
    for p in curve:
        if inputs.on_point is not None:
            inputs.on_point(p)
    return BuiltAgent(parts.actor_critic, int(s["env_steps"]),
                      {**_learn_hyperparams(cfg, s), "policy": cfg.agent.eval_policy_label},
                      curve=curve, train_seconds=float(s["wall_clock_s"]),
                      build_wall_clock_s=float(s["wall_clock_s"]))  # the learn run's every call


def _build_learn_cem_value(cfg: Config, inputs: AgentInputs, seed: int) -> BuiltAgent:
    s = learn_run(cfg, inputs, seed)
    t1 = time.perf_counter()  # the learn run is the `learn` pair's wall-clock, not this one's
    planner = dataclasses.replace(cfg.planner, **CEM_VALUE_PLANNER)
    parts = dataclasses.replace(inputs, world_model=Path(s["world_model"]), agent_checkpoint=Path(s["agent"]),
                                model=None, count_env_steps=False)
    built = _build_cem(dataclasses.replace(cfg, planner=planner), parts, seed)
    return BuiltAgent(built.agent, int(s["env_steps"]), {**_learn_hyperparams(cfg, s), **built.hyperparams},
                      train_seconds=float(s["wall_clock_s"]), build_wall_clock_s=time.perf_counter() - t1)


# The agents that run the closed loop (`run.py learn`) for their seed: its settings decide their results.
LEARN_AGENTS = ("learn", "learn-cem-value")

REGISTRY: dict[str, AgentSpec] = {spec.name: spec for spec in (
    AgentSpec("ppo", _build_sb3("ppo"), "SB3 PPO, RL-Zoo Atari settings, the project's 64x64 pipeline",
              trains_in_env=True),
    AgentSpec("dqn", _build_sb3("dqn"), "SB3 DQN, RL-Zoo Atari settings, the project's 64x64 pipeline",
              trains_in_env=True),
    AgentSpec("a2c", _build_sb3("a2c"), "SB3 A2C, RL-Zoo Atari settings", trains_in_env=True),
    AgentSpec("dqn-sb3", _build_sb3("dqn", "sb3-atari"), "SB3 DQN on SB3's own Atari stack (AtariWrapper, 84x84)",
              trains_in_env=True),
    AgentSpec("ppo-sb3", _build_sb3("ppo", "sb3-atari"), "SB3 PPO on SB3's own Atari stack (AtariWrapper, 84x84)",
              trains_in_env=True),
    AgentSpec("random", _build_random, "uniformly random actions"),
    AgentSpec("tracker", _build_tracker, "RAM ball tracker (a reference that reads the emulator)"),
    AgentSpec("oracle", _build_oracle, "the CEM over the emulator itself (a ceiling; slow)"),
    AgentSpec("cem", _build_cem, "CEM planning in the world model", needs=("world_model",)),
    AgentSpec("cem-value", _build_cem_value, "CEM in the world model with the actor-critic's critic as terminal "
              "value and 16 of 32 candidates from its actor", needs=("agent_checkpoint",)),
    AgentSpec("actor-critic", _build_actor_critic, "the actor-critic trained in imagination by train-agent",
              needs=("agent_checkpoint",)),
    AgentSpec("learn", _build_learn, "the closed loop's actor-critic (run.py learn)", trains_in_env=True),
    AgentSpec("learn-cem-value", _build_learn_cem_value, "cem-value over the closed loop's final world model",
              trains_in_env=True),
)}

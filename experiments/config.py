"""The experiment config: the components' typed configs composed into one tree, stacked presets, dotted overrides.

Each component owns its dataclass beside its code (``envs.breakout.EnvironmentConfig``,
``worldmodel.encoder.EncoderConfig``, ``planners.cem.PlannerConfig``, ``agent.actor_critic.AgentConfig``, ...);
they are the only place a default is written. :class:`Config` composes them under the seed's keys
(``environment.*``, ``models.*``, ``vjepa2_world_model.*``) and this project's sections.

``load_config(preset="quick", overrides=["vjepa2_world_model.stage1.masking_ratio=0.5"])`` starts from the
dataclass defaults, stacks ``configs/<preset>.yaml`` on top, applies the overrides and returns a validated
:class:`Config`. Every error a user can cause (unknown key, wrong type, value out of range, missing file,
unknown preset) raises :class:`envs.errors.UserError` with one sentence naming the full key path and what
is accepted.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agent.actor_critic import AgentConfig
from envs.breakout import EnvironmentConfig
from envs.errors import UserError, check_range
from envs.seeds import MAX_RUN_SEED
from planners.cem import PlannerConfig
from worldmodel.dynamics_loss import Stage2Config
from worldmodel.encoder import EncoderConfig, EncoderParams, VitConfig
from worldmodel.masked_prediction import PredictorConfig, Stage1Config
from worldmodel.transformer import WorldModelNetConfig

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = ("tiny", "quick", "full", "atari100k")

__all__ = [
    "PRESETS", "AgentConfig", "BaselinesConfig", "Config", "DataConfig", "EncoderConfig", "EncoderParams",
    "EnvironmentConfig", "EvalConfig", "LearnConfig", "ModelsConfig", "PlannerConfig", "PredictorConfig", "RunConfig",
    "Stage1Config", "Stage2Config", "VitConfig", "Vjepa2Config", "WorldModelNetConfig", "config_from_dict",
    "load_config", "save_config", "validate",
]


# --------------------------------------------------------------------------------------- composition
@dataclass
class ModelsConfig:
    shared_latent_dim: int = 64  # D: size of the encoder output z
    shared_patch_size: int = 8  # ViT patch size (64x64 input -> 8x8 = 64 patches)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    world_model: WorldModelNetConfig = field(default_factory=WorldModelNetConfig)


@dataclass
class Vjepa2Config:
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)


@dataclass
class DataConfig:
    collect_steps: int = 100_000  # agent steps collected when pretrain gets no --data
    val_fraction: float = 0.1  # share of episodes held out for validation (episode-level split)
    policy: Literal["random", "tracker"] = "random"  # behaviour policy of `pretrain`'s collection
    # Environments played at once by `collect` and `pretrain`'s collection: K > 1 runs K collector processes, each
    # with its own env, game-seed stream and share of the steps, merged in a fixed order (experiments/collect.py).
    num_envs: int = 1

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``."""
        check_range(self.collect_steps >= 1, f"{path}.collect_steps", self.collect_steps, "an integer >= 1")
        check_range(1 <= self.num_envs <= 64, f"{path}.num_envs", self.num_envs, "an integer in [1, 64]")
        check_range(0.0 < self.val_fraction < 1.0, f"{path}.val_fraction", self.val_fraction, "a fraction in (0, 1)")


@dataclass
class EvalConfig:
    episodes: int = 5  # full-game episodes per (agent, seed)
    # Evaluation games come from a block of seeds that training never reaches (envs/seeds.py): "tuning"
    # (10000+) is where settings are chosen, "heldout" (20000+) is for final tables only.
    block: Literal["tuning", "heldout"] = "tuning"

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``."""
        check_range(self.episodes >= 1, f"{path}.episodes", self.episodes, "an integer >= 1")


@dataclass
class BaselinesConfig:
    agent_steps: int = 100_000  # env-step budget shared by every agent (agent steps, frame skip 4)
    eval_every: int = 25_000  # learning-curve evaluation period in agent steps
    eval_episodes: int = 3  # episodes per learning-curve point

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``."""
        check_range(self.agent_steps >= 1, f"{path}.agent_steps", self.agent_steps, "an integer >= 1")
        check_range(self.eval_every >= 0, f"{path}.eval_every", self.eval_every,
                    "an integer >= 0 (0 = no learning-curve points, only the final games)")
        check_range(self.eval_episodes >= 1, f"{path}.eval_episodes", self.eval_episodes, "an integer >= 1")


@dataclass
class LearnConfig:
    """`run.py learn`, the closed loop (experiments/learn.py). Its env-step budget is ``baselines.agent_steps``, the
    budget every agent of a comparison gets; prefill and collection steps count, evaluation games do not."""

    prefill_steps: int = 5000  # random-play steps before the first world model
    prefill_min_rewards: int = 20  # ... and until the replay holds this many scoring steps
    prefill_max_steps: int = 20000  # ... but never more than this many steps
    # Optimizer steps of the prefill's Stage 1 and Stage 2 (rounded up to whole epochs; 0 = the stage's num_epochs):
    # one quick-preset Stage-1 epoch over a 5k-step prefill is 135 steps, after which a linear probe of the
    # ball's position scored R2 0.02 (x) and 0.15 (y), against 0.74 / 0.69 for 850 steps over 30k random frames.
    prefill_stage1_updates: int = 1000
    prefill_stage2_updates: int = 1500
    collect_steps: int = 5000  # env steps the actor plays per iteration
    # Share of collection steps played by uniform-random actions, in segments of explore_hold steps of one action
    # (0 = the actor plays every step): the world model sees other actions than the actor's in the actor's states.
    explore_fraction: float = 0.0
    explore_hold: int = 4
    # Temperature of the actor's sampling in collection: probabilities proportional to pi(a|z)^(1/T) (1 = the policy as
    # trained, the default). Evaluation games have their own (agent.eval_temperature); imagination always uses pi.
    collect_temperature: float = 1.0
    num_envs: int = 1  # envs the actor plays in lockstep (one batched encoder pass a round); the steps of all count
    stage2_train_ratio: float = 16.0  # Stage-2 replayed transitions (sequences x T) per new env step
    stage2_lr: float = 3e-4  # constant Stage-2 learning rate in the loop (the prefill fit uses stage2's schedule)
    agent_updates: int = 300  # actor-critic updates per iteration
    final_stage2_updates: int = 0  # training-only phase after the budget is spent
    final_agent_updates: int = 600
    # Train a new actor-critic in the final phase (final_agent_updates, imagination starts uniform over the whole
    # replay, as train-agent does) instead of continuing the loop's, which has followed a moving world model.
    final_agent_reset: bool = False
    # Fit Stage 2 anew in the final phase: new dynamics trained by vjepa2_world_model.stage2's own epochs, schedule and
    # early stopping on the whole replay over the final encoder (what `pretrain --stage 2 --stage1-checkpoint
    # RUN/world_model.pt` does), before the final agent updates; resumable (stage2_final/ in the run folder).
    final_stage2_refit: bool = False
    # The refit's network, when it differs from the loop's models.world_model (0 = as there): a deeper network is
    # cheap only once, at the end, while the loop's many small updates keep the smaller one.
    final_refit_depth: int = 0
    final_refit_mlp_dim: int = 0
    # Dropout of the refit's network (-1 = as models.world_model.dropout, 0.1): the refit sees the whole replay a few
    # times (60 epochs of 4096 sequences over ~86k at atari100k) and its train loss stays at its validation loss, so
    # dropout only slows it. On the replay and final encoder of an atari100k loop (seed 0, `pretrain --stage 2`, depth
    # 4 / mlp 512) 0 gave a best validation latent loss of 0.510 against 0.585, at 1.3x the sequences/s. End to end
    # at atari100k (3 seeds): 12.60 against 11.27 on the tuning games (games-only CI -0.60 to +3.30), 12.20 against
    # 12.17 held out; not taken (docs/results.md, "the final refit without dropout").
    final_refit_dropout: float = -1.0
    # Score the refit's reward and continuation heads on rollout latents too (vjepa2_world_model.stage2.heads_on_rollout
    # for the refit alone): on in every Stage-2 update the atari100k loop lost 1.57 on the tuning games, while a refit
    # with it raised the final agent by +0.60 over four world models; end to end, with the loop's own final agents,
    # 9.93 against 11.27 on the tuning games over 3 seeds (docs/results.md). Off.
    final_refit_heads_on_rollout: bool = False
    # Env steps of the budget kept for after the final phase (0 = the final phase comes after the whole budget): the
    # final phase (refresh, refit, new agent) runs when budget - final_collect_steps steps are spent, then the loop
    # goes on with the final network and agent, which play the last steps, so the model learns the final agent's own
    # play and the agent is corrected where the model was too kind; after the last collection the agent gets
    # agent_updates more.
    # 5000 at atari100k (forks of the refresh loops at 95k, 3 seeds): 10.90 on the tuning games against 11.27, 11.70
    # held out; not taken (docs/results.md).
    final_collect_steps: int = 0
    recent_fraction: float = 0.5  # share of imagination starts drawn from the most recent frames
    recent_steps: int = 20000  # ... the last this many frames of the replay
    encoder_every: int = 0  # env steps between Stage-1 fine-tunes on all data so far (0 = keep the prefill's encoder;
    # every 10k at quick, 3 tuning seeds: -0.30 points, CI -1.53..+1.03, docs/results.md)
    # Fine-tune the encoder once more at the start of the final phase (the same refresh), so the final refit and the
    # final agent read latents of an encoder that saw every game, the agent's last and best ones too; with encoder_every
    # 25000 after a 50k prefill the loop's last refresh is at 75k and the final encoder never sees the last 25k steps.
    # End to end at atari100k (3 seeds): 11.13 against 11.27 on the tuning games, 12.87 against 12.17 held out; not
    # taken (docs/results.md, "the encoder refreshed before the final phase").
    final_encoder_refresh: bool = False
    encoder_updates: int = 500  # masked-prediction steps per fine-tune
    encoder_lr: float = 3e-4
    encoder_stage2_updates: int = 200  # Stage-2 steps on the re-encoded replay right after a fine-tune
    eval_every: int = 25000  # env steps between learning-curve evaluations (the final one is always played)
    eval_episodes: int = 3  # games per learning-curve point (the final evaluation plays evaluation.episodes)

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``."""
        for key in ("prefill_steps", "collect_steps", "num_envs", "eval_every", "eval_episodes", "recent_steps"):
            check_range(getattr(self, key) >= 1, f"{path}.{key}", getattr(self, key), "an integer >= 1")
        for key in ("prefill_min_rewards", "agent_updates", "final_stage2_updates", "final_agent_updates",
                    "encoder_every", "encoder_updates", "encoder_stage2_updates", "prefill_stage1_updates",
                    "prefill_stage2_updates", "final_refit_depth", "final_refit_mlp_dim", "final_collect_steps"):
            check_range(getattr(self, key) >= 0, f"{path}.{key}", getattr(self, key), "an integer >= 0")
        check_range(self.prefill_max_steps >= self.prefill_steps, f"{path}.prefill_max_steps", self.prefill_max_steps,
                    f"an integer >= {path}.prefill_steps ({self.prefill_steps})")
        check_range(self.stage2_train_ratio >= 0, f"{path}.stage2_train_ratio", self.stage2_train_ratio,
                    "a number >= 0")
        check_range(self.stage2_lr > 0, f"{path}.stage2_lr", self.stage2_lr, "a positive learning rate")
        check_range(self.encoder_lr > 0, f"{path}.encoder_lr", self.encoder_lr, "a positive learning rate")
        check_range(0.0 <= self.explore_fraction < 1.0, f"{path}.explore_fraction", self.explore_fraction,
                    "a fraction in [0, 1)")
        check_range(not self.final_agent_reset or self.final_agent_updates >= 1, f"{path}.final_agent_updates",
                    self.final_agent_updates, f"an integer >= 1 when {path}.final_agent_reset is true")
        for key in ("final_refit_depth", "final_refit_mlp_dim"):
            check_range(self.final_stage2_refit or not getattr(self, key), f"{path}.{key}", getattr(self, key),
                        f"0 unless {path}.final_stage2_refit is true (it sets the refit's network)")
        check_range(self.final_refit_dropout == -1.0 or 0.0 <= self.final_refit_dropout < 1.0,
                    f"{path}.final_refit_dropout", self.final_refit_dropout,
                    "-1 (the network's own dropout) or a probability in [0, 1)")
        check_range(self.final_stage2_refit or self.final_refit_dropout == -1.0, f"{path}.final_refit_dropout",
                    self.final_refit_dropout,
                    f"-1 unless {path}.final_stage2_refit is true (it sets the refit's network)")
        check_range(self.final_stage2_refit or not self.final_refit_heads_on_rollout,
                    f"{path}.final_refit_heads_on_rollout", self.final_refit_heads_on_rollout,
                    f"false unless {path}.final_stage2_refit is true (it sets the refit's loss)")
        check_range(self.explore_hold >= 1, f"{path}.explore_hold", self.explore_hold, "an integer >= 1")
        check_range(0.0 < self.collect_temperature <= 10.0, f"{path}.collect_temperature", self.collect_temperature,
                    "a temperature in (0, 10] (1 samples the policy as trained)")
        check_range(0.0 <= self.recent_fraction <= 1.0, f"{path}.recent_fraction", self.recent_fraction,
                    "a fraction in [0, 1]")


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    threads: int = 0  # torch intra-op threads (0 = leave torch's default)
    wandb: Literal["offline", "online", "disabled"] = "offline"
    runs_dir: str = "runs"
    checkpoint_every_steps: int = 500  # also checkpoint inside an epoch every this many steps (0 = epoch ends only)
    # Stage-1/2 training arithmetic: "fp32", or "bf16" autocast (GPUs with bf16 tensor cores; weights, optimizer
    # states and losses stay fp32). Evaluation and acting always run in fp32.
    precision: Literal["fp32", "bf16"] = "fp32"

    def validate(self, path: str) -> None:
        """Range checks of this section, whose key prefix is ``path``."""
        check_range(0 <= self.seed < MAX_RUN_SEED, f"{path}.seed", self.seed, f"an integer in [0, {MAX_RUN_SEED})")
        check_range(self.device in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", self.device) is not None,
                    f"{path}.device", self.device, "'cpu', 'cuda', 'cuda:N' or 'auto'")
        check_range(self.threads >= 0, f"{path}.threads", self.threads, "an integer >= 0 (0 = torch default)")
        check_range(not Path(self.runs_dir).exists() or Path(self.runs_dir).is_dir(), f"{path}.runs_dir",
                    self.runs_dir, "a folder (or a path that does not exist yet), not a file")
        check_range(self.checkpoint_every_steps >= 0, f"{path}.checkpoint_every_steps", self.checkpoint_every_steps,
                    "an integer >= 0 (0 = checkpoint at epoch ends only)")


@dataclass
class Config:
    preset: str = "default"
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    vjepa2_world_model: Vjepa2Config = field(default_factory=Vjepa2Config)
    data: DataConfig = field(default_factory=DataConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML ({err.__class__.__name__}); fix its syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"override '{assignment}' is not of the form key.path=value; e.g. run.seed=3")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = tree
    for key in keys[:-1]:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise UserError(f"override '{assignment}': '{key}' is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"config key '{path}' must be a section (mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise UserError(f"unknown config key '{full}'; accepted keys here: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(hints[key], value, full)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"config key '{path}' = {value!r} is not accepted; use {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type at {path}")
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 and 1e6 (no dot) as strings
        try:
            value = float(value)
        except ValueError:
            pass
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise UserError(f"config key '{path}' = {value!r} has the wrong type; expected {_type_name(tp)}")
    return float(value) if tp is float else value


def validate(cfg: Config) -> Config:
    """Range checks that types alone cannot express: each section's own (its ``validate``), then those that span
    sections."""
    e, m = cfg.environment, cfg.models
    e.validate("environment")
    check_range(m.shared_latent_dim >= 1, "models.shared_latent_dim", m.shared_latent_dim, "an integer >= 1")
    check_range(m.shared_patch_size >= 1 and e.image_height % m.shared_patch_size == 0, "models.shared_patch_size",
                m.shared_patch_size, f"a divisor of the image size {e.image_height}")
    vit = m.encoder.params.vit
    m.encoder.validate("models.encoder")
    check_range(vit.heads >= 1 and m.shared_latent_dim % vit.heads == 0, "models.encoder.params.vit.heads",
                vit.heads, f"a divisor of models.shared_latent_dim ({m.shared_latent_dim})")
    m.predictor.validate("models.predictor")
    check_range(m.predictor.heads >= 1 and m.shared_latent_dim % m.predictor.heads == 0, "models.predictor.heads",
                m.predictor.heads, f"a divisor of models.shared_latent_dim ({m.shared_latent_dim})")
    m.world_model.validate("models.world_model")
    s1 = cfg.vjepa2_world_model.stage1
    s1.validate("vjepa2_world_model.stage1")
    check_range(s1.motion_map_cells == 0 or e.image_height % s1.motion_map_cells == 0,
                "vjepa2_world_model.stage1.motion_map_cells", s1.motion_map_cells,
                f"0 or a divisor of the image size {e.image_height}")
    cfg.vjepa2_world_model.stage2.validate("vjepa2_world_model.stage2")
    cfg.data.validate("data")
    cfg.planner.validate("planner")
    cfg.agent.validate("agent")
    seq = cfg.vjepa2_world_model.stage2.sequence_length
    check_range(cfg.agent.imagine_context < seq, "agent.imagine_context", cfg.agent.imagine_context,
                f"at most {seq - 1}: the history Stage 2 learns to use, vjepa2_world_model.stage2.sequence_length - 1")
    cfg.evaluation.validate("evaluation")
    cfg.baselines.validate("baselines")
    cfg.learn.validate("learn")
    check_range(cfg.learn.final_collect_steps < cfg.baselines.agent_steps, "learn.final_collect_steps",
                cfg.learn.final_collect_steps, f"an integer below the budget baselines.agent_steps "
                f"({cfg.baselines.agent_steps})")
    cfg.run.validate("run")
    return cfg


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                config_file: str | Path | None = None) -> Config:
    """The dataclass defaults, then the preset, then an optional YAML file, then dotted overrides."""
    tree = Config().to_dict()
    name = preset or "default"
    if preset is not None and preset != "default":
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; accepted presets: {', '.join(PRESETS)}")
        tree = _merge(tree, _read_yaml(CONFIG_DIR / f"{preset}.yaml"))
    if config_file is not None:
        tree = _merge(tree, _read_yaml(Path(config_file)))
    for assignment in overrides:
        _set_dotted(tree, assignment)
    tree["preset"] = name
    return validate(_build(Config, tree, ""))


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config saved in a run folder or checkpoint (same validation)."""
    return validate(_build(Config, tree, ""))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

"""One typed config: YAML defaults (the seed's keys verbatim), stacked presets, dotted overrides.

``load_config(preset="quick", overrides=["vjepa2_world_model.stage1.masking_ratio=0.5"])`` reads
``configs/default.yaml``, stacks ``configs/<preset>.yaml`` on top, applies the overrides and
returns a validated :class:`Config`. Every error a user can cause (unknown key, wrong type,
value out of range, missing file, unknown preset) raises :class:`envs.errors.UserError` with
one sentence naming the full key path and what is accepted.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from envs.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = ("tiny", "quick", "full", "atari100k")


# --------------------------------------------------------------------------------------- environment
@dataclass
class EnvironmentConfig:
    name: str = "ALE/Breakout-v5"  # gymnasium id; the pipeline is built for Breakout's RAM layout
    frame_stack_size: int = 4  # frames stacked as channels
    grayscale_conversion: bool = True  # the pipeline is grayscale-only; kept for the seed's contract
    image_height: int = 64  # square resize target (AtariPreprocessing screen_size)
    image_width: int = 64
    frame_skip: int = 4  # agent step = frame_skip emulator frames (max-pooled over the last two)
    noop_max: int = 30  # random no-ops after reset
    repeat_action_probability: float = 0.25  # sticky actions (ALE v5 default; 0 in atari100k)
    max_episode_frames: int = 108_000  # emulator-frame cap of one episode (30 minutes of play)
    fire_on_reset: bool = True  # press FIRE after reset so the ball is served
    fire_on_life_loss: bool = True  # press FIRE after a life is lost (the FIRE step's reward is kept)
    terminal_on_life_loss: bool = False  # end the episode at each life loss (training-only trick)


# --------------------------------------------------------------------------------------- models
@dataclass
class VitConfig:
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads
    mlp_dim: int = 512  # hidden width of each block's MLP
    dropout: float = 0.2  # dropout in attention output and MLP
    # latent = mean of tokens, Linear(N*k -> D) of per-patch k dims, or soft-argmax keypoints (worldmodel/encoder.py)
    readout: Literal["mean", "spatial", "keypoints"] = "spatial"
    readout_channels: int = 8  # k: per-patch channels of the spatial readout; K keypoints of the keypoint readout
    frame_diffs: bool = True  # also feed the temporal differences f_t - f_{t-1} to the patch embedding
    keypoint_temperature: float = 1.0  # initial (then learned) softmax temperature of the keypoint readout
    # "pixel": standardise each pixel by its mean/std over the training frames (fitted before stage 1)
    input_norm: Literal["none", "pixel"] = "pixel"
    input_std_floor: float = 0.1  # lower bound of the per-pixel std (pixels that never change)


@dataclass
class EncoderParams:
    vit: VitConfig = field(default_factory=VitConfig)


@dataclass
class EncoderConfig:
    params: EncoderParams = field(default_factory=EncoderParams)


@dataclass
class PredictorConfig:
    depth: int = 2  # stage-1 token predictor blocks (tokens target); MLP layers (pooled target)
    heads: int = 4
    mlp_dim: int = 256
    dropout: float = 0.0


@dataclass
class WorldModelNetConfig:
    depth: int = 4  # causal transformer blocks of WorldModelTransformer
    heads: int = 4
    mlp_dim: int = 512
    dropout: float = 0.1
    hidden_dim: int = 128  # model width (latents and action embeddings are projected to it)


@dataclass
class ModelsConfig:
    shared_latent_dim: int = 64  # D: size of the encoder output z
    shared_patch_size: int = 8  # ViT patch size (64x64 input -> 8x8 = 64 patches)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    world_model: WorldModelNetConfig = field(default_factory=WorldModelNetConfig)


# --------------------------------------------------------------------------------------- training
@dataclass
class Stage1Config:
    masking_ratio: float = 0.4  # fraction of patches replaced by the mask token
    num_epochs: int = 10
    learning_rate: float = 1e-4
    ema_decay: float = 0.996  # target <- decay * target + (1 - decay) * online
    weight_decay: float = 0.05
    early_stopping_patience: int = 3  # epochs without val improvement before stopping
    # seed's pooled-latent MLP, V-JEPA 2 token target, or latent -> all tokens decoder (worldmodel/masked_prediction.py)
    target: Literal["pooled", "tokens", "bottleneck"] = "bottleneck"
    bottleneck_token_weight: float = 0.0  # bottleneck target: weight of the added masked-token loss (0 = none)
    motion_weighting: float = 1.0  # bottleneck target: token error weight 1 + this * patch motion / mean motion
    motion_map_weight: float = 1.0  # auxiliary: cross-entropy of where the newest frame moved (8x8 map) from z
    batch_size: int = 128
    grad_clip: float = 1.0  # max global grad norm
    warmup_epochs: float = 0.5  # linear LR warm-up before cosine decay
    probe_every: int = 1  # run the representation diagnostics every N epochs (0 = only at the end)
    compile: bool = False  # torch.compile the training step


@dataclass
class Stage2Config:
    sequence_length: int = 8  # T transitions per training sequence
    teacher_forcing_ratio: float = 0.8  # probability of feeding the true z_t (scheduled sampling)
    rollout_steps: int = 4  # autoregressive steps of the rollout loss
    num_epochs: int = 30
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    early_stopping_patience: int = 3
    teacher_forcing_weight: float = 0.7
    rollout_weight: float = 0.3
    reward_weight: float = 1.0
    continue_weight: float = 1.0
    batch_size: int = 64
    grad_clip: float = 1.0
    sequences_per_epoch: int = 0  # training sequences drawn per epoch from all start positions (0 = all of them)
    # Rare events: a life loss is ~3% of random-policy steps and a point ~2%; these weight their steps' head
    # losses (1 = plain mean).
    continue_pos_weight: float = 1.0  # weight of life-loss steps in the continuation BCE
    reward_pos_weight: float = 1.0  # weight of rewarding steps in the reward MSE
    # Also score the heads on the rollout's imagined latents (fed back detached: the heads learn to read imagined
    # states without their gradients pulling the chain of latent predictions).
    heads_on_rollout: bool = False


@dataclass
class Vjepa2Config:
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)


@dataclass
class DataConfig:
    collect_steps: int = 100_000  # agent steps collected when pretrain gets no --data
    val_fraction: float = 0.1  # share of episodes held out for validation (episode-level split)
    policy: Literal["random", "tracker"] = "random"  # behaviour policy of `pretrain`'s collection


@dataclass
class PlannerConfig:
    samples: int = 32  # N candidate action sequences per CEM iteration
    horizon: int = 20  # H imagined steps per candidate (the ball needs ~30 steps to cross the screen)
    iterations: int = 3
    elites: int = 4  # top-k candidates that refit the distribution
    smoothing: float = 0.3  # new_probs = smoothing * old + (1 - smoothing) * elite frequencies
    discount: float = 0.99
    life_loss_penalty: float = 1.0  # subtracted, weighted by the probability of losing a life
    repeat_prob: float = 0.75  # temporally correlated samples: P(repeat previous action)
    use_value: bool = False  # add the actor-critic's value at the horizon (needs --agent)
    policy_samples: int = 0  # candidates drawn from the actor (needs --agent)
    warm_start_mix: float = 0.1  # shifted plan mixed with uniform by this fraction (keeps sampling alive)
    history_steps: int = 7  # real past steps fed to imagine as context (capped at the model's context - 1)


@dataclass
class AgentConfig:
    imagine_horizon: int = 15
    lambda_: float = 0.95  # lambda-return mixing
    discount: float = 0.985
    entropy_coef: float = 3e-3
    actor_lr: float = 3e-5
    critic_lr: float = 3e-5
    hidden_dim: int = 256
    batch_size: int = 256  # imagined start states per update
    updates: int = 5000
    critic_ema_decay: float = 0.98
    grad_clip: float = 100.0
    return_norm_decay: float = 0.99  # EMA decay of the 5th/95th return percentiles (return normalisation)
    life_loss_penalty: float = 1.0  # imagined reward minus penalty * P(life lost at that step)
    start_latents: int = 20_000  # replay frames encoded once as imagination start states (random subset)
    checkpoint_every: int = 500  # updates between checkpoints (and metric logs every 1/10 of it)
    eval_every: int = 0  # updates between short real-env evaluations (0 = only at the end)
    eval_episodes: int = 1  # full-game episodes per periodic evaluation


@dataclass
class EvalConfig:
    episodes: int = 5  # full-game episodes per (agent, seed)
    seed_offset: int = 10_000  # evaluation seeds = training seed + offset (disjoint from training)


@dataclass
class BaselinesConfig:
    agent_steps: int = 100_000  # env-step budget shared by every agent (agent steps, frame skip 4)
    eval_every: int = 25_000  # learning-curve evaluation period in agent steps
    eval_episodes: int = 3  # episodes per learning-curve point


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    threads: int = 0  # torch intra-op threads (0 = leave torch's default)
    wandb: Literal["offline", "online", "disabled"] = "offline"
    runs_dir: str = "runs"


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
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise UserError(f"config key '{path}' = {value!r} has the wrong type; expected {_type_name(tp)}")
    return float(value) if tp is float else value


def _check(cond: bool, path: str, value: Any, accepted: str) -> None:
    if not cond:
        raise UserError(f"config key '{path}' = {value!r} is out of range; accepted: {accepted}")


def validate(cfg: Config) -> Config:
    """Range checks that types alone cannot express."""
    e, m, s1, s2 = cfg.environment, cfg.models, cfg.vjepa2_world_model.stage1, cfg.vjepa2_world_model.stage2
    _check(e.name == "ALE/Breakout-v5", "environment.name", e.name, "'ALE/Breakout-v5' (RAM labels are Breakout's)")
    _check(e.grayscale_conversion, "environment.grayscale_conversion", e.grayscale_conversion, "true")
    _check(e.image_height == e.image_width and e.image_height >= 16, "environment.image_height",
           e.image_height, "a square size >= 16 equal to environment.image_width")
    _check(e.frame_stack_size >= 1, "environment.frame_stack_size", e.frame_stack_size, "an integer >= 1")
    _check(e.frame_skip >= 1, "environment.frame_skip", e.frame_skip, "an integer >= 1")
    _check(e.noop_max >= 0, "environment.noop_max", e.noop_max, "an integer >= 0")
    _check(0.0 <= e.repeat_action_probability < 1.0, "environment.repeat_action_probability",
           e.repeat_action_probability, "a probability in [0, 1)")
    _check(e.max_episode_frames > 0, "environment.max_episode_frames", e.max_episode_frames, "an integer > 0")
    _check(m.shared_latent_dim >= 1, "models.shared_latent_dim", m.shared_latent_dim, "an integer >= 1")
    _check(m.shared_patch_size >= 1 and e.image_height % m.shared_patch_size == 0, "models.shared_patch_size",
           m.shared_patch_size, f"a divisor of the image size {e.image_height}")
    vit = m.encoder.params.vit
    _check(vit.depth >= 1, "models.encoder.params.vit.depth", vit.depth, "an integer >= 1")
    _check(vit.heads >= 1 and m.shared_latent_dim % vit.heads == 0, "models.encoder.params.vit.heads", vit.heads,
           f"a divisor of models.shared_latent_dim ({m.shared_latent_dim})")
    _check(0.0 <= vit.dropout < 1.0, "models.encoder.params.vit.dropout", vit.dropout, "a value in [0, 1)")
    _check(vit.readout_channels >= 1, "models.encoder.params.vit.readout_channels", vit.readout_channels,
           "an integer >= 1")
    _check(vit.keypoint_temperature > 0, "models.encoder.params.vit.keypoint_temperature", vit.keypoint_temperature,
           "a value > 0")
    _check(vit.input_norm in ("none", "pixel"), "models.encoder.params.vit.input_norm", vit.input_norm,
           "'none' or 'pixel'")
    _check(vit.input_std_floor > 0, "models.encoder.params.vit.input_std_floor", vit.input_std_floor, "a value > 0")
    _check(m.shared_latent_dim % m.predictor.heads == 0, "models.predictor.heads", m.predictor.heads,
           f"a divisor of models.shared_latent_dim ({m.shared_latent_dim})")
    wm = m.world_model
    _check(wm.hidden_dim % wm.heads == 0, "models.world_model.heads", wm.heads,
           f"a divisor of models.world_model.hidden_dim ({wm.hidden_dim})")
    _check(0.0 < s1.masking_ratio < 1.0, "vjepa2_world_model.stage1.masking_ratio", s1.masking_ratio,
           "a fraction strictly between 0 and 1")
    _check(s1.bottleneck_token_weight >= 0.0, "vjepa2_world_model.stage1.bottleneck_token_weight",
           s1.bottleneck_token_weight, "a value >= 0")
    _check(s1.motion_weighting >= 0.0, "vjepa2_world_model.stage1.motion_weighting", s1.motion_weighting,
           "a value >= 0")
    _check(s1.motion_map_weight >= 0.0, "vjepa2_world_model.stage1.motion_map_weight", s1.motion_map_weight,
           "a number >= 0 (0 = off)")
    _check(0.0 <= s1.ema_decay <= 1.0, "vjepa2_world_model.stage1.ema_decay", s1.ema_decay, "a value in [0, 1]")
    for name, stage in (("stage1", s1), ("stage2", s2)):
        p = f"vjepa2_world_model.{name}"
        _check(stage.num_epochs >= 1, f"{p}.num_epochs", stage.num_epochs, "an integer >= 1")
        _check(stage.learning_rate > 0, f"{p}.learning_rate", stage.learning_rate, "a positive number")
        _check(stage.weight_decay >= 0, f"{p}.weight_decay", stage.weight_decay, "a number >= 0")
        _check(stage.early_stopping_patience >= 1, f"{p}.early_stopping_patience", stage.early_stopping_patience,
               "an integer >= 1")
        _check(stage.batch_size >= 1, f"{p}.batch_size", stage.batch_size, "an integer >= 1")
    _check(s2.sequence_length >= 1, "vjepa2_world_model.stage2.sequence_length", s2.sequence_length,
           "an integer >= 1")
    _check(1 <= s2.rollout_steps <= s2.sequence_length, "vjepa2_world_model.stage2.rollout_steps",
           s2.rollout_steps, f"an integer in [1, sequence_length={s2.sequence_length}] "
           "(sequence_length must be >= rollout_steps)")
    _check(s2.sequences_per_epoch >= 0, "vjepa2_world_model.stage2.sequences_per_epoch", s2.sequences_per_epoch,
           "an integer >= 0 (0 = every training sequence once per epoch)")
    _check(0.0 <= s2.teacher_forcing_ratio <= 1.0, "vjepa2_world_model.stage2.teacher_forcing_ratio",
           s2.teacher_forcing_ratio, "a probability in [0, 1]")
    _check(cfg.data.collect_steps >= 1, "data.collect_steps", cfg.data.collect_steps, "an integer >= 1")
    _check(0.0 < cfg.data.val_fraction < 1.0, "data.val_fraction", cfg.data.val_fraction, "a fraction in (0, 1)")
    p = cfg.planner
    _check(p.samples >= 1, "planner.samples", p.samples, "an integer >= 1")
    _check(p.horizon >= 1, "planner.horizon", p.horizon, "an integer >= 1")
    _check(p.iterations >= 1, "planner.iterations", p.iterations, "an integer >= 1")
    _check(1 <= p.elites <= p.samples, "planner.elites", p.elites, f"an integer in [1, planner.samples={p.samples}]")
    _check(0.0 <= p.smoothing < 1.0, "planner.smoothing", p.smoothing, "a value in [0, 1)")
    _check(0.0 < p.discount <= 1.0, "planner.discount", p.discount, "a value in (0, 1]")
    _check(0.0 <= p.repeat_prob < 1.0, "planner.repeat_prob", p.repeat_prob, "a probability in [0, 1)")
    _check(0 <= p.policy_samples <= p.samples, "planner.policy_samples", p.policy_samples,
           f"an integer in [0, planner.samples={p.samples}]")
    _check(p.history_steps >= 0, "planner.history_steps", p.history_steps, "an integer >= 0")
    _check(0.0 <= p.warm_start_mix <= 1.0, "planner.warm_start_mix", p.warm_start_mix, "a value in [0, 1]")
    a = cfg.agent
    _check(a.imagine_horizon >= 1, "agent.imagine_horizon", a.imagine_horizon, "an integer >= 1")
    _check(0.0 <= a.lambda_ <= 1.0, "agent.lambda_", a.lambda_, "a value in [0, 1]")
    _check(0.0 < a.discount <= 1.0, "agent.discount", a.discount, "a value in (0, 1]")
    _check(0.0 <= a.critic_ema_decay < 1.0, "agent.critic_ema_decay", a.critic_ema_decay, "a value in [0, 1)")
    _check(a.life_loss_penalty >= 0.0, "agent.life_loss_penalty", a.life_loss_penalty, "a number >= 0")
    _check(0.0 <= a.return_norm_decay < 1.0, "agent.return_norm_decay", a.return_norm_decay, "a value in [0, 1)")
    _check(a.actor_lr > 0 and a.critic_lr > 0, "agent.actor_lr", a.actor_lr,
           "positive numbers for agent.actor_lr and agent.critic_lr")
    _check(a.batch_size >= 1 and a.updates >= 1 and a.start_latents >= 1, "agent.batch_size", a.batch_size,
           "integers >= 1 for agent.batch_size, agent.updates and agent.start_latents")
    _check(a.checkpoint_every >= 1 and a.eval_every >= 0 and a.eval_episodes >= 1, "agent.checkpoint_every",
           a.checkpoint_every, "agent.checkpoint_every >= 1, agent.eval_every >= 0, agent.eval_episodes >= 1")
    _check(cfg.evaluation.episodes >= 1, "evaluation.episodes", cfg.evaluation.episodes, "an integer >= 1")
    _check(cfg.run.threads >= 0, "run.threads", cfg.run.threads, "an integer >= 0 (0 = torch default)")
    return cfg


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                config_file: str | Path | None = None) -> Config:
    """Defaults, then the preset, then an optional YAML file, then dotted overrides."""
    tree = _read_yaml(CONFIG_DIR / "default.yaml")
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


def stage1_config(ckpt: dict[str, Any]) -> Config:
    """The config of a stage-1 checkpoint, with the encoder's readout and frame differences taken from its
    ``encoder_kwargs`` (checkpoints written before those keys existed hold a mean-readout encoder)."""
    cfg = config_from_dict(ckpt["config"])
    kw = ckpt.get("encoder_kwargs") if isinstance(ckpt.get("encoder_kwargs"), dict) else {}
    vit = cfg.models.encoder.params.vit
    vit.readout = kw.get("readout", "mean")
    vit.readout_channels = int(kw.get("readout_channels", vit.readout_channels))
    vit.frame_diffs = bool(kw.get("frame_diffs", False))
    vit.input_norm = kw.get("input_norm", "none")
    vit.input_std_floor = float(kw.get("input_std_floor", vit.input_std_floor))
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

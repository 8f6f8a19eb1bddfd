"""`run.py learn`: closed-loop model-based RL within an env-step budget (SB3's ``learn(total_timesteps)`` in
spirit). The agent collects its own data, the world model keeps learning from it, the agent keeps learning in
imagination, and every env step counts toward ``baselines.agent_steps``, the budget every agent gets.

1. **prefill**: random play, at least ``learn.prefill_steps`` and until the replay holds
   ``learn.prefill_min_rewards`` scoring steps (at most ``learn.prefill_max_steps``);
2. **Stage 1 and Stage 2** on the prefill (the pretrain tasks on the one training loop, resumable), for
   ``learn.prefill_stage1_updates`` / ``learn.prefill_stage2_updates`` optimizer steps (rounded up to whole
   epochs; 0 = the stage's own ``num_epochs``): a 5k-step prefill is a few hundred Stage-1 batches per epoch;
3. **iterations** until the budget is spent: train the actor-critic in imagination for ``learn.agent_updates``
   updates from real latents, a share ``learn.recent_fraction`` of the starts from the last
   ``learn.recent_steps`` frames; play ``learn.collect_steps`` steps with it (sampling; one encoder pass and
   the actor per step, batched over ``learn.num_envs`` envs played in lockstep) and append finished games to
   the replay; encode the new frames; train Stage 2 on all
   training episodes so far, ``learn.stage2_train_ratio`` replayed transitions per new env step (scoring
   sequences oversampled, ``vjepa2_world_model.stage2.reward_oversample``);
4. **final phase** (no env steps): ``learn.final_stage2_updates`` and ``learn.final_agent_updates`` more; with
   ``learn.final_stage2_refit`` new dynamics are fitted on the whole replay by Stage 2's own epochs (into
   ``stage2_final/``; ``learn.final_refit_heads_on_rollout`` scores its heads on rollout latents too); with
   ``learn.final_agent_reset`` the last updates train a new actor-critic (starts uniform over the replay). With
   ``learn.final_collect_steps`` the final phase comes that many env steps before the budget is spent; the loop then
   goes on with its network and agent, which play the steps left.

The encoder: the prefill's Stage-1 encoder, fine-tuned every ``learn.encoder_every`` env steps (0 = never) for
``learn.encoder_updates`` masked-prediction steps on frames of every training game so far; the replay is then
encoded again, the dynamics' latent statistics re-fitted and Stage 2 trained ``learn.encoder_stage2_updates``
steps on the new latents; with ``learn.final_encoder_refresh`` once more at the start of the final phase (which
``learn.final_collect_steps`` may bring forward), so the refit and the final agent read an encoder that saw every
game. Evaluation by the one protocol (``experiments.play.evaluate``, evaluation games do not count) every
``learn.eval_every`` env steps and at the end.

Run folder ``runs/learn/<time>-<preset>-s<seed>/``: ``data/`` (the replay), ``stage1/`` and ``stage2/`` (the
prefill fits), ``learn.pt`` (the loop's state, written atomically at the end of every iteration: world model,
optimizer, actor-critic, RNG states, env-step counter, replay size and the game in progress),
``world_model.pt`` (a Stage-2 checkpoint of the current world model: ``evaluate --stage 2``, ``plan-in-env``),
``agent.pt`` (a train-agent checkpoint), ``curve.json``, ``metrics.jsonl`` (step = env steps),
``summary.json``. ``learn(resume=RUN)`` after a kill at any moment continues to the same result: work after the
last ``learn.pt`` is done again (episodes written after it are dropped, the game in progress is replayed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from agent.actor_critic import ActorCritic, ImaginationStarts, RealTransitions, history_frames
from agent.player import CHECKPOINT_KIND, ActorCriticAgent
from envs.breakout import NUM_ACTIONS, make_env
from envs.dataset import FrameStackDataset, TemporalSequenceDataset
from envs.errors import UserError
from envs.replay import Episode, ReplayWriter, load_episodes, stable_split
from envs.seeds import training_seed
from experiments.builders import build_stage1_model, build_world_model_loss
from experiments.collect import _EpisodeBuffer
from experiments.config import Config, config_from_dict
from experiments.data import input_frames
from experiments.fit import TrainState, fit, optimizer_step, restore, rng_state, set_rng_state
from experiments.play import evaluate, summarize_returns
from experiments.results import bootstrap_ci
from experiments.runlog import RunLogger, autocast, seed_everything, setup_torch
from worldmodel.checkpoint import load_checkpoint, load_state, save_checkpoint
from worldmodel.dynamics_loss import METRICS, LatentSequences
from worldmodel.encoder import fit_input_stats
from worldmodel.latent_cache import encoder_fingerprint
from worldmodel.masked_prediction import load_encoder
from worldmodel.transformer import WorldModelTransformer, symexp
from worldmodel.world_model import WorldModel, dynamics_from_checkpoint

STATE_FILE = "learn.pt"
PHASE_FILE = "learn_phase.json"  # prefill -> stage1 -> stage2 -> loop (written when a phase is over)
KIND = "learn"
REWARD_THRESHOLD = 0.5  # predicted points above which a step counts as scoring (as evaluate --stage 2)


class Player:
    """One env played across iterations. Game ``k`` of the run starts from ``training_seed(seed, k)``; the
    chosen actions of the game in progress are kept so that a resumed run replays it to the same state."""

    def __init__(self, cfg: Config, seed: int, env_seed: int | None = None):
        self.cfg, self.seed = cfg, seed
        self.env = make_env(cfg.environment, seed=seed if env_seed is None else env_seed)
        self.games = 0  # games started (the run's game counter: Players shares it between its envs)
        self.index: int | None = None  # the run's number of the game in progress
        self.game_seed: int | None = None
        self.chosen: list[int] = []  # actions chosen in the game in progress (the env may execute FIRE instead)
        self.obs: np.ndarray | None = None
        self.buf: _EpisodeBuffer | None = None
        self.last_reward = 0.0
        self.finished_seed: int | None = None  # game seed of the last finished game

    def start(self) -> None:
        self.index = self.games
        self.game_seed = training_seed(self.seed, self.index)
        self.games += 1
        self.chosen = []
        self.obs, info = self.env.reset(seed=self.game_seed)
        self.buf = _EpisodeBuffer(self.obs, info)

    def step(self, action: int) -> Episode | None:
        """Play one step; the finished game's episode when it ended (the next game is started)."""
        if self.obs is None:
            self.start()
        self.chosen.append(int(action))
        self.obs, reward, terminated, truncated, info = self.env.step(int(action))
        self.last_reward = float(reward)
        self.buf.add(self.obs, reward, terminated, truncated, info)
        if terminated or truncated:
            ep = self.buf.episode()
            self.finished_seed = self.game_seed
            self.start()
            return ep
        return None

    def state(self) -> dict[str, Any]:
        return {"games": self.games, "index": self.index, "game_seed": self.game_seed, "chosen": list(self.chosen)}

    def restore(self, st: dict[str, Any]) -> None:
        """Back to a saved state: the game in progress is played again with its chosen actions."""
        self.games, self.obs = int(st["games"]), None
        if st["game_seed"] is None:
            return
        games = self.games
        # the game in progress is number ``index`` (states written before num_envs existed: the last one started)
        self.games = int(st["index"]) if st.get("index") is not None else games - 1
        self.start()
        self.games = games
        assert self.game_seed == st["game_seed"], "game seeds of a resumed run differ"
        for a in st["chosen"]:
            assert self.step(a) is None, "the replayed game in progress ended early"

    def close(self) -> None:
        self.env.close()


class Players:
    """``learn.num_envs`` envs played in lockstep by one actor (one batched encoder pass per round). Games are
    numbered across the envs in the order they start, so the run's game seeds do not depend on which env plays
    them; with one env this is exactly :class:`Player`."""

    def __init__(self, cfg: Config, seed: int, num_envs: int):
        self.players = [Player(cfg, seed, env_seed=seed + i) for i in range(num_envs)]
        self.games = 0
        # Exploration segments (learn.explore_fraction): in each env, before an actor step, a segment of
        # learn.explore_hold steps of one uniform-random action starts with probability p, so that a share f of the
        # steps is random: f = hold * p / (hold * p + 1 - p).
        f, self.hold = cfg.learn.explore_fraction, cfg.learn.explore_hold
        self.start_prob = f / (self.hold * (1.0 - f) + f) if f > 0 else 0.0
        self.rng = np.random.default_rng([seed, 7])
        self.left = [0] * num_envs  # steps left in each env's random segment
        self.action = [0] * num_envs  # ... and its action
        self.random_steps = 0  # steps played by random segments (a counter for the logs)

    def step(self, i: int, action: int) -> Episode | None:
        p = self.players[i]
        p.games = self.games
        if p.obs is None:
            p.start()
        ep = p.step(action)
        self.games = p.games
        return ep

    def observations(self, n: int) -> np.ndarray:
        """``uint8 [n, 4, H, W]``: the current frames of the first ``n`` envs (games started where needed)."""
        for p in self.players[:n]:
            if p.obs is None:
                p.games = self.games
                p.start()
                self.games = p.games
        return np.stack([p.obs for p in self.players[:n]])

    def play(self, actor: ActorCriticAgent, steps: int, on_episode: Callable[[Episode, int], None]) -> None:
        """Play ``steps`` env steps with ``actor`` (sampling), in rounds of one step in each env (the last round
        may use fewer); ``on_episode(episode, game_seed)`` receives each finished game."""
        left = steps
        while left > 0:
            n = min(len(self.players), left)
            actions, _ = actor.predict(self.observations(n), deterministic=False)
            for i in range(n):
                if self.start_prob > 0 and self.left[i] == 0 and self.rng.random() < self.start_prob:
                    self.left[i], self.action[i] = self.hold, int(self.rng.integers(NUM_ACTIONS))
                a = int(actions[i])
                if self.left[i] > 0:
                    a = self.action[i]
                    self.left[i] -= 1
                    self.random_steps += 1
                ep = self.step(i, a)
                if ep is not None:
                    self.left[i] = 0  # a segment does not run into the next game
                    on_episode(ep, self.players[i].finished_seed)
            left -= n

    def state(self) -> dict[str, Any]:
        return {"games": self.games, "envs": [p.state() for p in self.players],
                "explore": {"rng": self.rng.bit_generator.state, "left": list(self.left), "action": list(self.action),
                            "random_steps": self.random_steps}}

    def restore(self, st: dict[str, Any]) -> None:
        envs = st["envs"] if "envs" in st else [st]  # one env's state (runs from before num_envs)
        if len(envs) != len(self.players):
            raise UserError(f"cannot resume: the run played {len(envs)} envs but learn.num_envs is "
                            f"{len(self.players)}; resume with --set learn.num_envs={len(envs)}")
        for p, e in zip(self.players, envs):
            p.restore(e)
        self.games = int(st["games"])
        if "explore" in st:  # states written before exploration segments existed had none in progress
            ex = st["explore"]
            self.rng.bit_generator.state = ex["rng"]
            self.left, self.action = [int(v) for v in ex["left"]], [int(v) for v in ex["action"]]
            self.random_steps = int(ex["random_steps"])

    def close(self) -> None:
        for p in self.players:
            p.close()


class Replay:
    """The run's episodes in memory, their latents, the replay folder, and the Stage-2 sequences over them."""

    def __init__(self, cfg: Config, root: Path, encoder: torch.nn.Module | None, device: torch.device):
        self.cfg, self.root, self.encoder, self.device = cfg, root, encoder, device
        self.episodes: list[Episode] = []
        self.latents: list[torch.Tensor] = []  # [L+1, D] per episode

    def load(self, count: int | None = None) -> None:
        """Read the folder's first ``count`` episodes (all when None), dropping any written after them."""
        eps, manifest = load_episodes(self.root)
        if count is not None and len(eps) > count:
            truncate_replay(self.root, count)
            eps = eps[:count]
        self.episodes = eps
        self.latents = []
        if self.encoder is not None:
            self.latents = [self.encode(e) for e in eps]

    @torch.no_grad()
    def encode(self, ep: Episode) -> torch.Tensor:
        """Latents of one episode's frames, in fixed chunks (so a resumed run encodes bit for bit the same)."""
        ds = FrameStackDataset([ep], self.cfg.environment.frame_stack_size)
        out = [self.encoder(ds.batch(np.arange(i, min(len(ds), i + 256)))["obs"].to(self.device)).float().cpu()
               for i in range(0, len(ds), 256)]
        return torch.cat(out)

    def add(self, ep: Episode, writer: ReplayWriter, policy: str, game_seed: int | None) -> None:
        writer.add(ep, {"policy": policy, "game_seed": game_seed})
        self.episodes.append(ep)
        if self.encoder is not None:
            self.latents.append(self.encode(ep))

    @property
    def steps(self) -> int:
        return int(sum(len(e) for e in self.episodes))

    def sequences(self) -> tuple[LatentSequences | None, LatentSequences | None]:
        """Training and validation Stage-2 sequences (episodes of >= T steps; stable episode split)."""
        T = self.cfg.vjepa2_world_model.stage2.sequence_length
        ok = [i for i, e in enumerate(self.episodes) if len(e) >= T]
        if not ok:
            return None, None
        ds = TemporalSequenceDataset([self.episodes[i] for i in ok], T, self.cfg.environment.frame_stack_size, stride=1)
        z = torch.cat([self.latents[i] for i in ok])
        val = stable_split(len(self.episodes), self.cfg.data.val_fraction, self.cfg.run.seed)[ok]
        ep = ds.store.episode_of[ds.starts]
        tr_starts, va_starts = ds.starts[~val[ep]], ds.starts[val[ep]][::max(1, T // 2)]
        mk = (lambda s: LatentSequences(z, ds.store, s, T) if len(s) else None)
        return mk(tr_starts), mk(va_starts)

    def frame_latents(self) -> torch.Tensor:
        """Latents ``[G, D]`` of every frame, oldest first (the actor-critic's imagination starts)."""
        return torch.cat(self.latents)

    def starts(self, context: int, device: torch.device) -> ImaginationStarts:
        """Every frame as an imagination start, with the ``context`` real steps before it (agent.imagine_context),
        its latents on ``device``."""
        frames = np.arange(sum(len(e) + 1 for e in self.episodes))
        rows, actions = history_frames(self.episodes, frames, context)
        return ImaginationStarts(self.frame_latents(), torch.from_numpy(frames), torch.from_numpy(rows),
                                 torch.from_numpy(actions)).to(device)


def truncate_replay(root: Path, count: int) -> None:
    """Drop the episodes of a replay folder after its first ``count`` (those written after a checkpoint)."""
    manifest = json.loads((root / "manifest.json").read_text())
    for e in manifest["episodes"][count:]:
        (root / e["file"]).unlink(missing_ok=True)
    manifest["episodes"] = manifest["episodes"][:count]
    tmp = root / "manifest.json.trunc.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(root / "manifest.json")


@torch.no_grad()
def head_scores(model: torch.nn.Module, seqs: LatentSequences | None, max_sequences: int = 4096) -> dict[str, float]:
    """Precision and recall of predicted scoring steps (> 0.5 points) and of predicted life losses
    (P(continue) < 0.5), one step ahead (teacher forced) on ``seqs``."""
    from experiments.report_stage2 import precision_recall

    if seqs is None or len(seqs) == 0:
        return {}
    was = model.training
    model.eval()
    idx = np.linspace(0, len(seqs) - 1, min(len(seqs), max_sequences)).astype(np.int64)
    device = next(model.parameters()).device
    pr, pc, tr, tl = [], [], [], []
    for s in range(0, len(idx), 512):
        b = seqs.batch(idx[s:s + 512], device)
        _, r, c = model(b["z"][:, :-1], b["actions"])
        pr.append(symexp(r) > REWARD_THRESHOLD)
        pc.append(torch.sigmoid(c) < 0.5)
        tr.append(b["rewards"] > 0)
        tl.append(b["life_loss"])
    model.train(was)
    rw = precision_recall(torch.cat(pr).cpu().numpy(), torch.cat(tr).cpu().numpy())
    ll = precision_recall(torch.cat(pc).cpu().numpy(), torch.cat(tl).cpu().numpy())
    return {"reward_precision": rw["precision"], "reward_recall": rw["recall"],
            "reward_true_steps": rw["true_positive_steps"], "life_loss_precision": ll["precision"],
            "life_loss_recall": ll["recall"]}


def _phase(run_dir: Path) -> str:
    p = run_dir / PHASE_FILE
    return json.loads(p.read_text())["done"] if p.is_file() else "none"


def _set_phase(run: RunLogger, lr: Learner, done: str, prefill: dict[str, Any]) -> None:
    lr.phase_offset = run.metrics_offset
    run.write_json(PHASE_FILE, {"done": done, "prefill": prefill, "timings": lr.timings,
                                "metrics_offset": lr.phase_offset})


class Learner:
    """The closed loop of one run folder; :func:`learn` drives it."""

    def __init__(self, cfg: Config, run: RunLogger, device: torch.device, progress: bool,
                 echo: Callable[[str], None]):
        self.cfg, self.run, self.device, self.progress, self.echo = cfg, run, device, progress, echo
        self.L = cfg.learn
        self.budget = cfg.baselines.agent_steps
        self.data = run.dir / "data"
        self.timings: dict[str, float] = dict.fromkeys(("env", "stage1", "stage2", "agent", "encode", "eval"), 0.0)
        self.phase_offset = 0  # metrics.jsonl size when the last finished phase ended (a restart rewinds to it)

    # ------------------------------------------------------------------------------------------ prefill
    def prefill(self) -> dict[str, Any]:
        L, cfg = self.L, self.cfg
        shutil.rmtree(self.data, ignore_errors=True)  # an unfinished prefill is played again, as it was
        writer = ReplayWriter(self.data, meta={"env": dataclasses.asdict(cfg.environment), "policy": "learn",
                                               "seed": cfg.run.seed})
        rng = np.random.default_rng(cfg.run.seed)
        player = Player(cfg, cfg.run.seed)
        steps, scoring, t0 = 0, 0, time.perf_counter()
        cap = min(L.prefill_max_steps, self.budget)
        try:
            while steps < cap and (steps < L.prefill_steps or scoring < L.prefill_min_rewards):
                ep = player.step(int(rng.integers(NUM_ACTIONS)))
                steps += 1
                scoring += int(player.last_reward != 0)
                if ep is not None:
                    writer.add(ep, {"policy": "random", "game_seed": player.finished_seed})
            if player.buf is not None and len(player.buf):  # the game in progress, cut by the prefill's end
                writer.add(player.buf.episode(cut=True), {"policy": "random", "game_seed": player.game_seed})
        finally:
            player.close()
        self.timings["env"] += time.perf_counter() - t0
        info = {"env_steps": steps, "scoring_steps": scoring, "games": player.games}
        self.echo(f"prefill: {steps} random-play steps, {scoring} scoring steps, {player.games} games")
        return info

    # ------------------------------------------------------------------------------------------ stage 1
    def stage1(self) -> Path:
        from experiments.pretrain import Stage1Task

        cfg = self.cfg
        t0 = time.perf_counter()
        eps, _ = load_episodes(self.data)
        val = stable_split(len(eps), cfg.data.val_fraction, cfg.run.seed)
        fs = cfg.environment.frame_stack_size
        train_ds = FrameStackDataset([e for e, v in zip(eps, val) if not v], fs)
        val_ds = FrameStackDataset([e for e, v in zip(eps, val) if v], fs)
        s1 = cfg.vjepa2_world_model.stage1
        if self.L.prefill_stage1_updates:  # a small prefill: epochs enough for this many updates
            per_epoch = max(1, len(train_ds) // min(s1.batch_size, len(train_ds)))
            s1 = dataclasses.replace(s1, num_epochs=-(-self.L.prefill_stage1_updates // per_epoch))
            cfg = dataclasses.replace(cfg, vjepa2_world_model=dataclasses.replace(cfg.vjepa2_world_model, stage1=s1))
        seed_everything(cfg.run.seed)
        model = build_stage1_model(cfg).to(self.device)
        ckpt_dir = self.run.dir / "stage1"
        latest = ckpt_dir / "latest.pt"
        ckpt = load_checkpoint(latest, kind="stage1") if latest.is_file() else None
        if ckpt is None and model.online.input_norm == "pixel":
            frames = input_frames(train_ds, cfg.run.seed).to(self.device)
            fit_input_stats(model.online, frames)
            fit_input_stats(model.target, frames)
        task = Stage1Task(cfg, model, train_ds, val_ds, self.data, self.device, np.random.default_rng(cfg.run.seed),
                          self.echo)
        task.log_every = 10 ** 9  # the loop's metrics are per env step; Stage 1 logs its epochs only
        state = TrainState()
        if ckpt is not None:
            task.load_state_dict(ckpt, latest)
            state = restore(ckpt, task, self.run)
        else:
            self.run.rewind(self.phase_offset)
        self.echo(f"stage 1 on the prefill: {len(train_ds)} train / {len(val_ds)} val observations")
        model.train()
        fit(task, state, self.run, ckpt_dir, cfg.run.checkpoint_every_steps, progress=self.progress, echo=self.echo)
        self.timings["stage1"] += time.perf_counter() - t0
        return ckpt_dir / "best.pt"

    # ------------------------------------------------------------------------------------------ stage 2
    def stage2(self, encoder: torch.nn.Module, replay: Replay, name: str = "stage2", env_steps: int = 0) -> Path:
        """A Stage-2 fit from scratch on the replay, checkpoints in ``name/`` (resumable); returns its best.pt.
        ``stage2``: the prefill's fit (``learn.prefill_stage2_updates``); ``stage2_final``: the final phase's refit
        (``learn.final_stage2_refit``, the stage's own epochs), its epoch rows logged at ``env_steps`` as
        ``stage2_final/*`` so the loop's env-step axis stays monotonic."""
        from experiments.pretrain import Stage2Task

        cfg = self.cfg
        prefill = name == "stage2"
        t0 = time.perf_counter()
        train_seq, val_seq = replay.sequences()
        if train_seq is None or val_seq is None:
            raise UserError(f"the prefill holds too few games of >= {cfg.vjepa2_world_model.stage2.sequence_length} "
                            "steps for Stage 2; raise learn.prefill_steps")
        s2 = cfg.vjepa2_world_model.stage2
        if prefill and self.L.prefill_stage2_updates:
            per_seq = len(train_seq) if s2.sequences_per_epoch == 0 else min(s2.sequences_per_epoch, len(train_seq))
            per_epoch = max(1, per_seq // min(s2.batch_size, per_seq))
            s2 = dataclasses.replace(s2, num_epochs=-(-self.L.prefill_stage2_updates // per_epoch))
            cfg = dataclasses.replace(cfg, vjepa2_world_model=dataclasses.replace(cfg.vjepa2_world_model, stage2=s2))
        drop = self.L.final_refit_dropout
        if not prefill and (self.L.final_refit_depth or self.L.final_refit_mlp_dim or drop >= 0):
            net = cfg.models.world_model
            net = dataclasses.replace(net, depth=self.L.final_refit_depth or net.depth,
                                      mlp_dim=self.L.final_refit_mlp_dim or net.mlp_dim,
                                      dropout=net.dropout if drop < 0 else drop)
            cfg = dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, world_model=net))
        if not prefill and self.L.final_refit_heads_on_rollout:
            s2 = dataclasses.replace(cfg.vjepa2_world_model.stage2, heads_on_rollout=True)
            cfg = dataclasses.replace(cfg, vjepa2_world_model=dataclasses.replace(cfg.vjepa2_world_model, stage2=s2))
        seed_everything(cfg.run.seed)
        extra = self.stage2_extra(encoder)
        task = Stage2Task(cfg, train_seq, val_seq, self.device, np.random.default_rng(cfg.run.seed + 2), extra)
        task.log_every = 10 ** 9
        ckpt_dir = self.run.dir / name
        latest = ckpt_dir / "latest.pt"
        state = TrainState()
        if latest.is_file():
            ckpt = load_checkpoint(latest, kind="stage2")
            task.load_state_dict(ckpt, latest)
            state = restore(ckpt, task, self.run)
        elif prefill:
            self.run.rewind(self.phase_offset)
        self.echo(f"stage 2 {'on the prefill' if prefill else 'refit on the whole replay'}: {len(train_seq)} train / "
                  f"{len(val_seq)} val sequences")
        task.model.train()
        log = self.run if prefill else _LogAt(self.run, env_steps, "stage2/", f"{name}/")
        fit(task, state, log, ckpt_dir, cfg.run.checkpoint_every_steps, progress=self.progress, echo=self.echo)
        self.timings["stage2"] += time.perf_counter() - t0
        return ckpt_dir / "best.pt"

    def stage2_extra(self, encoder: torch.nn.Module) -> dict[str, Any]:
        return {"data_dir": str(self.data), "stage1_checkpoint": str(self.run.dir / "stage1" / "best.pt"),
                "encoder_kwargs": encoder.vit.kwargs, "encoder_fingerprint": encoder_fingerprint(encoder),
                "encoder": {k: v.detach().cpu() for k, v in encoder.vit.state_dict().items()}}


class _LogAt:
    """The run logger seen by a fit inside the loop: its rows go to the loop's env step ``step``, their keys'
    prefix ``old`` renamed ``new`` (a fit counts its own optimizer steps; the loop's axis is env steps)."""

    def __init__(self, run: RunLogger, step: int, old: str, new: str):
        self.run, self.step, self.old, self.new = run, step, old, new

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        rename = {k: (self.new + k[len(self.old):] if k.startswith(self.old) else k) for k in metrics}
        self.run.log({rename[k]: v for k, v in metrics.items()} | {f"{self.new}step": step}, step=self.step)

    @property
    def metrics_offset(self) -> int:
        return self.run.metrics_offset

    def rewind(self, offset: int | None) -> None:
        self.run.rewind(offset)


def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}


def learn(cfg: Config, resume: str | Path | None = None, progress: bool = True, max_iterations: int | None = None,
          echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Run (or resume) the closed loop; returns the summary written to ``summary.json``.

    ``max_iterations`` stops after that many loop iterations in this call, with ``learn.pt`` written (tests).
    """
    if resume is not None:
        rdir = Path(resume)
        if not rdir.is_dir():
            raise UserError(f"cannot resume: run folder {rdir} does not exist; pass a folder under runs/learn/")
        if not (rdir / "config.yaml").is_file():
            raise UserError(f"cannot resume: {rdir} holds no config.yaml, so it is not a `run.py learn` folder; "
                            "pass a folder under runs/learn/ or start a new run")
        import yaml

        try:
            cfg = config_from_dict(yaml.safe_load((rdir / "config.yaml").read_text()))
        except (yaml.YAMLError, TypeError, AttributeError):
            raise UserError(f"cannot resume: {rdir}/config.yaml is damaged; start a new run") from None
    device = setup_torch(cfg)
    if cfg.run.threads == 0:
        torch.set_num_threads(1)
    seed_everything(cfg.run.seed)
    with RunLogger(cfg, "learn", run_dir=resume, resume=resume is not None) as run:
        echo(f"run folder: {run.dir}")
        lr = Learner(cfg, run, device, progress, echo)
        phase = _phase(run.dir)
        state_path = run.dir / STATE_FILE
        saved = load_checkpoint(state_path, kind=KIND) if state_path.is_file() else None
        if saved is not None:
            run.rewind(saved["metrics_offset"])
            lr.timings.update(saved["timings"])
        elif phase == "none":
            run.rewind(0)
        if phase == "none":
            info = lr.prefill()
            run.log({f"prefill/{k}": v for k, v in info.items()}, step=info["env_steps"])
            _set_phase(run, lr, "prefill", info)
            phase = "prefill"
        done = json.loads((run.dir / PHASE_FILE).read_text())
        prefill, lr.phase_offset = done["prefill"], int(done["metrics_offset"])
        if saved is None:
            lr.timings.update(done["timings"])
        if phase == "prefill":
            lr.stage1()
            _set_phase(run, lr, "stage1", prefill)
            phase = "stage1"
        s1 = EncoderRefresh(cfg, run.dir / "stage1" / "best.pt", device)
        if saved is not None and saved.get("encoder_refresh") is not None:
            s1.load(saved["encoder_refresh"], run.dir / STATE_FILE)
        encoder = s1.encoder() if s1.model is not None else \
            load_encoder(run.dir / "stage1" / "best.pt").to(device).eval().requires_grad_(False)
        replay = Replay(cfg, lr.data, encoder, device)
        t0 = time.perf_counter()
        replay.load(None if saved is None else int(saved["episodes"]))
        lr.timings["encode"] += time.perf_counter() - t0
        if phase == "stage1":
            lr.stage2(encoder, replay)
            _set_phase(run, lr, "stage2", prefill)
            phase = "stage2"
        if saved is None:
            run.rewind(lr.phase_offset)  # rows of a first iteration that a kill cut short
        return _loop(cfg, run, lr, encoder, s1, replay, prefill, saved, max_iterations)


class EncoderRefresh:
    """Stage-1 fine-tuning inside the loop (``learn.encoder_every``): the masked-prediction model continues from the
    prefill's best Stage-1 checkpoint on frames of every training game so far, ``learn.encoder_updates`` steps at
    ``learn.encoder_lr``; the EMA target is the new encoder."""

    def __init__(self, cfg: Config, best: Path, device: torch.device):
        self.cfg, self.best, self.device = cfg, best, device
        self.model: torch.nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.refreshes = 0

    def _build(self) -> None:
        self.model = build_stage1_model(self.cfg).to(self.device)
        ckpt = load_checkpoint(self.best, kind="stage1")
        for name in ("online", "target", "predictor"):
            load_state(getattr(self.model, name), ckpt[name], self.best, name)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=self.cfg.learn.encoder_lr,
                                     weight_decay=self.cfg.vjepa2_world_model.stage1.weight_decay)

    def encoder(self) -> torch.nn.Module:
        from worldmodel.encoder import PooledEncoder

        assert self.model is not None
        return PooledEncoder(self.model.target).eval()

    def run(self, episodes: list[Episode], val: np.ndarray, rng: np.random.Generator, updates: int
            ) -> dict[str, float]:
        if self.model is None:
            self._build()
        s1 = self.cfg.vjepa2_world_model.stage1
        ds = FrameStackDataset([e for e, v in zip(episodes, val) if not v], self.cfg.environment.frame_stack_size)
        bs = min(s1.batch_size, len(ds))
        params = [p for p in self.model.parameters() if p.requires_grad]
        losses = []
        self.model.train()
        for _ in range(updates):
            idx = np.sort(rng.choice(len(ds), size=bs, replace=False))
            events = ds.events(idx, self.model.event_horizon).to(self.device) if self.model.uses_events else None
            future = ({k: v.to(self.device) for k, v in ds.future(idx, self.model.future_horizon).items()}
                      if self.model.uses_future else None)
            obs, future = self.model.augment(ds.batch(idx)["obs"].to(self.device), future)  # stage1.random_shift
            out = self.model(obs, None, None, events, future)
            optimizer_step(out["loss"], params, self.opt, None, s1.grad_clip)
            self.model.update_target()
            losses.append(float(out["loss"].detach()))
        self.model.eval()
        self.refreshes += 1
        return {"stage1/loss": float(np.mean(losses)) if losses else float("nan"), "stage1/refreshes": self.refreshes}

    def state(self) -> dict[str, Any] | None:
        if self.model is None:
            return None
        return {"online": self.model.online.state_dict(), "target": self.model.target.state_dict(),
                "predictor": self.model.predictor.state_dict(), "optimizer": self.opt.state_dict(),
                "refreshes": self.refreshes}

    def load(self, st: dict[str, Any], path: Path) -> None:
        self._build()
        for name in ("online", "target", "predictor"):
            load_state(getattr(self.model, name), st[name], path, name)
        self.opt.load_state_dict(st["optimizer"])
        self.refreshes = int(st["refreshes"])
        self.model.eval()


def _loop(cfg: Config, run: RunLogger, lr: Learner, encoder: torch.nn.Module, s1: EncoderRefresh, replay: Replay,
          prefill: dict[str, Any], saved: dict[str, Any] | None, max_iterations: int | None) -> dict[str, Any]:
    L, s2, device, echo = cfg.learn, cfg.vjepa2_world_model.stage2, lr.device, lr.echo
    best = load_checkpoint(run.dir / "stage2" / "best.pt", kind="stage2")

    dyn = dynamics_from_checkpoint(best, run.dir / "stage2" / "best.pt").to(device)
    torch.manual_seed(cfg.run.seed + 4)  # the loop's draws do not depend on how the run got here (resumed or not)
    opt = torch.optim.AdamW(dyn.parameters(), lr=L.stage2_lr, weight_decay=s2.weight_decay)
    loss_fn = build_world_model_loss(cfg)
    wm = WorldModel(encoder, dyn, device)
    ac = ActorCritic(wm.latent_dim, wm.num_actions, cfg.agent, device)
    ac.seed(cfg.run.seed)
    np_rng = np.random.default_rng(cfg.run.seed + 3)
    players = Players(cfg, cfg.run.seed, L.num_envs)
    actor = ActorCriticAgent(wm, ac.play_actor, ac.critic, deterministic=False, seed=cfg.run.seed + 1,
                           temperature=L.collect_temperature)
    env_steps, iteration, curve, next_eval = prefill["env_steps"], 0, [], L.eval_every
    next_refresh = L.encoder_every if L.encoder_every else None
    done_loop = final_done = False
    final_at = lr.budget - L.final_collect_steps  # env steps after which the final phase runs
    players.games = int(prefill["games"])  # the loop's games come after the prefill's
    if saved is not None:
        if saved.get("world_model_kwargs", dyn.kwargs) != dyn.kwargs:  # saved after a refit with its own network
            dyn = WorldModelTransformer(**saved["world_model_kwargs"]).to(device)
            wm.dynamics = dyn.eval().requires_grad_(False)
            opt = torch.optim.AdamW(dyn.parameters(), lr=L.stage2_lr, weight_decay=s2.weight_decay)
        load_state(dyn, saved["world_model"], run.dir / STATE_FILE, "world_model")
        opt.load_state_dict(saved["optimizer"])
        ac.load_training_state(saved["agent"])
        actor.generator.set_state(saved["player_generator"])
        set_rng_state(saved["rng"], np_rng)
        env_steps, iteration, curve, next_eval = (int(saved["env_steps"]), int(saved["iteration"]),
                                                  list(saved["curve"]), int(saved["next_eval"]))
        next_refresh = saved["next_refresh"]
        done_loop = bool(saved["done_loop"])
        final_done = bool(saved.get("final_done", done_loop))
        players.restore(saved["player"])
        echo(f"resumed at iteration {iteration}, {env_steps} env steps")
    writer = ReplayWriter(lr.data, append=True)

    def save_all(final: dict[str, Any] | None = None) -> None:
        t = time.perf_counter()
        ckpt = {"kind": KIND, "config": cfg.to_dict(), "world_model_kwargs": dyn.kwargs,
                "world_model": dyn.state_dict(), "optimizer": opt.state_dict(),
                "agent": ac.training_state(), "player_generator": actor.generator.get_state(),
                "rng": rng_state(np_rng), "env_steps": env_steps, "iteration": iteration, "curve": curve,
                "next_eval": next_eval, "done_loop": done_loop, "final_done": final_done, "player": players.state(),
                "episodes": len(replay.episodes), "timings": lr.timings, "metrics_offset": run.metrics_offset,
                "final": final, "next_refresh": next_refresh, "encoder_refresh": s1.state()}
        wm_ckpt = {"kind": "stage2", "config": cfg.to_dict(), **lr.stage2_extra(wm.encoder),
                   "world_model_kwargs": dyn.kwargs, "world_model": dyn.state_dict(), "epoch": iteration,
                   "episode_split": "stable",
                   "step": env_steps, "history": []}
        save_checkpoint(wm_ckpt, run.dir / "world_model.pt")
        save_checkpoint({"kind": CHECKPOINT_KIND, "state": ac.training_state(), "config": cfg.to_dict(),
                         "world_model": str(run.dir / "world_model.pt"), "data_dir": str(lr.data)},
                        run.dir / "agent.pt")
        run.write_json("curve.json", curve)
        save_checkpoint(ckpt, run.dir / STATE_FILE)  # last: it marks everything above as done
        lr.timings["save"] = lr.timings.get("save", 0.0) + time.perf_counter() - t

    def train_world_model(updates: int) -> dict[str, float]:
        t = time.perf_counter()
        train_seq, _ = replay.sequences()
        rows = []
        if train_seq is not None and updates > 0:
            bs = min(s2.batch_size, len(train_seq))
            order = train_seq.order(np_rng, updates * bs, s2.reward_oversample)
            dyn.train().requires_grad_(True)
            for i in range(updates):
                with autocast(cfg, device):
                    out = loss_fn(dyn, train_seq.batch(order[i * bs:(i + 1) * bs], device), train=True)
                if not math.isfinite(out["loss"].item()):
                    raise UserError(f"learn: the world model's loss became {out['loss'].item()} at iteration "
                                    f"{iteration}; lower learn.stage2_lr (e.g. by 10x) and start again")
                optimizer_step(out["loss"], list(dyn.parameters()), opt, None, s2.grad_clip)
                rows.append({k: float(out[k].detach()) for k in METRICS})
            dyn.eval().requires_grad_(False)
        lr.timings["stage2"] += time.perf_counter() - t
        return {f"stage2/{k}": v for k, v in _mean_rows(rows).items()}

    def train_agent(updates: int, recent_fraction: float = L.recent_fraction) -> dict[str, float]:
        t = time.perf_counter()
        starts = replay.starts(cfg.agent.imagine_context, device)
        z = starts.latents  # [G, D]
        G = len(z)
        recent = min(G, L.recent_steps)
        rows = []
        n_recent = int(round(recent_fraction * cfg.agent.batch_size))
        # self-imitation (agent.self_imitation): every replay transition with its real return
        real = RealTransitions.from_episodes(replay.episodes, z, cfg.agent) if cfg.agent.self_imitation > 0 else None
        for _ in range(updates):
            idx = torch.randint(G, (cfg.agent.batch_size - n_recent,), generator=ac.generator)
            idx_r = G - recent + torch.randint(recent, (n_recent,), generator=ac.generator)
            b = starts.batch(torch.cat([idx, idx_r]), device)
            rows.append(ac.update(wm, b["z0"], real, b["context"], b["context_actions"]))
        ac.actor.eval()
        ac.critic.eval()
        lr.timings["agent"] += time.perf_counter() - t
        return _mean_rows(rows)

    def refresh_encoder() -> dict[str, float]:
        """Fine-tune Stage 1 on all training games so far, re-encode the replay with its EMA target, re-fit the
        dynamics' latent statistics and let Stage 2 catch up (``learn.encoder_stage2_updates``)."""
        t = time.perf_counter()
        val = stable_split(len(replay.episodes), cfg.data.val_fraction, cfg.run.seed)
        out = s1.run(replay.episodes, val, np_rng, L.encoder_updates)
        lr.timings["stage1"] += time.perf_counter() - t
        t = time.perf_counter()
        enc = s1.encoder()
        replay.encoder = wm.encoder = enc
        replay.latents = [replay.encode(e) for e in replay.episodes]
        lr.timings["encode"] += time.perf_counter() - t
        train_seq, _ = replay.sequences()
        if train_seq is not None:
            g = torch.from_numpy(train_seq.starts)
            dyn.set_normalization(train_seq.latents[g].to(device), train_seq.latents[g + 1].to(device))
        out.update({f"{k}_after_refresh": v for k, v in train_world_model(L.encoder_stage2_updates).items()})
        return out

    def evaluate_now(episodes: int, desc: str) -> dict[str, Any]:
        t = time.perf_counter()
        agent = ActorCriticAgent(wm, ac.play_actor, ac.critic, deterministic=cfg.agent.greedy_eval,
                               seed=cfg.run.seed, temperature=cfg.agent.eval_temperature)
        eps = evaluate(agent, cfg, episodes=episodes, desc=desc, progress=False)
        ac.actor.eval()
        lr.timings["eval"] += time.perf_counter() - t
        return {"env_steps": env_steps, "returns": [e["return"] for e in eps], "eval_seeds": [e["seed"] for e in eps],
                **summarize_returns(eps)}

    try:
        iterations_this_call = 0
        while not done_loop:
            if max_iterations is not None and iterations_this_call >= max_iterations:
                break
            row: dict[str, Any] = {"iteration": iteration + 1}
            # 1. the agent learns in imagination on the current world model (before the first collection too, so the
            # loop never spends its budget on an untrained actor)
            row.update(train_agent(L.agent_updates))
            # 2. collect with the current actor
            steps = max(0, min(L.collect_steps, (lr.budget if final_done else final_at) - env_steps))
            t = time.perf_counter()
            new_before = len(replay.episodes)
            encode_s = 0.0

            def store(ep: Episode, game_seed: int) -> None:
                nonlocal encode_s
                te = time.perf_counter()
                replay.add(ep, writer, "actor-critic", game_seed)
                encode_s += time.perf_counter() - te

            players.play(actor, steps, store)
            lr.timings["encode"] += encode_s
            t += encode_s  # encoding is not env time
            env_steps += steps
            lr.timings["env"] += time.perf_counter() - t
            new_eps = replay.episodes[new_before:]
            if new_eps:
                row["collect/episode_return"] = float(np.mean([e.rewards.sum() for e in new_eps]))
                row["collect/episode_length"] = float(np.mean([len(e) for e in new_eps]))
            row["collect/games_finished"] = len(new_eps)
            row["collect/random_steps"] = players.random_steps
            last = env_steps >= lr.budget
            # 3. the world model learns from the new data (4. at final_at, the budget by default: the final phase)
            T = s2.sequence_length
            wm_updates = int(math.ceil(steps * L.stage2_train_ratio / (s2.batch_size * T)))
            agent_updates = L.agent_updates
            if not final_done and env_steps >= final_at:
                wm_updates += L.final_stage2_updates
                row.update(train_world_model(wm_updates))
                if L.final_encoder_refresh:  # the encoder sees every game before the refit and the final agent
                    row.update(refresh_encoder())
                if L.final_stage2_refit:  # new dynamics fitted on the whole replay by Stage 2's own schedule
                    refit = lr.stage2(wm.encoder, replay, "stage2_final", env_steps)
                    # the refit's own network (learn.final_refit_depth / _mlp_dim / _dropout may differ from the loop's)
                    dyn = dynamics_from_checkpoint(load_checkpoint(refit, kind="stage2"), refit).to(device)
                    dyn.eval().requires_grad_(False)
                    wm.dynamics = dyn
                    opt = torch.optim.AdamW(dyn.parameters(), lr=L.stage2_lr, weight_decay=s2.weight_decay)
                if L.final_agent_reset:  # a new actor-critic on the final world model, starts from all the replay
                    ac = ActorCritic(wm.latent_dim, wm.num_actions, cfg.agent, device)
                    ac.seed(cfg.run.seed + 5)
                    row.update(train_agent(L.final_agent_updates, recent_fraction=0.0))
                    # the new agent plays the steps left (learn.final_collect_steps), the player's draws go on
                    generator = actor.generator.get_state()
                    actor = ActorCriticAgent(wm, ac.play_actor, ac.critic, deterministic=False,
                                             seed=cfg.run.seed + 1, temperature=L.collect_temperature)
                    actor.generator.set_state(generator)
                else:
                    row.update(train_agent(L.final_agent_updates))
                agent_updates += L.final_agent_updates
                final_done = True
            else:
                row.update(train_world_model(wm_updates))
                if last:  # the final phase came before the last collection: the agent learns from it too
                    row.update(train_agent(L.agent_updates))
                    agent_updates += L.agent_updates
                elif next_refresh is not None and env_steps >= next_refresh:
                    row.update(refresh_encoder())
                    while next_refresh <= env_steps:
                        next_refresh += L.encoder_every
            _, val_seq = replay.sequences()
            row.update({f"heads/{k}": v for k, v in head_scores(dyn, val_seq).items()})
            row.update({"replay/steps": replay.steps, "replay/episodes": len(replay.episodes),
                        "stage2/updates": wm_updates, "agent/updates": agent_updates,
                        **{f"perf/{k}_s": v for k, v in lr.timings.items()}})
            iteration += 1
            iterations_this_call += 1
            if last or env_steps >= next_eval:
                point = evaluate_now(cfg.evaluation.episodes if last else L.eval_episodes,
                                     "final eval" if last else f"eval@{env_steps}")
                curve.append(point)
                row.update({"eval/return_mean": point["mean"], "eval/return_max": point["max"]})
                while next_eval <= env_steps:
                    next_eval += L.eval_every
            run.log(row, step=env_steps)
            echo(f"iteration {iteration}: {env_steps}/{lr.budget} env steps, replay {replay.steps} steps "
                 f"({len(replay.episodes)} games); stage 2 {row.get('stage2/latent_total', float('nan')):.4f} "
                 f"reward recall {row.get('heads/reward_recall', float('nan')):.2f} precision "
                 f"{row.get('heads/reward_precision', float('nan')):.2f}; imagined return "
                 f"{row.get('train/imagined_return', float('nan')):.3f}"
                 + (f"; eval {curve[-1]['mean']:.2f}" if curve and curve[-1]["env_steps"] == env_steps else ""))
            # a run stopped early (a time limit) still shows where its time went
            echo(f"  {sum(lr.timings.values()) / 60:.1f} min timed so far: "
                 + ", ".join(f"{k} {v:.0f} s" for k, v in lr.timings.items()))
            done_loop = last
            save_all(curve[-1] if done_loop else None)
    finally:
        players.close()

    if not done_loop:
        return {"run_dir": str(run.dir), "finished": False, "env_steps": env_steps, "iteration": iteration}
    final = curve[-1]
    _, val_seq = replay.sequences()
    summary = {"run_dir": str(run.dir), "finished": True, "env_steps": env_steps, "budget": lr.budget,
               "iterations": iteration, "final": {k: final[k] for k in ("mean", "std", "min", "max", "median",
                                                                         "episodes", "length_mean")},
               "returns": final["returns"], "eval_seeds": final["eval_seeds"],
               "ci95_mean": list(bootstrap_ci(np.array(final["returns"]), "mean")), "curve": curve,
               "heads": head_scores(dyn, val_seq), "prefill": prefill, "timings_s": lr.timings,
               "wall_clock_s": float(sum(v for v in lr.timings.values())),
               "world_model": str(run.dir / "world_model.pt"), "agent": str(run.dir / "agent.pt")}
    run.write_json("summary.json", summary)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    if not s["finished"]:
        return (f"learn stopped after iteration {s['iteration']} at {s['env_steps']} env steps; continue with "
                f"`python run.py learn --resume {s['run_dir']}`")
    f, h, t = s["final"], s["heads"], s["timings_s"]
    return "\n".join([
        f"run folder: {s['run_dir']}",
        f"env steps: {s['env_steps']} of {s['budget']} ({s['prefill']['env_steps']} prefill), {s['iterations']} "
        "iterations",
        f"final evaluation over {f['episodes']} games: mean {f['mean']:.2f} (95% CI {s['ci95_mean'][0]:.2f}-"
        f"{s['ci95_mean'][1]:.2f}, min {f['min']:.0f}, max {f['max']:.0f})",
        f"reward head (validation, one step ahead): recall {h.get('reward_recall', float('nan')):.2f} at precision "
        f"{h.get('reward_precision', float('nan')):.2f} over {h.get('reward_true_steps', 0)} scoring steps",
        "wall-clock: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in t.items()),
        f"world model: {s['world_model']}   agent: {s['agent']}",
    ])

#!/usr/bin/env python
"""Is a good policy readable from the encoder's latent? Imitate the RAM ball tracker on latents (a diagnostic).

The tracker (``planners.reference.TrackerPolicy``) scores ~200 by moving the paddle under the ball. This script
trains a policy with the actor's architecture (``agent.actor_critic.mlp``: 2 hidden layers of 256) to imitate it
from the latents ``z = encode(obs)`` of a world model's frozen encoder, by DAgger (Ross et al. 2011): round 0 plays
the tracker, later rounds play the imitating policy while the tracker labels every visited state. The score the
imitating policy reaches on the evaluation games bounds what an actor over these latents can learn from a
perfect teacher:

- high (tens of points): the latent holds the ball and paddle well enough, and the closed loop's weakness is in
  learning in imagination (the dynamics, the reward head, the actor's training);
- low (near the actor-critic's few points): the encoder is the limit.

``--features pixels`` trains a small CNN on the raw ``[4, 64, 64]`` frames instead, the same way: the reference
for what the 64x64 pipeline itself allows. Training games use training seeds; evaluation uses
``evaluation.block`` (default ``tuning``). Prints one JSON object. Examples:

    python benchmarks/latent_imitation.py --world-model RUN/world_model.pt --set run.threads=1
    python benchmarks/latent_imitation.py --features pixels --set run.threads=1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.actor_critic import mlp  # noqa: E402
from envs.breakout import NUM_ACTIONS, make_env  # noqa: E402
from envs.seeds import training_seed  # noqa: E402
from experiments.config import load_config  # noqa: E402
from experiments.play import evaluate, summarize_returns  # noqa: E402
from planners.reference import TrackerPolicy  # noqa: E402


def pixel_net(frames: int, num_actions: int) -> nn.Module:
    """A small CNN over ``[B, 4, 64, 64]`` frames scaled to [0, 1] (the Nature-DQN layout, 64x64 input)."""
    return nn.Sequential(nn.Conv2d(frames, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4 * 4, 256), nn.ReLU(),
                         nn.Linear(256, num_actions))


class ImitationPolicy:
    """``act(obs)``: the imitating net's action for one observation (a sample, or the mode with ``greedy``)."""

    def __init__(self, featurize, net: nn.Module, greedy: bool, seed: int):
        self.featurize, self.net, self.greedy = featurize, net, greedy
        self.gen = torch.Generator().manual_seed(seed)

    def reset(self, env=None) -> None:
        pass

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> int:
        logits = self.net(self.featurize(np.asarray(obs)[None]))[0]
        if self.greedy:
            return int(logits.argmax())
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=self.gen))


def collect(env_cfg, policy, steps: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray, list[float], int,
                                                                         dict[str, np.ndarray]]:
    """Play ``steps`` env steps with ``policy`` (None: the tracker itself), the tracker labelling every state.

    Returns the observations, the tracker's labels, the returns of the games finished, the next stream, and the
    trajectory (``action`` executed, ``reward``, ``life_loss`` after each step; ``start``: a game starts here)."""
    env = make_env(env_cfg, seed=training_seed(seed, stream))
    obs, _ = env.reset(seed=training_seed(seed, stream))
    tracker = TrackerPolicy(env, seed=training_seed(seed, stream))
    if policy is not None:
        policy.reset(env)
    xs, ys, returns, ret = [], [], [], 0.0
    traj = {"action": [], "reward": [], "life_loss": [], "start": []}
    start = True
    for _ in range(steps):
        label = tracker.act(obs)  # every step, so its memory of the ball and paddle stays current
        xs.append(obs)
        ys.append(label)
        action = label if policy is None else policy.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        for key, value in (("action", info["action"]), ("reward", reward), ("life_loss", info["life_loss"]),
                           ("start", start)):
            traj[key].append(value)
        start = False
        ret += reward
        if terminated or truncated:
            returns.append(ret)
            ret, stream = 0.0, stream + 1
            obs, _ = env.reset(seed=training_seed(seed, stream))
            tracker.reset(env)
            start = True
            if policy is not None:
                policy.reset(env)
    env.close()
    traj = {k: np.asarray(v, dtype=np.float32 if k == "reward" else np.int64) for k, v in traj.items()}
    return np.stack(xs), np.array(ys, dtype=np.int64), returns, stream + 1, traj


def train(net: nn.Module, feats: torch.Tensor, labels: torch.Tensor, updates: int, batch: int, lr: float,
          gen: torch.Generator) -> float:
    """Cross-entropy of the tracker's labels; returns the mean loss of the last 100 updates."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    net.train()
    for _ in range(updates):
        idx = torch.randint(0, len(labels), (batch,), generator=gen)
        loss = nn.functional.cross_entropy(net(feats[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return float(np.mean(losses[-100:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", choices=("latent", "pixels"), default="latent")
    ap.add_argument("--world-model", help="Stage-2 checkpoint or learn run's world_model.pt (for --features latent)")
    ap.add_argument("--preset", default="atari100k")
    ap.add_argument("--rounds", type=int, default=4, help="DAgger rounds (round 0 plays the tracker)")
    ap.add_argument("--steps", type=int, default=5000, help="labelled env steps per round")
    ap.add_argument("--updates", type=int, default=3000, help="training updates after each round")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--episodes", type=int, default=10, help="evaluation games (evaluation.block)")
    ap.add_argument("--agent", help="an agent.pt over the same world model: also play it, and compare the policies' "
                    "imagined rewards and life losses with their real ones (does the world model rank them?)")
    ap.add_argument("--horizons", default="15,45", help="imagination horizons of the --agent comparison")
    ap.add_argument("--save", help="folder to keep the imitating net, the DAgger latents and trajectories in")
    ap.add_argument("--load", help="a --save folder: skip DAgger and the games, and check --world-model (a Stage 2 "
                    "over the same encoder) with its latents, imitating net and real figures")
    ap.add_argument("--imagine-updates", type=int, default=0,
                    help="with --load: start an actor-critic from the imitating policy and train it this many updates "
                    "in imagination (the agent section's settings), playing the games before and every "
                    "--imagine-eval-every updates: does imagination keep a good policy?")
    ap.add_argument("--imagine-eval-every", type=int, default=600)
    ap.add_argument("--imagine-finetune", type=int, default=0,
                    help="with --imagine-updates: first train the world model's dynamics this many Stage-2 steps on "
                    "the saved plays (tracker, imitation and actor play): does a model that saw good play keep it?")
    ap.add_argument("--imagine-finetune-plays", default="dagger,agent",
                    help="the saved plays --imagine-finetune trains on (agent alone: the control without good play)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    if args.features == "latent" and not args.world_model:
        ap.error("--features latent needs --world-model PATH (a Stage-2 checkpoint or a learn run's world_model.pt)")

    cfg = load_config(args.preset, ["evaluation.block=tuning", *args.overrides])  # choices are made on tuning games
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    env_cfg = dataclasses.replace(cfg.environment, terminal_on_life_loss=False)

    if args.features == "latent":
        from worldmodel import load_world_model

        model = load_world_model(args.world_model)

        def featurize(obs: np.ndarray) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([model.encode(obs[i:i + 1024]) for i in range(0, len(obs), 1024)])

        net = mlp(model.latent_dim, 256, NUM_ACTIONS)
    else:
        def featurize(obs: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(obs).float() / 255.0

        net = pixel_net(env_cfg.frame_stack_size, NUM_ACTIONS)

    t0 = time.perf_counter()
    if args.load:
        saved = torch.load(Path(args.load) / "imitation.pt", weights_only=False)
        check = featurize(saved["check_obs"])
        if not torch.allclose(check, saved["check_latents"], atol=1e-4):
            sys.exit(f"{args.world_model}'s encoder is not the one of {args.load}; pass a world model over it")
        net.load_state_dict(saved["net"])
        plays = saved["plays"] if "plays" in saved else {"dagger": (saved["latents"], saved["traj"])}
        if args.imagine_updates:
            out = {"world_model": args.world_model, "load": args.load}
            if args.imagine_finetune:
                chosen = {k: plays[k] for k in args.imagine_finetune_plays.split(",")}
                out["finetune"] = finetune_on_plays(cfg, model, chosen, args.imagine_finetune, args.seed)
            out["imagination_from_imitation"] = imagine_from(
                cfg, model, net, torch.cat([z for z, _ in plays.values()]), args.imagine_updates,
                args.imagine_eval_every, args.episodes, args.seed)
            out["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(out))
            return
        out = {"world_model": args.world_model, "load": args.load, **check_imagination(
            cfg, model, net, saved["agent"], plays, args.horizons, args.seed, saved["real"])}
        out["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(out))
        return
    feats, labels, rounds, stream, trajs = [], [], [], 0, []
    policy = None
    for r in range(args.rounds):
        obs, ys, returns, stream, traj = collect(env_cfg, policy, args.steps, args.seed, stream)
        traj["start"][0] = 1  # rounds are separate stretches of play
        trajs.append(traj)
        feats.append(featurize(obs) if args.features == "latent" else torch.as_tensor(obs))  # pixels stay uint8
        labels.append(torch.as_tensor(ys))
        x, y = torch.cat(feats), torch.cat(labels)
        train_net = net if args.features == "latent" else nn.Sequential(_Scale(), net)
        with torch.no_grad():  # held-out: the states are new to the net (round 0: the untrained net)
            acc = float((train_net(feats[-1]).argmax(-1) == labels[-1]).float().mean())
        loss = train(train_net, x, y, args.updates, args.batch, args.lr, gen)
        rounds.append({"round": r, "behaviour": "tracker" if policy is None else "imitation",
                       "behaviour_returns": returns, "labels": int(len(y)), "train_loss": round(loss, 4),
                       "accuracy_before_training": round(acc, 3),
                       "action_shares": np.bincount(ys, minlength=NUM_ACTIONS).round().tolist()})
        print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
        policy = ImitationPolicy(featurize, net, greedy=False, seed=args.seed)

    out = {"features": args.features, "world_model": args.world_model, "preset": args.preset,
           "block": cfg.evaluation.block, "rounds": rounds}
    for mode in ("sampled", "greedy"):
        agent = ImitationPolicy(featurize, net, greedy=mode == "greedy", seed=args.seed)
        res = evaluate(agent, cfg, episodes=args.episodes, progress=False)
        out[mode] = {"returns": [r["return"] for r in res], **summarize_returns(res)}
    if args.agent:
        from agent.player import load_agent
        from planners.reference import RandomPolicy

        actor = load_agent(args.agent, model, seed=args.seed)
        real = {"imitation": out["sampled"],
                "agent": summarize_returns(evaluate(actor, cfg, episodes=args.episodes, progress=False)),
                "random": summarize_returns(evaluate(RandomPolicy(seed=args.seed), cfg, episodes=args.episodes,
                                                     progress=False))}
        a_obs, _, _, _, a_traj = collect(env_cfg, actor, args.steps, args.seed, stream)  # the actor's own play
        plays = {"dagger": (x, {k: np.concatenate([t[k] for t in trajs]) for k in trajs[0]}),
                 "agent": (featurize(a_obs), a_traj)}
        out.update(check_imagination(cfg, model, net, args.agent, plays, args.horizons, args.seed, real))
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            check_obs = obs[:64]
            torch.save({"net": net.state_dict(), "plays": plays, "agent": args.agent, "real": real,
                        "check_obs": check_obs, "check_latents": featurize(check_obs)},
                       Path(args.save) / "imitation.pt")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


def finetune_on_plays(cfg, model, plays: dict[str, tuple[torch.Tensor, dict[str, np.ndarray]]], updates: int,
                      seed: int) -> dict[str, float]:
    """Train the dynamics ``updates`` Stage-2 steps (the loop's optimiser and loss) on windows of the saved plays
    that lie inside one game; returns the mean losses of the first and last 100 steps."""
    from experiments.builders import build_world_model_loss
    from experiments.fit import optimizer_step
    from worldmodel.dynamics_loss import METRICS

    s2 = cfg.vjepa2_world_model.stage2
    T, bs = s2.sequence_length, s2.batch_size
    zs, trajs, starts, offset = [], [], [], 0
    for z, traj in plays.values():
        starts.append(window_starts(traj["start"], T + 1) + offset)  # z_t .. z_{t+T} and T transitions in one game
        zs.append(z)
        trajs.append(traj)
        offset += len(z)
    z = torch.cat(zs)
    tr = {k: np.concatenate([t[k] for t in trajs]) for k in ("action", "reward", "life_loss")}
    starts = np.concatenate(starts)
    dyn, loss_fn = model.dynamics, build_world_model_loss(cfg)
    opt = torch.optim.AdamW(dyn.parameters(), lr=cfg.learn.stage2_lr, weight_decay=s2.weight_decay)
    rng = np.random.default_rng(seed)
    rows = []
    dyn.train().requires_grad_(True)
    for _ in range(updates):
        t = rng.choice(starts, bs)[:, None] + np.arange(T + 1)[None]  # [B, T+1]
        batch = {"z": z[t], "actions": torch.as_tensor(tr["action"][t[:, :-1]]),
                 "rewards": torch.as_tensor(tr["reward"][t[:, :-1]]),
                 "life_loss": torch.as_tensor(tr["life_loss"][t[:, :-1]])}
        out = loss_fn(dyn, batch, train=True)
        optimizer_step(out["loss"], list(dyn.parameters()), opt, None, s2.grad_clip)
        rows.append({k: float(out[k].detach()) for k in METRICS})
    dyn.eval().requires_grad_(False)
    mean = (lambda part: {k: round(float(np.mean([r[k] for r in part])), 4) for k in part[0]})
    return {"updates": updates, "windows": int(len(starts)), "first_100": mean(rows[:100]),
            "last_100": mean(rows[-100:])}


def imagine_from(cfg, model, net: nn.Module, starts: torch.Tensor, updates: int, every: int, episodes: int,
                 seed: int) -> list[dict]:
    """Train an actor-critic whose actor starts as the imitating policy (same layout: ``mlp`` logits) in imagination
    from the real ``starts`` latents; the real score before training and every ``every`` updates."""
    from agent.actor_critic import ActorCritic
    from agent.player import ActorCriticAgent

    ac = ActorCritic(model.latent_dim, model.num_actions, cfg.agent)
    ac.actor.net.load_state_dict(net.state_dict())
    ac.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    points, rows = [], []
    for u in range(updates + 1):
        if u % every == 0 or u == updates:
            ac.actor.eval()
            res = evaluate(ActorCriticAgent(model, ac.actor, deterministic=False, seed=seed), cfg, episodes=episodes,
                           progress=False)
            last = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]} if rows else {}
            points.append({"updates": u, **summarize_returns(res), "returns": [r["return"] for r in res],
                           "train": last})
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
            rows = []
        if u == updates:
            break
        ac.actor.train()
        rows.append(ac.update(model, starts[torch.randint(len(starts), (cfg.agent.batch_size,), generator=gen)]))
    return points


@torch.no_grad()
def check_imagination(cfg, model, net: nn.Module, agent_path: str,
                      plays: dict[str, tuple[torch.Tensor, dict[str, np.ndarray]]], horizons: str, seed: int,
                      real: dict[str, dict]) -> dict:
    """Does the world model tell good play from bad? Two checks:

    - ``ranking``: real vs imagined points and life losses per step of the imitating policy, the ``agent_path``
      actor and uniform random play, imagined from the same 2048 real start latents (the DAgger states);
    - ``open_loop``: for each play in ``plays`` (``dagger``: tracker and imitation play; ``agent``: the actor's
      own), imagine the real next H actions from real latents and compare P(a life is lost within H steps) with
      what happened (AUC, Brier score, means), and the imagined with the real points.
    """
    latents = plays["dagger"][0]
    from agent.actor_critic import imagine_with_policy
    from agent.player import load_agent

    agent = load_agent(agent_path, model, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    hs = [int(h) for h in horizons.split(",")]
    policies = {
        "imitation": lambda z: torch.multinomial(torch.softmax(net(z), -1), 1, generator=gen).squeeze(-1),
        "agent": lambda z: agent.actor.act(z, generator=gen),
        "random": lambda z: torch.randint(0, NUM_ACTIONS, (len(z),), generator=gen),
    }
    lives = 5  # full games: every game ends after the fifth life (or at the frame cap)
    z0 = latents[torch.randperm(len(latents), generator=gen)[:2048]]
    out = {}
    for name, fn in policies.items():
        row = {"real_mean": real[name]["mean"], "real_points_per_step": real[name]["mean"] / real[name]["length_mean"],
               "real_life_losses_per_step": lives / real[name]["length_mean"]}
        for h in hs:
            roll = imagine_with_policy(model, z0, fn, h)
            alive = torch.cumprod(roll["continues"], 1)  # P(no life lost up to and including step t)
            before = torch.cat([torch.ones_like(alive[:, :1]), alive[:, :-1]], 1)
            row[f"imagined_points_per_step_h{h}"] = float((before * roll["rewards"]).sum(1).mean() / h)
            row[f"imagined_life_loss_by_h{h}"] = float(1.0 - alive[:, -1].mean())
        out[name] = row
    return {"ranking": out, "open_loop": {name: {f"h{h}": open_loop(model, z, traj, h, gen) for h in hs}
                                          for name, (z, traj) in plays.items()}}


def window_starts(start: np.ndarray, h: int) -> np.ndarray:
    """Indices t whose next ``h`` steps (t .. t+h-1) lie in one game; ``start[t]`` is 1 where a game starts."""
    game = np.cumsum(start)  # game index of each step
    return np.array([t for t in range(len(start) - h + 1) if game[t] == game[t + h - 1]], dtype=np.int64)


def open_loop(model, latents: torch.Tensor, traj: dict[str, np.ndarray], h: int, gen: torch.Generator,
              windows: int = 4096) -> dict[str, float]:
    """Imagine the real actions from real latents; P(life lost within h) and points against what happened."""
    starts = window_starts(traj["start"], h)
    starts = starts[torch.randperm(len(starts), generator=gen)[:windows].numpy()]
    idx = starts[:, None] + np.arange(h)[None]  # [W, h]
    _, rewards, cont = model.imagine(latents[starts], torch.as_tensor(traj["action"][idx]))
    pred = (1.0 - torch.prod(cont, 1)).numpy()
    real = traj["life_loss"][idx].any(1).astype(np.float64)
    pts_pred, pts_real = rewards.sum(1).numpy(), traj["reward"][idx].sum(1)
    return {"windows": int(len(starts)), "real_life_loss_rate": float(real.mean()),
            "pred_life_loss": float(pred.mean()),
            "life_loss_auc": auc(pred, real), "life_loss_brier": float(np.mean((pred - real) ** 2)),
            "real_points": float(pts_real.mean()), "pred_points": float(pts_pred.mean()),
            "points_corr": float(np.corrcoef(pts_pred, pts_real)[0, 1])}


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve: P(a positive scores above a negative), ties counted half."""
    pos, neg = score[label > 0], score[label == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    both = np.concatenate([pos, neg])
    values, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties get their average rank
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


class _Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0


if __name__ == "__main__":
    main()

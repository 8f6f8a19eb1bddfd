"""An actor-critic agent that plays the real game from observations: encode, then the actor.

``ActorCriticAgent`` follows the evaluation interface ``planners.base.Agent``
(``reset(env=None)``, ``act(obs) -> int``) and SB3's ``predict(obs, state, episode_start,
deterministic) -> (actions, state)``, so ``stable_baselines3.common.evaluation.evaluate_policy``
accepts it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.actor_critic import Actor, Critic
from envs.errors import UserError
from worldmodel.checkpoint import REQUIRED, load_state, require, safe_torch_load
from worldmodel.protocol import LatentWorldModel

CHECKPOINT_KIND = "agent"


class ActorCriticAgent:
    """Acts with ``actor(encode(obs))``; ``deterministic`` picks the mode instead of sampling, and ``temperature``
    T samples with probabilities proportional to ``pi(a|z)^(1/T)`` (1 = the policy itself)."""

    def __init__(self, model: LatentWorldModel, actor: Actor, critic: Critic | None = None, deterministic: bool = False,
                 seed: int = 0, temperature: float = 1.0):
        if actor.latent_dim != model.latent_dim or actor.num_actions != model.num_actions:
            raise UserError(f"the agent is for latent_dim={actor.latent_dim}, num_actions={actor.num_actions} but the "
                            f"world model has {model.latent_dim}, {model.num_actions}; pass the world model the agent "
                            "was trained on")
        self.model, self.actor, self.critic = model, actor.eval(), critic.eval() if critic is not None else None
        self.deterministic = deterministic
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.last_value: float | None = None  # V(z) of the latest observation, when a critic is attached
        self.last_info: dict[str, Any] = {}  # {"predicted_return": V(z)} for plan-in-env's video overlay

    @property
    def device(self) -> torch.device:
        return next(self.actor.parameters()).device

    def reset(self, env: Any = None) -> None:
        self.last_value = None
        self.last_info = {}

    @torch.no_grad()
    def _actions(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        obs = np.asarray(obs)
        assert obs.ndim == 4 and obs.dtype == np.uint8, f"expected uint8 obs [B,4,H,W], got {obs.dtype} {obs.shape}"
        z = self.model.encode(obs).to(self.device).float()  # [B, D]
        if self.critic is not None:
            self.last_value = float(self.critic(z[:1])[0])
            self.last_info = {"predicted_return": self.last_value}
        logp = self.actor.log_probs(z)  # [B, A]
        if deterministic:
            a = logp.argmax(-1)
        else:  # at T = 1 the same draws as the policy's own probabilities
            probs = logp.exp() if self.temperature == 1.0 else torch.softmax(logp / self.temperature, dim=-1)  # [B, A]
            a = torch.multinomial(probs.cpu(), 1, generator=self.generator).squeeze(-1)
        return a.cpu().numpy().astype(np.int64)

    def act(self, obs: np.ndarray) -> int:
        """One action for one observation ``uint8 [4, 64, 64]``."""
        return int(self._actions(np.asarray(obs)[None], self.deterministic)[0])

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:
        """SB3 interface: ``obs [4,H,W]`` or ``[B,4,H,W]`` -> (actions ``[]`` or ``[B]``, state)."""
        obs = np.asarray(observation)
        single = obs.ndim == 3
        acts = self._actions(obs[None] if single else obs, deterministic)
        return (acts[0] if single else acts), state


def load_agent_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read an agent checkpoint (``kind == "agent"``) with ``weights_only=True``; UserError when unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / "agent.pt"
    if not path.is_file():
        raise UserError(f"agent checkpoint {path} does not exist; pass the agent.pt of a train-agent run "
                        "(or its run folder)")
    ckpt = safe_torch_load(path, "cpu", "re-run train-agent or pass another file", "agent checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path} is not an agent checkpoint (kind={kind!r}); pass the agent.pt written by "
                        "`run.py train-agent`")
    require(ckpt, path, REQUIRED["agent"])
    st, agent_cfg = ckpt["state"], (ckpt["config"] or {}).get("agent") if isinstance(ckpt["config"], dict) else None
    if not isinstance(st, dict) or not isinstance(agent_cfg, dict) or "hidden_dim" not in agent_cfg:
        raise UserError(f"agent checkpoint {path} has no valid agent state or config; re-run train-agent or pass "
                        "another file")
    require(st, path, ("actor", "critic", "latent_dim", "num_actions"), "in its agent state")
    return ckpt


def recorded_world_model(ckpt: dict[str, Any], path: str | Path) -> Path:
    """The world model an agent checkpoint (at ``path``) records. The path is stored as train-agent saw it, relative
    to the folder it ran in: from another folder it is looked up under each folder above the checkpoint (the run
    folder sits below the folder it ran in), so ``--agent /abs/runs/.../agent.pt`` works from anywhere. Returned as
    recorded when no such file exists (the loader then names it)."""
    recorded = Path(str(ckpt["world_model"]))
    if recorded.exists() or recorded.is_absolute():
        return recorded
    for folder in Path(path).resolve().parents:
        if (folder / recorded).is_file():
            return folder / recorded
    return recorded


def build_agent_nets(ckpt: dict[str, Any], device: torch.device | str = "cpu", path: str | Path = "agent.pt"
                     ) -> tuple[Actor, Critic]:
    """Actor and critic with the weights of an agent checkpoint (read by :func:`load_agent_checkpoint`), in eval
    mode; weights that do not fit are a UserError naming ``path``."""
    st = ckpt["state"]
    hidden = int(ckpt["config"]["agent"]["hidden_dim"])
    actor = Actor(int(st["latent_dim"]), int(st["num_actions"]), hidden)
    critic = Critic(int(st["latent_dim"]), hidden)
    load_state(actor, st.get("actor_ema", st["actor"]), path, "actor")  # the playing weights (agent.actor_ema_decay)
    load_state(critic, st["critic"], path, "critic")
    return actor.to(device).eval(), critic.to(device).eval()


def load_agent(path: str | Path, model: LatentWorldModel, deterministic: bool = False, seed: int = 0,
               device: torch.device | str = "cpu") -> ActorCriticAgent:
    """An :class:`ActorCriticAgent` from a train-agent checkpoint over ``model``."""
    actor, critic = build_agent_nets(load_agent_checkpoint(path), device, path)
    return ActorCriticAgent(model, actor, critic, deterministic=deterministic, seed=seed)

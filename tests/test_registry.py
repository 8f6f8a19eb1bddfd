"""The one registry of agents (experiments/agents.py): the commands take their names from it, a new entry
works with no other change, and the world model + actor-critic wiring is built in one place (tiny preset)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from envs.errors import UserError
from experiments.agents import REGISTRY, AgentInputs, AgentSpec, BuiltAgent, agent_names, build_agent
from experiments.config import load_config
from run import cli

from .conftest import save_untrained_world_model


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def accepted_names(command: str, option: str, *extra: str) -> list[str]:
    """The names a command lists when given an unknown one (parsing stops before anything runs)."""
    res = invoke(command, option, "no-such-agent", *extra)
    assert res.exit_code == 2, res.output
    assert "unknown agent 'no-such-agent'" in res.stderr
    return re.search(r"accepted: (.*)", res.stderr).group(1).strip().split(", ")


ACTING = {"plan-in-env": ("--planner",), "collect": ("--policy", "--steps", "1", "--out", "unused")}


# ------------------------------------------------------------------ (a) the commands accept exactly the registry
def test_commands_accept_exactly_the_registry_names():
    acting = agent_names(acting_only=True)
    assert set(acting) == {"random", "tracker", "oracle", "cem", "cem-value", "actor-critic"}
    assert agent_names() == [*REGISTRY]
    assert {"ppo", "dqn", "a2c", "dqn-sb3", "ppo-sb3"} <= set(agent_names()) - set(acting)
    for command, (option, *extra) in ACTING.items():
        assert accepted_names(command, option, *extra) == acting, command
        assert f"[{'|'.join(acting)}]" in invoke(command, "--help").output, command
    assert accepted_names("compare-baselines", "--agents") == agent_names()
    res = invoke("compare-baselines", "--agents", "random,ppo,nope")
    assert res.exit_code == 2 and "unknown agent 'nope'" in res.stderr


def test_every_registered_agent_is_described_in_help():
    out = CliRunner().invoke(cli, ["compare-baselines", "--help"], terminal_width=1000, max_content_width=1000).output
    for spec in REGISTRY.values():
        assert f"{spec.name}: {spec.description}" in out


# ------------------------------------------------------------------ (b) a new entry needs no other change
class ConstantNoop:
    def reset(self, env=None) -> None:
        pass

    def act(self, obs: np.ndarray) -> int:
        return 0


@pytest.fixture
def noop_agent():
    spec = AgentSpec("noop", lambda cfg, inputs, seed: BuiltAgent(ConstantNoop(), 0, {"policy": "NOOP"}),
                     "always NOOP")
    REGISTRY[spec.name] = spec
    yield spec
    del REGISTRY[spec.name]


def test_a_registered_agent_plays_through_plan_in_env_and_collect(noop_agent, tmp_path):
    res = invoke("plan-in-env", "--planner", "noop", "--preset", "tiny", "--episodes", "1", "--max-steps", "30",
                 "--no-random", "--set", "run.wandb=disabled", "--set", f"run.runs_dir={tmp_path}")
    assert res.exit_code == 0, res.output
    run_dir = next((tmp_path / "plan-in-env").iterdir())
    rows = [json.loads(x) for x in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert [r["planner"] for r in rows] == ["noop"] and rows[0]["length"] == 30
    assert json.loads((run_dir / "summary.json").read_text())["noop"]["episodes"] == 1

    res = invoke("collect", "--policy", "noop", "--steps", "40", "--out", str(tmp_path / "d"), "--preset", "tiny")
    assert res.exit_code == 0, res.output
    # every collected action is the policy's NOOP, except the serve's FIRE steps (recorded as executed)
    counts = {k: int(v) for k, v in re.findall(r"'(NOOP|FIRE|RIGHT|LEFT)': (\d+)", res.output)}
    assert counts["RIGHT"] == counts["LEFT"] == 0 and counts["NOOP"] + counts["FIRE"] == 40 and counts["FIRE"] >= 1
    assert "noop" in accepted_names("compare-baselines", "--agents")


# ------------------------------------------------------------------ (c) world model + actor-critic wired once
@pytest.fixture(scope="module")
def agent_files(tmp_path_factory, tiny_data):
    """A tiny world model that records its data, and an agent checkpoint trained on it (random weights)."""
    from agent.actor_critic import Actor, Critic
    from worldmodel import load_world_model

    root = tmp_path_factory.mktemp("agent")
    wm_path = save_untrained_world_model(root / "wm.pt", data_dir=tiny_data)
    wm = load_world_model(wm_path)
    cfg = load_config("tiny")
    torch.manual_seed(1)
    actor = Actor(wm.latent_dim, wm.num_actions, cfg.agent.hidden_dim)
    critic = Critic(wm.latent_dim, cfg.agent.hidden_dim)
    state = {"latent_dim": wm.latent_dim, "num_actions": wm.num_actions, "actor": actor.state_dict(),
             "critic": critic.state_dict()}
    torch.save({"kind": "agent", "config": cfg.to_dict(), "state": state, "world_model": str(wm_path),
                "data_dir": str(tiny_data)}, root / "agent.pt")
    return wm_path, root / "agent.pt", critic


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def counting(calls: list, fn):
    """``fn`` that first records its first argument in ``calls``."""

    def wrapped(path, *args, **kwargs):
        calls.append(path)
        return fn(path, *args, **kwargs)

    return wrapped


def test_cem_with_an_agent_gets_its_critic_and_prior_from_one_wiring(agent_files, monkeypatch):
    import agent.player
    import worldmodel

    wm_path, agent_pt, critic = agent_files
    loads = {"world_model": [], "agent": []}
    monkeypatch.setattr(worldmodel, "load_world_model", counting(loads["world_model"], worldmodel.load_world_model))
    monkeypatch.setattr(agent.player, "load_agent_checkpoint",
                        counting(loads["agent"], agent.player.load_agent_checkpoint))
    cfg = load_config("tiny", ["planner.use_value=true", "planner.policy_samples=2"])
    inputs = AgentInputs(agent_checkpoint=agent_pt, count_env_steps=True)  # no world model: the agent's is used

    cem = build_agent("cem", cfg, inputs, seed=3)
    assert loads == {"world_model": [wm_path], "agent": [agent_pt]}  # each read once
    assert same_weights(cem.agent.value_fn, critic) and cem.agent.policy_fn is not None
    assert cem.env_steps == 600 and cem.hyperparams["world_model"] == str(wm_path)  # the data it records
    cem.agent.reset()
    assert 0 <= cem.agent.act(np.zeros((4, 64, 64), np.uint8)) < 4

    ac = build_agent("actor-critic", cfg, inputs, seed=3)
    assert same_weights(ac.agent.critic, critic) and ac.env_steps == 600
    assert 0 <= ac.agent.act(np.zeros((4, 64, 64), np.uint8)) < 4
    assert not ac.agent.deterministic and ac.hyperparams["policy"] == "sample"
    greedy = build_agent("actor-critic", load_config("tiny", ["agent.eval_policy=greedy"]), inputs, seed=3)
    assert greedy.agent.deterministic and greedy.hyperparams["policy"] == "greedy"
    obs = np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        z = greedy.agent.model.encode(obs[None]).float().clone()
        best = int(greedy.agent.actor.log_probs(z).argmax(-1)[0])
    assert all(greedy.agent.act(obs) == best for _ in range(5))  # the mode, every time
    with pytest.raises(UserError, match="agent.eval_policy"):
        load_config("tiny", ["agent.eval_policy=argmax"])
    cool = build_agent("actor-critic", load_config("tiny", ["agent.eval_temperature=0.5"]), inputs, seed=3)
    assert not cool.agent.deterministic and cool.agent.temperature == 0.5
    assert cool.hyperparams["policy"] == "sample at T=0.5" and ac.agent.temperature == 1.0
    for bad in (["agent.eval_temperature=0"], ["agent.eval_temperature=0.5", "agent.eval_policy=greedy"]):
        with pytest.raises(UserError, match="agent.eval_temperature"):
            load_config("tiny", bad)


def test_world_model_agents_need_their_inputs_in_one_sentence(tmp_path):
    res = invoke("plan-in-env", "--planner", "actor-critic", "--preset", "tiny", "--wandb", "disabled")
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        "error: --planner actor-critic needs a trained actor-critic: pass --agent PATH (an agent.pt written by "
        "`run.py train-agent`)"]
    res = invoke("collect", "--policy", "cem", "--steps", "10", "--out", str(tmp_path / "d"), "--preset", "tiny")
    assert res.exit_code == 2 and "pass --checkpoint PATH" in res.stderr and not (tmp_path / "d").exists()
    wm = save_untrained_world_model(tmp_path / "wm.pt")  # records no data folder
    with pytest.raises(UserError, match="pass --data DIR"):
        build_agent("cem", load_config("tiny"), AgentInputs(world_model=wm, count_env_steps=True))


def test_a_world_model_meets_frames_of_its_own_size_or_one_sentence(agent_files, tmp_path, monkeypatch):
    """A world model trained on 64x64 frames, played or trained on with a 96x96 environment: one sentence naming
    the settings it was trained with, exit 2, before any run folder is made."""
    wm_path, agent_pt, _ = agent_files
    monkeypatch.chdir(tmp_path)
    size = ["--set", "environment.image_height=96", "--set", "environment.image_width=96"]
    for args in (["plan-in-env", "--planner", "actor-critic", "--agent", str(agent_pt)],
                 ["plan-in-env", "--planner", "cem", "--checkpoint", str(wm_path)],
                 ["train-agent", "--world-model", str(wm_path)]):
        res = invoke(*args, "--preset", "tiny", "--wandb", "disabled", *size)
        assert res.exit_code == 2, (args, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "trained on 4x64x64 frames but the environment makes 4x96x96" in lines[0], lines
        assert "--set environment.image_height=64 --set environment.image_width=64" in lines[0]
        assert not (tmp_path / "runs").exists()
    ac = build_agent("actor-critic", load_config("tiny"), AgentInputs(agent_checkpoint=agent_pt), seed=0)
    assert ac.agent.model.frame_shape == (4, 64, 64)  # the frames it was trained on, as the checkpoint says

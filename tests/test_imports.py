"""Import boundaries: the library loads without the emulator, and the emulator still loads when an env is made."""

import subprocess
import sys

from .conftest import ROOT

# Everything a model, planner or config user imports; none of it may need ale_py.
EMULATOR_FREE = ("worldmodel", "worldmodel.world_model", "worldmodel.protocol", "planners.base", "planners.cem",
                 "planners.oracle", "planners.reference", "agent", "agent.actor_critic", "agent.player", "envs",
                 "experiments.config", "experiments.builders")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_library_imports_without_the_emulator():
    code = ("import importlib, sys\n"
            "sys.modules['ale_py'] = None  # any 'import ale_py' now raises ImportError\n"
            f"for name in {EMULATOR_FREE!r}:\n"
            "    importlib.import_module(name)\n"
            "assert sys.modules.get('ale_py') is None, 'ale_py was imported'\n"
            "assert not [m for m in sys.modules if m.startswith('ale_py.')], 'an ale_py submodule was imported'\n"
            "print('ok')\n")
    res = run_python(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_make_env_loads_the_emulator_on_first_use():
    code = ("import sys\n"
            "from envs.breakout import make_env\n"
            "from experiments.config import load_config\n"
            "assert 'ale_py' not in sys.modules\n"
            "env = make_env(load_config('tiny').environment, seed=0)\n"
            "obs, info = env.reset(seed=0)\n"
            "obs, reward, terminated, truncated, info = env.step(2)\n"
            "assert obs.shape == (4, 64, 64) and 'ale_py' in sys.modules\n"
            "env.close()\n"
            "print('ok')\n")
    res = run_python(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr

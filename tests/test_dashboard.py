"""The episode-return dashboard: built from a tiny run, rendered in headless Chromium with no errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from experiments.compare import compare_baselines
from experiments.config import load_config
from experiments.dashboard import build_dashboard
from experiments.runlog import RunLogger

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
                  "--v=0", "--virtual-time-budget=10000", "--dump-dom"]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        msg = ("chromium is not installed: install Debian's package with `apt-get install chromium` "
               "(`make test` does it when run as root)")
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; CI=true, so the dashboard test may not skip")
        pytest.skip(msg)
    return path


def render(html_path, tmp_path) -> tuple[str, list[str]]:
    """The DOM after load and the page's console messages (Chromium logs them as ':CONSOLE' lines)."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    res = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", html_path.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    return res.stdout, console


@pytest.fixture(scope="module")
def tiny_dashboard(tmp_path_factory):
    """The dashboard of a tiny comparison (DQN + random) plus a world-model run's losses."""
    root = tmp_path_factory.mktemp("dash")
    cfg = load_config("tiny", ["run.wandb=disabled"])
    compare_baselines(cfg, ["dqn", "random"], seeds=1, out=root / "cmp", progress=False, dashboard=False)
    # A pretrain-style run folder: losses logged through the project's RunLogger.
    with RunLogger(cfg, "pretrain", run_dir=root / "pretrain") as run:
        for step in range(1, 6):
            run.log({"train/loss": 1.0 / step, "val/loss": 1.2 / step, "train/lr": 1e-4}, step=step)
    return build_dashboard([root / "cmp", root / "pretrain"], root / "cmp" / "dashboard.html")


def test_dashboard_is_self_contained(tiny_dashboard):
    page = tiny_dashboard.read_text()
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert page.count("<img class='plot'") == 3  # learning curves, final returns, one loss panel
    assert "| dqn |" not in page and "<td>dqn</td>" in page and "<td>random</td>" in page
    for name in ("learning_curves.png", "final_returns.png", "losses_0.png"):
        assert (tiny_dashboard.parent / "plots" / name).stat().st_size > 1000


def test_dashboard_renders_every_plot_without_errors(tiny_dashboard, tmp_path):
    dom, console = render(tiny_dashboard, tmp_path)
    assert re.search(r'data-plots="ok:3/3"', dom), re.findall(r'data-plots="[^"]*"', dom)
    assert console == [], console


def test_render_check_catches_a_broken_plot(tiny_dashboard, tmp_path):
    """The check above can fail: a plot whose image does not decode is reported, with a console error."""
    page = tiny_dashboard.read_text()
    broken = re.sub(r"src='data:image/png;base64,[^']+'", "src='data:image/png;base64,AAAA'", page, count=1)
    bad = tmp_path / "broken.html"
    bad.write_text(broken)
    dom, console = render(bad, tmp_path)
    assert re.search(r'data-plots="failed:2/3"', dom), re.findall(r'data-plots="[^"]*"', dom)
    assert any("plot failed to draw" in line for line in console)


def test_dashboard_cli_rebuilds_from_saved_runs(tiny_dashboard, cli, tmp_path):
    out = tmp_path / "rebuilt.html"
    res = cli("dashboard", str(tiny_dashboard.parent), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.is_file() and out.read_text().count("<img class='plot'") == 2  # no pretrain run given this time
    res = cli("dashboard", str(tmp_path / "missing"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_learning_curves_draw_human_and_random_reference_lines():
    """The issue's reference lines: human 30.5 and random 1.7, whether or not a random agent was in the comparison."""
    from experiments.dashboard import plot_learning_curves

    curve = [{"env_steps": 500, "mean": 2.0}, {"env_steps": 1000, "mean": 3.0}]
    fig = plot_learning_curves({"learn": [{"curve": curve, "returns": [3.0]}]})
    levels = {line.get_label(): line.get_ydata()[0] for line in fig.axes[0].get_lines() if len(line.get_ydata())}
    assert levels.get("human 30.5") == 30.5 and levels.get("random 1.7 (literature)") == 1.7, levels

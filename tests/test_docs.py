"""The docs' figures come from the committed records: a hand edit that drifts from its record fails here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_confirmatory_test_section_matches_its_record():
    writer = _module(ROOT / "docs/results/atari100k_loop_training_x4_confirm.py")
    rec = json.loads(writer.RECORD.read_text())
    docs = (ROOT / "docs/results.md").read_text().splitlines()
    lines = [x for x in writer.markdown(rec).splitlines() if x.strip()]
    missing = [x for x in lines if x not in docs]
    assert not missing, f"docs/results.md differs from the record; print it with --markdown: {missing}"
    # the interim figure is the record's own paired difference, and the README links the section as it is named now
    assert f"**{rec['tuning_r4_minus_preset']['difference']:+.2f}**" in lines[3]
    anchor = lines[0].lstrip("# ").lower()
    anchor = "".join(c for c in anchor if c.isalnum() or c in " -").replace(" ", "-")
    assert f"#{anchor})" in (ROOT / "README.md").read_text()


def test_dqn_new_seeds_section_matches_its_record():
    writer = _module(ROOT / "docs/results/atari100k_dqn_new_seeds.py")
    rec = json.loads(writer.RECORD.read_text())
    docs = (ROOT / "docs/results.md").read_text().splitlines()
    missing = [x for x in writer.markdown(rec).splitlines() if x.strip() and x not in docs]
    assert not missing, f"docs/results.md differs from the record; print it with --markdown: {missing}"


def test_dqn_new_seeds_verdict_follows_the_27_seed_interval():
    writer = _module(ROOT / "docs/results/atari100k_dqn_new_seeds.py")

    def arms(lo: float, hi: float) -> dict:
        return {"ci_seeds_then_games": [lo, hi], "difference": (lo + hi) / 2, "a": {"per_seed": [0.0] * 27}}

    assert "the loop beats SB3's DQN" in writer.verdict(arms(0.1, 3.0))
    assert "are level" in writer.verdict(arms(-0.5, 2.0))
    assert "are level" in writer.verdict(arms(-2.0, 0.0))
    assert "SB3's DQN is ahead" in writer.verdict(arms(-3.0, -0.2))
    assert "over 27 seeds" in writer.verdict(arms(0.1, 3.0))


def test_random_shift_screen_section_matches_its_record():
    writer = _module(ROOT / "docs/results/atari100k_random_shift_screen.py")
    rec = json.loads(writer.RECORD.read_text())
    docs = (ROOT / "docs/results.md").read_text().splitlines()
    missing = [x for x in writer.markdown(rec).splitlines() if x.strip() and x not in docs]
    assert not missing, f"docs/results.md differs from the record; print it with --markdown: {missing}"
    assert rec["lead"] == writer.is_lead(rec["tuning_s4_minus_preset"])


def test_random_shift_screen_lead_needs_the_bar_and_the_games_only_interval():
    writer = _module(ROOT / "docs/results/atari100k_random_shift_screen.py")

    def arm(d: float, lo: float) -> dict:
        return {"difference": d, "ci_games_only": [lo, lo + 2]}

    assert writer.is_lead(arm(1.5, 0.1)) and "a lead" in writer.reading(arm(1.5, 0.1), 6)
    assert not writer.is_lead(arm(1.4, 0.1)) and not writer.is_lead(arm(2.0, -0.1))
    assert "no lead" in writer.reading(arm(-3.0, -4.0), 6)

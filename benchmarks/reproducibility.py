#!/usr/bin/env python
"""Does this machine repeat a run bit for bit, and how far does another CPU's arithmetic move it? Prints JSON.

Runs the same closed loop (``run.py learn``, one thread, ``--preset tiny`` by default) three times in fresh
processes: twice as they are, and once with torch's CPU kernels pinned to ``ATEN_CPU_CAPABILITY`` (default
``default``: no vector instructions), which stands in for a CPU that dispatches to other kernels (AVX2 here,
AVX-512 on another). Compares the Stage-1 checkpoint, the final world model and the agent tensor by tensor: the two
plain runs should be identical; the pinned one differs by rounding, which a long run (atari100k) grows into other
agents (README, "Reproducibility"). Each run's ``provenance.json`` says which kernels it used.

Example:
    python benchmarks/reproducibility.py                       # ~20 s on 2 cores
    python benchmarks/reproducibility.py --capability avx2 --preset tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FILES = ("stage1/best.pt", "world_model.pt", "agent.pt")


def run_learn(out: Path, preset: str, seed: int, capability: str | None) -> Path:
    env = dict(os.environ)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    cmd = [sys.executable, str(ROOT / "run.py"), "learn", "--preset", preset, "--seed", str(seed),
           "--wandb", "disabled", "--set", "run.threads=1", "--set", f"run.runs_dir={out}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"run.py learn failed ({res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
    (folder,) = (out / "learn").iterdir()
    return folder


def tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}

    def walk(d: object, prefix: str) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, f"{prefix}{k}.")
        elif torch.is_tensor(d):
            out[prefix[:-1]] = d

    walk(torch.load(path, map_location="cpu", weights_only=True), "")
    return out


def compare(a: Path, b: Path) -> dict[str, object]:
    rows = {}
    for name in FILES:
        x, y = tensors(a / name), tensors(b / name)
        keys = [k for k in x if k in y and x[k].shape == y[k].shape]
        floats = [k for k in keys if x[k].is_floating_point()]
        rows[name] = {"tensors": len(x), "identical": sum(torch.equal(x[k], y[k]) for k in keys),
                      "max_abs_diff": max((float((x[k] - y[k]).abs().max()) for k in floats), default=0.0)}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="example: python benchmarks/reproducibility.py")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--capability", default="default",
                        help="ATEN_CPU_CAPABILITY of the third run (default, avx2, avx512, ...)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: run_learn(Path(tmp) / name, args.preset, args.seed, cap)
                for name, cap in (("first", None), ("again", None), ("pinned", args.capability))}
        made = {k: json.loads((v / "provenance.json").read_text())["starts"][0]["cpu_capability"]
                for k, v in runs.items()}
        same = compare(runs["first"], runs["again"])
        pinned = compare(runs["first"], runs["pinned"])
    repeats = all(r["identical"] == r["tensors"] for r in same.values())
    print(json.dumps({"preset": args.preset, "seed": args.seed, "cpu_capability": made,
                      "repeats_bit_for_bit": repeats, "again_vs_first": same,
                      f"pinned_{args.capability}_vs_first": pinned}, indent=1))
    return 0 if repeats else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Game seeds: evaluation blocks that training and collection can never reach.

Every game (``env.reset(seed=...)``) is seeded from one of two disjoint ranges:

- **evaluation blocks**: ``tuning`` = [10000, 20000) is where settings are chosen (the quick preset's
  defaults were picked on its first games); ``heldout`` = [20000, 30000) is for final tables only and no
  setting is chosen on it. A run with training seed ``s`` and ``n`` games plays block start
  ``+ s * n + i`` for ``i < n``, so the training seeds of a comparison play different games.
- **training games** (collection, SB3 training envs, ``learn``): ``TRAINING_BASE + s * TRAINING_STRIDE + k``
  for the ``k``-th game stream of seed ``s``, all at or above 100,000, so no training or collection seed
  can reach an evaluation block.
"""

from __future__ import annotations

from envs.errors import UserError

EVAL_BLOCKS = {"tuning": 10_000, "heldout": 20_000}  # block name -> first seed
EVAL_BLOCK_SIZE = 10_000
TRAINING_BASE = 100_000
TRAINING_STRIDE = 100_000  # game streams per training seed (episodes of one collection folder, SB3 envs, ...)
MAX_RUN_SEED = 20_000  # TRAINING_BASE + MAX_RUN_SEED * TRAINING_STRIDE stays below 2**31 (ALE's seed range)


def evaluation_seeds(block: str, run_seed: int, episodes: int) -> list[int]:
    """The ``episodes`` game seeds that training seed ``run_seed`` is evaluated on in ``block``."""
    if block not in EVAL_BLOCKS:
        raise UserError(f"unknown evaluation block '{block}'; accepted: {', '.join(EVAL_BLOCKS)}")
    first = run_seed * episodes
    if first + episodes > EVAL_BLOCK_SIZE:
        raise UserError(f"training seed {run_seed} with {episodes} evaluation games needs games past the "
                        f"{EVAL_BLOCK_SIZE:,}-game '{block}' block; use a seed below "
                        f"{EVAL_BLOCK_SIZE // episodes - 1} or fewer games")
    start = EVAL_BLOCKS[block] + first
    return list(range(start, start + episodes))


def training_seed(run_seed: int, stream: int = 0) -> int:
    """Seed of game stream ``stream`` of training seed ``run_seed`` (never inside an evaluation block)."""
    if not 0 <= stream < TRAINING_STRIDE:
        raise ValueError(f"stream {stream} outside [0, {TRAINING_STRIDE})")
    if not 0 <= run_seed < MAX_RUN_SEED:
        raise UserError(f"seed {run_seed} is out of range; use a seed in [0, {MAX_RUN_SEED})")
    return TRAINING_BASE + run_seed * TRAINING_STRIDE + stream


def in_evaluation_block(seed: int) -> str | None:
    """The evaluation block that game seed ``seed`` belongs to, or None."""
    for name, start in EVAL_BLOCKS.items():
        if start <= seed < start + EVAL_BLOCK_SIZE:
            return name
    return None

"""Reference policies evaluated like every planner: uniform random, and a scripted RAM ball tracker."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.breakout import FIRE, LEFT, NUM_ACTIONS, RIGHT

NOOP = 0


class RandomPolicy:
    """Uniformly random actions: the floor every planner is compared with."""

    def __init__(self, num_actions: int = NUM_ACTIONS, seed: int = 0):
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def reset(self, env: Any = None) -> None:
        pass

    def act(self, obs: np.ndarray) -> int:
        return int(self.rng.integers(self.num_actions))


class TrackerPolicy:
    """Move the paddle under the ball, reading positions from the emulator's RAM (no learning).

    RAM (Breakout): ``paddle_x = ram[72]`` (left edge), ``ball_x = ram[99]``, ``ball_y = ram[101]``
    (0 while no ball is in play). While the ball falls the paddle aims at where it will cross the
    paddle's height (its last displacement extrapolated, reflected off the side walls), plus a
    per-game random offset along the paddle (seeded), which varies the bounce angle between games so
    the ball does not settle into the same loop every game. With no ball in play it presses FIRE.
    (Drawing a new offset at every serve instead scores 81.4 instead of 199.8 on the five tuning games.)

    Args:
        env: the env it plays (``envs.breakout.make_env``); :meth:`reset` may rebind it.
        seed: seed of the per-serve aim offsets.
        lead: agent steps of extrapolation of the ball's motion while it rises.
        dead_zone: distance (RAM x units) within which the paddle stays put.
        momentum: share of the paddle's last displacement added to its position (it keeps moving
            for a step after a move; without this it overshoots back and forth).
    """

    PADDLE_CENTER = 8  # ram[72] is the paddle's left edge; it is 16 units wide
    X_MIN, X_MAX = 55, 200  # playfield x range of the ball in RAM units
    PADDLE_Y = 178  # ball_y at which the ball meets the paddle

    def __init__(self, env: Any = None, seed: int = 0, lead: float = 0.0, dead_zone: int = 8, momentum: float = 0.5):
        self.rng = np.random.default_rng(seed)
        self.lead = lead
        self.dead_zone = dead_zone
        self.momentum = momentum
        self.ale = None
        self._prev_ball: tuple[int, int] | None = None
        self._aim = 0
        self._prev_paddle: int | None = None
        if env is not None:
            self.reset(env)

    def reset(self, env: Any = None) -> None:
        if env is not None:
            self.ale = env.unwrapped.ale
        if self.ale is None:
            raise ValueError("TrackerPolicy needs the env it plays (it reads the emulator's RAM)")
        self._prev_ball, self._prev_paddle = None, None
        self._aim = int(self.rng.integers(-5, 6))

    def act(self, obs: np.ndarray) -> int:
        ram = self.ale.getRAM()
        paddle_x, ball_x, ball_y = int(ram[72]), int(ram[99]), int(ram[101])
        if ball_y == 0:  # no ball in play: serve
            self._prev_ball = None
            return FIRE
        target = float(ball_x)
        if self._prev_ball is not None:
            dx, dy = ball_x - self._prev_ball[0], ball_y - self._prev_ball[1]
            if dy > 0:  # falling: aim at where it crosses the paddle's height, reflected off the walls
                steps = min(max((self.PADDLE_Y - ball_y) / dy, 0.0), 40.0)
                target = _reflect(ball_x + dx * steps, self.X_MIN, self.X_MAX)
            else:
                target = _reflect(ball_x + self.lead * dx, self.X_MIN, self.X_MAX)
        self._prev_ball = (ball_x, ball_y)
        # the paddle keeps moving for a step after a move: compare with where it is heading
        heading = paddle_x + self.momentum * (paddle_x - self._prev_paddle) if self._prev_paddle is not None \
            else paddle_x
        self._prev_paddle = paddle_x
        diff = target + self._aim - (heading + self.PADDLE_CENTER)
        if diff > self.dead_zone:
            return RIGHT
        if diff < -self.dead_zone:
            return LEFT
        return NOOP


def _reflect(x: float, lo: float, hi: float) -> float:
    """Fold ``x`` into ``[lo, hi]`` as a ball bouncing between two walls does."""
    span = hi - lo
    x = (x - lo) % (2 * span)
    return lo + (x if x <= span else 2 * span - x)

"""Errors a user can cause (bad config, paths, data, checkpoints).

They are caught at the edge (``run.py``) and reported as one sentence with exit code 2.
Programming errors use the ordinary exception types and keep their traceback.
"""

from typing import Any


class UserError(Exception):
    """A problem with the user's input: the message names the thing and the fix."""


def check_range(ok: bool, key: str, value: object, accepted: str) -> None:
    """Raise a UserError naming the config ``key``, its ``value`` and what is ``accepted`` unless ``ok``."""
    if not ok:
        raise UserError(f"config key '{key}' = {value!r} is out of range; accepted: {accepted}")


def check_schedule(section: object, path: str) -> None:
    """The range checks every training section shares (epochs, learning rate, weight decay, patience, batch)."""
    s: Any = section
    check_range(s.num_epochs >= 1, f"{path}.num_epochs", s.num_epochs, "an integer >= 1")
    check_range(s.learning_rate > 0, f"{path}.learning_rate", s.learning_rate, "a positive number")
    check_range(s.weight_decay >= 0, f"{path}.weight_decay", s.weight_decay, "a number >= 0")
    check_range(s.early_stopping_patience >= 1, f"{path}.early_stopping_patience", s.early_stopping_patience,
                "an integer >= 1")
    check_range(s.batch_size >= 1, f"{path}.batch_size", s.batch_size, "an integer >= 1")

"""Checkpoints: atomic save (temp file + ``os.replace``) and a safe load that reports bad files plainly.

A checkpoint is a dict holding only tensors, numbers, strings, lists and dicts, with a ``"kind"``
(``"stage1"`` or ``"stage2"``), so it loads with ``torch.load(weights_only=True)``. Every problem a
user can cause (missing, truncated, corrupt, wrong kind, wrong shape) raises
:class:`envs.errors.UserError` with one sentence naming the file and the fix.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from envs.errors import UserError


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically: a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; ``kind`` (if given) must match its ``"kind"``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a .pt file written by `run.py pretrain`")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; pass a .pt file inside it (e.g. {path / 'best.pt'})")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (truncated); re-run training or use another checkpoint")
    obj = safe_torch_load(path, map_location, "re-run training or use another checkpoint", "checkpoint")
    if not isinstance(obj, dict) or "kind" not in obj:
        raise UserError(f"checkpoint {path} is not a checkpoint of this project (no 'kind' entry); pass a file "
                        "written by `run.py pretrain`")
    if kind is not None and obj["kind"] != kind:
        raise UserError(f"checkpoint {path} is a {obj['kind']!r} checkpoint but a {kind!r} one is needed; pass a "
                        f"{kind} checkpoint")
    if kind is not None:  # callers that check the kind themselves check its entries after it (require, REQUIRED)
        require(obj, path, REQUIRED.get(kind, ()))
    return obj


# The entries every checkpoint of a kind holds (what loading it reads); a file without them is refused at once.
REQUIRED: dict[str, tuple[str, ...]] = {
    "stage1": ("config", "encoder_kwargs"),
    "stage2": ("config", "encoder_kwargs", "encoder", "world_model_kwargs", "world_model"),
    "agent": ("config", "state", "world_model"),
}
# What resuming from a ``latest.pt`` reads on top (experiments/fit.py).
RESUME_KEYS = ("optimizer", "rng", "history", "early_stopping")


def safe_torch_load(path: Path, map_location: str | torch.device, fix: str, label: str) -> Any:
    """``torch.load(weights_only=True)``; a file that would run code on loading, or is damaged, is a UserError
    that starts with ``label`` (e.g. "agent checkpoint") and ends with ``fix``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err) or "global" in str(err):  # it names a callable to import and run on load
            raise UserError(f"{label} {path} holds Python objects that would run code when loaded, so it is refused "
                            f"(only weights-only checkpoints load); {fix}") from None
        raise UserError(f"{label} {path} is truncated or corrupt (UnpicklingError); {fix}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, KeyError,
            IndexError, TypeError) as err:
        raise UserError(f"{label} {path} is truncated or corrupt ({type(err).__name__}); {fix}") from None


def require(ckpt: dict[str, Any], path: str | Path, keys: tuple[str, ...] | list[str], what: str = "") -> None:
    """A UserError naming the entries of ``keys`` that ``ckpt`` lacks (``what``: e.g. "to resume")."""
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(repr(k) for k in missing)}{' ' + what if what else ''} "
                        f"(not a complete {ckpt.get('kind', 'project')} checkpoint); re-run training or use another "
                        "checkpoint")


def load_state(module: nn.Module, state: Any, path: str | Path, name: str) -> None:
    """``module.load_state_dict(state)`` with missing keys or wrong shapes reported as a UserError."""
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} has no valid '{name}' weights; re-run training or use another checkpoint")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"checkpoint {path} does not fit the '{name}' model ({load_error_detail(err)}); use a "
                        "checkpoint made with the same model config") from None


def load_error_detail(err: BaseException) -> str:
    """The telling line of a ``load_state_dict`` error (its first mismatch), at most 200 characters."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__
    return detail[:200]


def rebuild(ckpt: dict[str, Any], path: str | Path, cls: type[nn.Module], kwargs_key: str, weights_key: str,
            what: str, stage: int) -> nn.Module:
    """``cls(**ckpt[kwargs_key])`` loaded with ``ckpt[weights_key]``: a module rebuilt from the constructor arguments
    its checkpoint stores. Every way the entry can be missing or not fit is a UserError naming ``what``."""
    kwargs = ckpt.get(kwargs_key)
    if not isinstance(kwargs, dict) or weights_key not in ckpt:
        raise UserError(f"checkpoint {path} lacks its {what} ({kwargs_key} and '{weights_key}' weights); re-run "
                        f"stage {stage}")
    try:
        module = cls(**kwargs)
    except (TypeError, AssertionError) as err:
        raise UserError(f"checkpoint {path} has an invalid {what} description ({err}); re-run stage {stage}") from None
    load_state(module, ckpt[weights_key], path, weights_key)
    return module

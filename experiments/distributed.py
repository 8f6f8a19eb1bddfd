"""Data-parallel training under ``torchrun`` (PyTorch DDP), on CPUs (gloo) or GPUs (nccl).

``torchrun --standalone --nproc_per_node=N run.py pretrain ...`` starts N processes; :func:`setup` joins them into
one process group (backend chosen from the device: nccl on CUDA, gloo on CPU). A plain ``python run.py ...`` is a
group of one and nothing here changes what it does.

How Stage 1 splits a step (``experiments/pretrain.py``): every rank draws the same global batch of
``stage1.batch_size`` indices, the same patch masks and the same motion weights from identically seeded RNGs, and
trains on its share (rows ``rank::world``); DDP averages the gradients, so a step is the single-process step on
the global batch. The EMA target is updated alike on every rank (identical weights in, identical weights out).
Rank 0 alone writes the run folder: checkpoints, ``metrics.jsonl``, wandb and summaries; the others log nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from envs.errors import UserError


@dataclass(frozen=True)
class Group:
    """Where this process stands: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The one process that writes (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world > 1


_GROUP = Group()


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> Group:
    """Join the torchrun process group (once per process); a plain run is a group of one."""
    global _GROUP
    if not launched() or _GROUP.active:
        return _GROUP
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    _GROUP = Group(dist.get_rank(), dist.get_world_size())
    return _GROUP


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Inside the block this process acts as a group of one (no collectives): for work that one rank does alone
    while the others do something else (the demo's two stage reports)."""
    global _GROUP
    saved, _GROUP = _GROUP, Group()
    try:
        yield
    finally:
        _GROUP = saved


def group() -> Group:
    return _GROUP


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run folder rank 0 created)."""
    if not _GROUP.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run by rank 0 alone (it writes), its value given to every rank; a :class:`UserError` it raises is
    raised on every rank, so no rank is left waiting for the others."""
    if not _GROUP.active:
        return fn()
    value, error = None, None
    if _GROUP.main:
        try:
            value = fn()
        except UserError as err:
            error = str(err)
    value, error = broadcast((value, error))
    if error is not None:
        raise UserError(error)
    return value


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a plain run)."""
    if not _GROUP.active:
        return [obj]
    out: list[Any] = [None] * _GROUP.world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _GROUP.active:
        dist.barrier()


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks (a loss of each rank's share -> the loss of the global batch)."""
    if not _GROUP.active:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / _GROUP.world


def sums(values: dict[str, float]) -> dict[str, float]:
    """Every value summed over the ranks, in one all-reduce (itself in a plain run)."""
    if not _GROUP.active:
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(x) for k, x in zip(values, t.tolist())}


def means(values: dict[str, float]) -> dict[str, float]:
    """:func:`mean` of every value, in one all-reduce."""
    return {k: v / _GROUP.world for k, v in sums(values).items()}


def shard(n: int) -> slice:
    """This rank's rows of a global batch of ``n``: every ``world``-th row from ``rank``."""
    return slice(_GROUP.rank, n, _GROUP.world)


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` under DistributedDataParallel in a group, else itself."""
    if not _GROUP.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def teardown() -> None:
    global _GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _GROUP = Group()

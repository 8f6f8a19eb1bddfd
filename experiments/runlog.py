"""Run folders and metric logging.

Every command writes to ``runs/<command>/<time>-<preset>-s<seed>/`` holding ``config.yaml`` (the
resolved config), ``metrics.jsonl`` (one JSON object per logged step, namespaced keys such as
``train/loss``), ``provenance.json`` (:func:`platform_record` of every start: commit, library versions, CPU, so a
number can be traced to where it was made) and ``wandb/`` (offline unless ``run.wandb=online``; wandb's cache and
config folders are kept inside the run folder so nothing lands in the home folder).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm as _tqdm

from envs.errors import UserError
from experiments.config import Config, save_config


class _LogTqdm(_tqdm):
    """A bar for log files: ``set_postfix`` waits for the next regular redraw instead of forcing one."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:
    """``tqdm.tqdm``; when stderr is not a terminal, redrawn at most every 30 s (a log file stays readable)."""
    if sys.stderr.isatty():
        return _tqdm(*args, **kwargs)
    kwargs.setdefault("mininterval", 30.0)
    return _LogTqdm(*args, **kwargs)


REPO = Path(__file__).resolve().parents[1]
# What a platform record compares: two runs of one command agree bit for bit only where these agree (and the
# threads); across CPUs the float kernels differ (AVX2 against AVX-512 reorder sums), so the numbers do too.
PLATFORM_KEYS = ("cpu", "cpu_capability", "torch", "device_name")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def platform_record(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where a run's numbers were made, besides its config and seed: the commit (and whether tracked files differed
    from it), library versions, the CPU and the kernels torch picks on it, threads, and the GPU if one is used.

    One command on one machine repeats its numbers bit for bit (``run.threads`` fixed); on another CPU or torch
    build float sums are ordered differently and a long run's numbers drift apart (README, "Reproducibility").
    """
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    dev = torch.device(device) if device is not None else None
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
        "commit_dirty": None if dirty is None else bool(dirty), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "gymnasium": version("gymnasium"),
        "ale_py": version("ale-py"), "stable_baselines3": version("stable-baselines3"),
        "os": f"{platform.system()} {platform.release()}", "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(dev) if dev is not None else None,
        "device_name": torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda" else None,
    }


def platform_differences(theirs: dict[str, Any] | None, ours: dict[str, Any]) -> list[str]:
    """The :data:`PLATFORM_KEYS` on which ``theirs`` (a recorded platform; None for records made before platforms
    were recorded) differs from ``ours``, as ``key: theirs there, ours here``."""
    if theirs is None:
        return ["platform: not recorded there"]
    return [f"{k}: {theirs.get(k)} there, {ours.get(k)} here" for k in PLATFORM_KEYS if theirs.get(k) != ours.get(k)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_torch(cfg: Config) -> torch.device:
    """Threads and device from ``run.*``."""
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    dev = cfg.run.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"run.device={cfg.run.device!r} but no CUDA device is available; use run.device=cpu")
    if dev == "cuda":  # under torchrun: one GPU per process on each machine; else the first GPU
        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    device = torch.device(dev)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (Ampere and later)
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(cfg: Config, device: torch.device):
    """The training forward's precision (``run.precision``): bf16 autocast, or a no-op context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.run.precision == "bf16")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a CPU batch bound for a GPU goes through pinned memory, copied asynchronously."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().item() if v.numel() == 1 else v.detach().cpu().tolist()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (temp file + ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)
    return path


def unwritable(folder: str | Path) -> str | None:
    """None when a file can be created in ``folder`` (made if missing), else why not (e.g. "Read-only file
    system"): commands check where they will write before they spend time computing."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
        return None
    except OSError as err:
        return err.strerror or type(err).__name__


def report_destination(out: str | Path | None, default: Path) -> tuple[Path | None, str | None]:
    """Where an evaluation report goes: ``out`` (a UserError now, before any computing, if it cannot be written)
    or ``default``; ``(None, why)`` when the default place is read-only (the report is then only printed)."""
    if out is not None:
        out = Path(out)
        why = unwritable(out.parent)
        if why is not None:
            raise UserError(f"cannot write the report to {out} ({why}); pass --out PATH in a writable folder")
        return out, None
    why = unwritable(default.parent)
    return (default, None) if why is None else (None, f"{default.parent} is not writable ({why})")


def new_run_dir(parent: Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``parent/name-2``, ``-3``... if taken. ``mkdir`` without
    ``exist_ok`` is atomic, so two processes started in the same second never share a folder."""
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        run_dir = parent / (name if n == 1 else f"{name}-{n}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            n += 1


class RunLogger:
    """A run folder with config.yaml, metrics.jsonl and an offline wandb run."""

    def __init__(self, cfg: Config, command: str, run_dir: str | Path | None = None, resume: bool = False,
                 group: str | None = None, name: str | None = None):
        self.cfg = cfg
        if run_dir is None:
            try:
                run_dir = new_run_dir(Path(cfg.run.runs_dir) / command,
                                      f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.preset}-s{cfg.run.seed}")
            except OSError as err:
                raise UserError(f"cannot create a run folder under {cfg.run.runs_dir} ({err.strerror}); set "
                                "run.runs_dir to a writable folder (e.g. --set run.runs_dir=/tmp/runs)") from None
            self.created = True
        else:
            self.created = not Path(run_dir).exists()
        self.dir = Path(run_dir)
        if resume and not self.dir.is_dir():
            raise UserError(f"cannot resume: run folder {self.dir} does not exist; pass an existing run folder")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if resume:  # temporary files of a save that a kill interrupted
                for stale in self.dir.rglob("*.tmp"):
                    if "wandb" not in stale.relative_to(self.dir).parts:
                        stale.unlink(missing_ok=True)
            save_config(cfg, self.dir / "config.yaml")
            self._metrics = open(self.dir / "metrics.jsonl", "a")
            self._record_platform(command)
        except OSError as err:
            fix = ("copy the run folder to a writable place and resume the copy" if resume else
                   "set run.runs_dir to a writable folder (e.g. --set run.runs_dir=/tmp/runs)")
            raise UserError(f"cannot write the run folder {self.dir} ({err.strerror}); {fix}") from None
        self._wandb = None
        if cfg.run.wandb != "disabled":
            self._wandb = self._init_wandb(command, resume, group, name)

    def _record_platform(self, command: str) -> None:
        """Append this start's :func:`platform_record` to ``provenance.json`` (a resumed run lists every start)."""
        path = self.dir / "provenance.json"
        starts: list[dict[str, Any]] = []
        if path.is_file():
            try:
                starts = list(json.loads(path.read_text()).get("starts", []))
            except (ValueError, AttributeError):  # unreadable: start the list again rather than lose the run
                starts = []
        device = self.cfg.run.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.platform = platform_record(device)
        write_json(path, {"command": command, "starts": [*starts, self.platform]})

    def _init_wandb(self, command: str, resume: bool, group: str | None, name: str | None):
        wdir = self.dir / "wandb"
        for sub in ("cache", "config", "data", "artifacts"):
            (wdir / sub).mkdir(parents=True, exist_ok=True)
        os.environ.update({
            "WANDB_DIR": str(self.dir),
            "WANDB_CACHE_DIR": str(wdir / "cache"),
            "WANDB_CONFIG_DIR": str(wdir / "config"),
            "WANDB_DATA_DIR": str(wdir / "data"),
            "WANDB_ARTIFACT_DIR": str(wdir / "artifacts"),
            "WANDB_SILENT": "true",
        })
        import wandb

        run_id_file = self.dir / "wandb_run_id.txt"
        run_id = run_id_file.read_text().strip() if run_id_file.is_file() else None
        run = wandb.init(
            project="jepa-worldmodels", dir=str(self.dir), mode=self.cfg.run.wandb, config=self.cfg.to_dict(),
            job_type=command, group=group, name=name or self.dir.name, id=run_id,
            resume="allow" if resume else None, settings=wandb.Settings(console="off", silent=True),
            # A run that opens another inside it (compare-baselines' `learn` pair opens the learn run) keeps its own:
            # without this, the second init finishes the first, and its next log raises.
            reinit="create_new",
        )
        run_id_file.write_text(run.id)
        return run

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: _jsonable(v) for k, v in metrics.items()}
        if step is not None:
            row["step"] = int(step)
        row["time"] = round(time.time(), 3)
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._wandb is not None:
            try:
                self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
            except Exception as err:  # wandb mirrors metrics.jsonl, which holds the row: never lose a run over it
                print(f"warning: wandb stopped logging for {self.dir} ({type(err).__name__}: {err}); metrics.jsonl "
                      "keeps every row", file=sys.stderr)
                self._wandb = None

    @property
    def metrics_offset(self) -> int:
        """Size of ``metrics.jsonl`` so far: checkpoints record it, so a resume can drop the rows logged after them."""
        self._metrics.flush()
        return self._metrics.tell()

    def rewind(self, offset: int | None) -> None:
        """Drop the ``metrics.jsonl`` rows written after ``offset`` (a checkpoint's :attr:`metrics_offset`), so a
        resumed run does not log the steps it repeats twice."""
        if offset is None or offset >= self.metrics_offset:
            return
        self._metrics.flush()
        os.truncate(self.dir / "metrics.jsonl", offset)

    def write_json(self, name: str, data: Any) -> Path:
        return write_json(self.dir / name, data)

    def close(self) -> None:
        self._metrics.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def holds_results(self) -> bool:
        """Whether the run folder holds anything worth keeping: a checkpoint or collected data."""
        return any(self.dir.rglob("*.pt")) or (self.dir / "data" / "manifest.json").is_file()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        # A run this logger created that failed before writing anything of value leaves no folder behind
        # (an interrupt keeps it: the user may resume).
        if exc_type is not None and issubclass(exc_type, Exception) and self.created and not self.holds_results():
            shutil.rmtree(self.dir, ignore_errors=True)


class NullRun:
    """What a data-parallel rank other than 0 logs into: the run folder's path (rank 0's, broadcast), no writes."""

    created = False
    platform = None  # the rank that writes (rank 0) records it

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    metrics_offset = 0

    def rewind(self, offset: int | None) -> None:
        pass

    def write_json(self, name: str, data: Any) -> Path:
        return self.dir / name

    def close(self) -> None:
        pass

    def holds_results(self) -> bool:
        return True

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass


def open_run(cfg: Config, command: str, run_dir: str | Path | None = None, resume: bool = False) -> RunLogger | NullRun:
    """The run's logger: a :class:`RunLogger` in a plain run and on rank 0 of a torchrun group (which creates the
    folder), a :class:`NullRun` on the other ranks (the same folder, nothing written)."""
    from experiments import distributed

    grp = distributed.group()
    run: RunLogger | NullRun | None = None
    error = None
    if grp.main:
        try:
            run = RunLogger(cfg, command, run_dir=run_dir, resume=resume)
        except UserError as err:
            error = str(err)
    if grp.active:  # every rank learns the folder, or rank 0's error
        folder = distributed.broadcast((None, error) if run is None else (str(run.dir), None))
        if folder[1] is not None and run is None and not grp.main:
            raise UserError(folder[1])
        if not grp.main:
            run = NullRun(folder[0])
    if error is not None:
        raise UserError(error)
    assert run is not None
    return run

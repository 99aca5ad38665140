"""The on-disk layout of a sweep, its lock, and what resuming means.

::

    SWEEP/
      sweep.json                  plan: kind, arms, seeds, data, every run and its options
      .lock                       held (flock) by the process running the sweep
      runs/<arm>/seed-<s>/        shootout run dirs
      runs/<arm>/lr<lr>/seed-<s>/ shootout run dirs over a learning-rate grid (shootout --lrs)
      runs/<arm>/d<depth>-lr<lr>/seed-<s>/   stress run dirs
      summary.json  summary.md  *.png

A run is finished when its ``result.json`` exists (written last, atomically). Re-running the same
command keeps finished runs untouched and restarts unfinished ones from scratch. The lock is an
``flock`` on ``.lock``: the kernel drops it when its holder dies, even by SIGKILL, so a killed
sweep never leaves a stale lock behind, while a live one refuses a second process.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnostab.config import RunConfig
from fnostab.errors import InputError
from fnostab.io import write_json_atomic
from fnostab.training.result import RESULT_NAME

SWEEP_SCHEMA = "fnostab.sweep/1"
SWEEP_NAME = "sweep.json"
LOCK_NAME = ".lock"


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: where it lives and everything it needs."""

    arm: str
    seed: int
    config: RunConfig
    relative_dir: str
    depth: int | None = None
    lr: float | None = None
    plan: dict[str, Any] | None = field(default=None, compare=False)

    def sweep_info(self, kind: str) -> dict[str, Any]:
        return {"kind": kind, "arm": self.arm, "seed": self.seed, "depth": self.depth, "lr": self.lr}

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "seed": self.seed, "depth": self.depth, "lr": self.lr, "dir": self.relative_dir,
                "plan": self.plan}


def shootout_run_dir(arm: str, seed: int) -> str:
    return f"runs/{arm}/seed-{seed}"


def shootout_lr_run_dir(arm: str, lr: float, seed: int) -> str:
    return f"runs/{arm}/lr{lr_tag(lr)}/seed-{seed}"


def lr_tag(lr: float) -> str:
    """``0.001`` for 1e-3: the shortest text that reads back as the same float, so two learning
    rates never share a run dir (``:g`` would merge 1e-3 and 1.0000001e-3)."""
    return repr(float(lr))


def stress_run_dir(arm: str, depth: int, lr: float, seed: int) -> str:
    return f"runs/{arm}/d{depth}-lr{lr_tag(lr)}/seed-{seed}"


class SweepLock:
    """Exclusive use of a sweep dir by one process; a second one gets an InputError (exit 2)."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = sweep_dir / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "SweepLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(
                f"{self.path.parent} is in use by another fnostab process (pid {holder}); wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def is_finished(run_dir: Path) -> bool:
    return (run_dir / RESULT_NAME).is_file()


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / RESULT_NAME).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def check_resumable(sweep_dir: Path, specs: list[RunSpec]) -> tuple[list[RunSpec], list[RunSpec]]:
    """Split ``specs`` into (finished, to_run); a finished run made with other options is an error.

    Unfinished run dirs (a killed run: config.json without result.json) are cleared so the run
    starts again from scratch, and so are infeasible ones: they never started, and whether they fit
    depends on this command's memory limit, so they are planned again.
    """
    finished, to_run = [], []
    for spec in specs:
        run_dir = sweep_dir / spec.relative_dir
        if is_finished(run_dir) and _status(run_dir) != "infeasible":
            try:
                recorded = json.loads((run_dir / "config.json").read_text())
            except (OSError, json.JSONDecodeError):
                recorded = None
            if recorded != spec.config.to_json_dict():
                raise InputError(
                    f"{run_dir} holds a finished run made with other options than this sweep asks for; "
                    "rerun the original command to resume, or choose another --out"
                )
            finished.append(spec)
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            to_run.append(spec)
    return finished, to_run


def write_sweep_plan(sweep_dir: Path, document: dict[str, Any]) -> None:
    write_json_atomic(sweep_dir / SWEEP_NAME, {"schema": SWEEP_SCHEMA, **document})

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

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fnostab.config import RunConfig
from fnostab.errors import InputError
from fnostab.io import DirectoryLock, read_json_document, validate_document, write_json_atomic
from fnostab.training.result import RESULT_NAME

SWEEP_SCHEMA = "fnostab.sweep/1"
SWEEP_NAME = "sweep.json"
LOCK_NAME = DirectoryLock.NAME


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
        return {
            "arm": self.arm,
            "seed": self.seed,
            "depth": self.depth,
            "lr": self.lr,
            "dir": self.relative_dir,
            "plan": self.plan,
        }


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


SweepLock = DirectoryLock  # a sweep dir is used by one process at a time


def is_finished(run_dir: Path) -> bool:
    return (run_dir / RESULT_NAME).is_file()


def _status(run_dir: Path) -> str | None:
    """The status of a run dir's result.json, or None when it is missing, damaged or malformed."""
    from fnostab.training.result import read_result

    try:
        return read_result(run_dir / RESULT_NAME)["status"]
    except (InputError, OSError):
        return None


def _recorded_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        recorded = json.loads((run_dir / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def check_resumable(sweep_dir: Path, specs: list[RunSpec]) -> tuple[list[RunSpec], list[RunSpec]]:
    """Split ``specs`` into (finished, to_run); a finished run made with other options is an error.

    Unfinished run dirs (a killed run: config.json without result.json) are cleared so the run
    starts again from scratch, and so are infeasible ones: they never started, and whether they fit
    depends on this command's memory limit, so they are planned again. A run whose result.json or
    config.json is damaged (unreadable, not its schema) cannot be trusted and is run again too.
    """
    finished, to_run = [], []
    for spec in specs:
        run_dir = sweep_dir / spec.relative_dir
        status = _status(run_dir) if is_finished(run_dir) else None
        recorded = _recorded_config(run_dir) if status is not None else None
        if status not in (None, "infeasible") and recorded is not None:
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


class _PlannedRun(BaseModel):
    model_config = ConfigDict(extra="allow")
    dir: str
    arm: str
    seed: int


class SweepDocument(BaseModel):
    """The keys of sweep.json that resuming and summarising rely on."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["shootout", "stress"]
    arms: dict[str, Any]
    seeds: list[int]
    runs: list[_PlannedRun]


def read_sweep_plan(path: Path) -> dict[str, Any]:
    """Load sweep.json and check it against its schema (an InputError names the file and the wrong key)."""
    document = read_json_document(path, SWEEP_SCHEMA)
    validate_document(path, document, SweepDocument)
    return document


def write_sweep_plan(sweep_dir: Path, document: dict[str, Any]) -> None:
    write_json_atomic(sweep_dir / SWEEP_NAME, {"schema": SWEEP_SCHEMA, **document})

"""Run dirs and sweep dirs on disk: file names, layouts, checks, locking and replacement.

One module owns where things are, so that the code that writes runs (:mod:`fnostab.training`,
:mod:`fnostab.experiments`) and the code that reads them (:mod:`fnostab.report`) agree without
importing each other. The documents themselves are :class:`fnostab.training.result.RunResult` and
:class:`fnostab.sweep_plan.SweepPlan`.

A run dir::

    RUN/
      config.json            the RunConfig, written first
      metrics.csv            per-step and per-epoch metrics (Lightning CSVLogger layout)
      checkpoint.pt          the generator at the end of training
      reconstruction.npz     the stitched test reconstruction and its ground truth (evaluated runs)
      reconstruction.png
      precursors.csv         windows of per-block signals before spikes and failures (--precursors-every)
      error.log              the traceback of a run that ended in status error
      result.json            written last: its presence means the run is finished
      .logs/                 Lightning's scratch dir while training
      .lock                  held (flock) by the process writing the dir (``train --out``)

A sweep dir::

    SWEEP/
      sweep.json                              the plan: kind, arms, seeds, data, every run
      .lock                                   held by the process running the sweep
      runs/<arm>/seed-<s>/                    shootout runs
      runs/<arm>/lr<lr>/seed-<s>/             shootout runs over a learning-rate grid (--lrs)
      runs/<arm>/d<depth>-lr<lr>/seed-<s>/    stress runs
      summary.json  summary.md  *.png

Every file appears atomically (:mod:`fnostab.io`); names that start with a dot are scratch, never runs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fnostab.config import RunConfig
from fnostab.errors import InputError
from fnostab.io import (
    DirectoryLock,
    check_out_dir,
    make_temp_dir,
    parse_document,
    read_json_document,
    write_json_atomic,
)
from fnostab.sweep_plan import SWEEP_SCHEMA, SweepPlan
from fnostab.training.result import RunResult, read_result

T = TypeVar("T")

# ----------------------------------------------------------------------------------------- file names
RESULT_NAME = "result.json"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.csv"
CHECKPOINT_NAME = "checkpoint.pt"
RECONSTRUCTION_NPZ_NAME = "reconstruction.npz"
RECONSTRUCTION_PNG_NAME = "reconstruction.png"
ERROR_LOG_NAME = "error.log"
LOGS_NAME = ".logs"
SWEEP_NAME = "sweep.json"
LOCK_NAME = DirectoryLock.NAME


# -------------------------------------------------------------------------------------------- layouts
def lr_tag(lr: float) -> str:
    """``0.001`` for 1e-3: the shortest text that reads back as the same float, so two learning
    rates never share a run dir (``:g`` would merge 1e-3 and 1.0000001e-3)."""
    return repr(float(lr))


def shootout_run_dir(arm: str, seed: int) -> str:
    return f"runs/{arm}/seed-{seed}"


def shootout_lr_run_dir(arm: str, lr: float, seed: int) -> str:
    return f"runs/{arm}/lr{lr_tag(lr)}/seed-{seed}"


def stress_run_dir(arm: str, depth: int, lr: float, seed: int) -> str:
    return f"runs/{arm}/d{depth}-lr{lr_tag(lr)}/seed-{seed}"


def is_scratch(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a dot-dir under ``root`` (Lightning's .logs, a staging dir): never a run."""
    return any(part.startswith(".") for part in path.relative_to(root).parts[:-1])


# --------------------------------------------------------------------------------------------- checks
def is_finished(run_dir: Path) -> bool:
    """A run is finished once its result.json exists (the runner writes it last)."""
    return (run_dir / RESULT_NAME).is_file()


def read_run_result(run_dir: Path) -> RunResult:
    """The result of a finished run; InputError when it is missing, damaged or malformed."""
    return read_result(run_dir / RESULT_NAME)


def finished_status(run_dir: Path) -> str | None:
    """The status of a run dir's result.json, or None when it is missing, damaged or malformed."""
    try:
        return read_run_result(run_dir).status
    except (InputError, OSError):
        return None


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """The config.json of a run dir as written, or None when it is missing or not a JSON object."""
    try:
        recorded = json.loads((run_dir / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds an fnostab run (a readable result.json, or a config.json that is a RunConfig)."""
    try:
        read_run_result(path)
        return True
    except (InputError, OSError):
        pass
    try:
        RunConfig.model_validate_json((path / CONFIG_NAME).read_bytes())
        return True
    except (ValueError, OSError):
        return False


def check_run_out(out: Path, force: bool) -> bool:
    """Check that ``out`` can take a new run; returns whether it holds one that ``force`` replaces.

    InputError (nothing written) when it cannot be written, when it is a non-empty directory that is
    not a run dir, or when it holds a run and ``force`` is off.
    """
    check_out_dir(out)
    replacing = out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir())
    if replacing:
        if not holds_run(out):
            raise InputError(f"{out}: --out is a non-empty directory that is not an fnostab run dir; choose another")
        if not force:
            raise InputError(f"{out} already holds a run; pass --force to replace it or choose another --out")
    return replacing


def check_sweep_out(out: Path, kind: str) -> None:
    """``out`` is new, empty, or a sweep dir of this ``kind`` (resuming); never another kind's
    sweep, which the runs of this one would silently turn into a mixture of both."""
    check_out_dir(out)
    plan = out / SWEEP_NAME
    if plan.exists():
        found = read_sweep_plan(plan).kind
        if found != kind:
            raise InputError(
                f"{out}: --out holds a finished or running {found} sweep (its {SWEEP_NAME}), not a "
                f"{kind} sweep; choose another --out"
            )
    elif out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise InputError(f"{out}: --out is a non-empty directory that is not a sweep dir; choose another")


# ------------------------------------------------------------------------------------ sweep plan file
def read_sweep_plan(path: Path) -> SweepPlan:
    """Load sweep.json and check it against its schema (an InputError names the file and the wrong key)."""
    document = read_json_document(path, SWEEP_SCHEMA)
    return parse_document(path, {k: v for k, v in document.items() if k != "schema"}, SweepPlan)


def write_sweep_plan(sweep_dir: Path, plan: SweepPlan) -> None:
    write_json_atomic(sweep_dir / SWEEP_NAME, plan.to_document())


# ------------------------------------------------------------------------------- locking, replacement
# A run dir or a sweep dir is written by one process at a time: a second one is refused (exit 2).
lock = DirectoryLock


def write_run_dir(run_dir: Path, force: bool, write: Callable[[Path], T]) -> T:
    """Run ``write(dir)`` to fill ``run_dir`` under its lock, and return what it returns.

    The checks of :func:`check_run_out` are repeated under the lock (a run may have finished there
    since they were made); a dir this call created is removed again when they fail. A run dir that
    holds a run (``force``) is replaced through :func:`replace_run_dir`, so an interrupted rerun
    leaves the old run as it was.
    """
    created = not run_dir.exists()
    with lock(run_dir):
        try:
            replacing = check_run_out(run_dir, force)
        except InputError:
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)  # ours, holding only the lock: leave nothing
            raise
        if replacing:
            return replace_run_dir(run_dir, write)
        return write(run_dir)


def replace_run_dir(run_dir: Path, write: Callable[[Path], T]) -> T:
    """Run ``write(staging)`` on a staging dir beside ``run_dir`` and swap it in only once it returns,
    rolling back to the old dir if the swap itself fails; on any error or interrupt the staging dir
    is removed and ``run_dir`` is as it was."""
    staging = make_temp_dir(run_dir.parent, f".{run_dir.name}", ".partial")
    try:
        value = write(staging)
        retired = staging.with_suffix(".old")
        os.replace(run_dir, retired)
        try:
            os.replace(staging, run_dir)
        except BaseException:
            os.replace(retired, run_dir)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    return value

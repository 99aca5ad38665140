"""A sweep's runs and what resuming means (the files and layout are :mod:`fnostab.rundir`'s).

A run is finished when its ``result.json`` exists (written last, atomically). Re-running the same
command keeps finished runs untouched and restarts unfinished ones from scratch. The sweep dir's
lock is an ``flock``: the kernel drops it when its holder dies, even by SIGKILL, so a killed sweep
never leaves a stale lock behind, while a live one refuses a second process.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnostab.config import RunConfig
from fnostab.errors import InputError
from fnostab.rundir import finished_status, is_finished, recorded_config
from fnostab.sweep_plan import PlannedRun
from fnostab.training.result import SweepInfo


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

    def sweep_info(self, kind: str) -> SweepInfo:
        """What its result.json records of the sweep it belongs to."""
        return SweepInfo(kind=kind, arm=self.arm, seed=self.seed, depth=self.depth, lr=self.lr)

    def planned(self) -> PlannedRun:
        """Its entry in sweep.json."""
        return PlannedRun(
            arm=self.arm, seed=self.seed, depth=self.depth, lr=self.lr, dir=self.relative_dir, plan=self.plan
        )


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
        status = finished_status(run_dir) if is_finished(run_dir) else None
        recorded = recorded_config(run_dir) if status is not None else None
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

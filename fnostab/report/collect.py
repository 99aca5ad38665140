"""Find and load finished runs: a run dir, a sweep dir, a result.json, or several of them.

A run is finished when its ``result.json`` exists (the runner writes it last, atomically). Run dirs
with a ``config.json`` but no ``result.json`` are unfinished — still running or killed — and are
listed, not loaded. Every problem with the inputs is an :class:`~fnostab.errors.InputError` that
names the path: a path that does not exist, a path with no finished run under it, a corrupt
``result.json`` or ``sweep.json``.

``metrics.csv`` (Lightning CSVLogger layout: the header is the sorted union of logged keys, rows
are sparse) is read on demand by :func:`read_metric_columns`, which tolerates missing columns and
empty cells.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnostab.errors import InputError
from fnostab.rundir import CONFIG_NAME, METRICS_NAME, RESULT_NAME, SWEEP_NAME, is_scratch, lr_tag, read_sweep_plan
from fnostab.training.result import RunResult, read_result


@dataclass(frozen=True)
class RunRecord:
    """One finished run: where it is, its result document and the group it belongs to."""

    dir: Path
    run_result: RunResult
    arm: str
    kind: str | None  # "shootout", "stress" or None (a plain ``fnostab train`` run)
    depth: int | None  # grid cells only (stress runs, shootout runs of an LR grid)
    lr: float | None  # grid cells only
    seed: int | None

    @property
    def status(self) -> str:
        return self.run_result.status

    @property
    def arch(self) -> str | None:
        return self.run_result.arch

    @property
    def clip(self) -> str | None:
        return self.run_result.clip

    @property
    def group_key(self) -> tuple[str, int | None, float | None]:
        """Runs are pooled per arm; grid cells per (arm, depth, lr)."""
        return (self.arm, self.depth, self.lr)

    @property
    def is_grid_cell(self) -> bool:
        return self.lr is not None or self.depth is not None

    @property
    def label(self) -> str:
        return group_label(self.arm, self.depth, self.lr)

    @property
    def metrics_csv(self) -> Path:
        return self.dir / METRICS_NAME


def group_label(arm: str, depth: int | None, lr: float | None) -> str:
    """``control`` for a shootout arm, ``control@d4-lr0.001`` for a stress cell (like its run dir)."""
    if depth is None and lr is None:
        return arm
    parts = []
    if depth is not None:
        parts.append(f"d{depth}")
    if lr is not None:
        parts.append(f"lr{lr_tag(lr)}")
    return f"{arm}@{'-'.join(parts)}"


@dataclass
class Collection:
    """Everything found under the input paths."""

    inputs: list[Path]
    runs: list[RunRecord]
    unfinished: list[Path] = field(default_factory=list)
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    # Finished runs under a sweep dir whose sweep.json does not plan them (left by an earlier,
    # wider command on the same dir): skipped, so a summary never pools two different sweeps.
    outside_plan: list[Path] = field(default_factory=list)

    @property
    def arm_order(self) -> list[str]:
        """Arms in the order the sweeps declared them, then in order of appearance."""
        order: list[str] = []
        for sweep in self.sweeps:
            order.extend(a for a in sweep["arms"] if a not in order)
        order.extend(r.arm for r in self.runs if r.arm not in order)
        return order


def _read_sweep(path: Path) -> dict[str, Any]:
    plan = read_sweep_plan(path)
    return {
        "path": str(path.parent),
        "kind": plan.kind,
        "arms": list(plan.arms),
        "seeds": list(plan.seeds),
        "planned": {(path.parent / d).resolve() for d in plan.planned_dirs},
    }


def _outside_plan(run_dir: Path, sweeps: Sequence[dict[str, Any]]) -> bool:
    resolved = run_dir.resolve()
    for sweep in sweeps:
        root = Path(sweep["path"]).resolve()
        if sweep["planned"] and resolved.is_relative_to(root) and resolved not in sweep["planned"]:
            return True
    return False


def _number(value: Any, kind: Callable[[Any], Any]) -> Any:
    try:
        return None if value is None else kind(value)
    except (TypeError, ValueError):
        return None


def make_record(run_dir: Path, result: RunResult) -> RunRecord:
    """Which arm, sweep kind and stress cell a result belongs to (see the module docstring)."""
    sweep = result.sweep
    train_config = result.training.config
    arm = (sweep.arm if sweep else None) or result.name or f"{result.arch}/{train_config.get('clip', 'none')}"
    kind = sweep.kind if sweep else None
    depth = lr = None
    # Stress runs, and shootout runs of a learning-rate grid (shootout --lrs), are cells of a sweep grid.
    if sweep is not None and (kind == "stress" or (kind == "shootout" and sweep.lr is not None)):
        given = sweep.model_fields_set  # a key absent from an older file falls back to the run's config
        depth = _number(sweep.depth if "depth" in given else result.model.config.get("fno_blocks"), int)
        lr = _number(sweep.lr if "lr" in given else train_config.get("lr"), float)
    seed = _number(sweep.seed if sweep is not None else result.seed, int)
    return RunRecord(dir=run_dir, run_result=result, arm=str(arm), kind=kind, depth=depth, lr=lr, seed=seed)


def collect(paths: Sequence[Path | str]) -> Collection:
    """Load every finished run under ``paths`` (run dirs, sweep dirs, result.json files).

    Raises InputError for a path that does not exist, a path with no finished run under it, and a
    corrupt result.json or sweep.json (the message names the file). A run reached through two
    paths is loaded once. Under a sweep dir only the runs its sweep.json plans are loaded; the
    others are listed in ``outside_plan``.
    """
    if not paths:
        raise InputError("no paths given: pass a run dir, a sweep dir or result.json files")
    inputs = [Path(p) for p in paths]
    seen: set[Path] = set()
    runs: list[RunRecord] = []
    unfinished: dict[Path, Path] = {}
    outside_plan: list[Path] = []
    sweeps: list[dict[str, Any]] = []
    for path in inputs:
        if not path.exists():
            raise InputError(f"{path}: no such file or directory")
        if path.is_file():
            if path.name != RESULT_NAME:
                raise InputError(f"{path}: expected a run dir, a sweep dir or a {RESULT_NAME} file")
            result_files = [path]
            pending: list[Path] = []
        else:
            result_files = sorted(p for p in path.rglob(RESULT_NAME) if p.is_file() and not is_scratch(p, path))
            pending = sorted(
                p.parent
                for p in path.rglob(CONFIG_NAME)
                if not is_scratch(p, path) and not (p.parent / RESULT_NAME).exists()
            )
            for sweep_file in sorted(path.rglob(SWEEP_NAME)):
                if not is_scratch(sweep_file, path) and str(sweep_file.parent) not in {s["path"] for s in sweeps}:
                    sweeps.append(_read_sweep(sweep_file))
        stale = [p for p in result_files if _outside_plan(p.parent, sweeps)]
        result_files = [p for p in result_files if p not in stale]
        if not result_files:
            detail = f"; {len(pending)} unfinished run dir(s) without {RESULT_NAME}" if pending else ""
            detail += f"; {len(stale)} run(s) outside its sweep.json plan" if stale else ""
            raise InputError(f"{path}: no finished runs (no {RESULT_NAME} under it{detail})")
        outside_plan.extend(p.parent for p in stale if p.parent not in outside_plan)
        for run_dir in pending:
            unfinished.setdefault(run_dir.resolve(), run_dir)
        for result_file in result_files:
            key = result_file.parent.resolve()
            if key in seen:
                continue
            seen.add(key)
            runs.append(make_record(result_file.parent, read_result(result_file)))
    collection = Collection(
        inputs=inputs, runs=runs, unfinished=sorted(unfinished.values()), sweeps=sweeps, outside_plan=outside_plan
    )
    order = {arm: i for i, arm in enumerate(collection.arm_order)}
    # Shootout and plain runs first, then grid cells; within each by declared arm order, depth, lr, seed.
    collection.runs.sort(
        key=lambda r: (
            r.is_grid_cell,
            order[r.arm],
            r.depth or 0,
            r.lr or 0.0,
            r.seed if r.seed is not None else -1,
            str(r.dir),
        )
    )
    return collection


def read_metric_columns(path: Path, wanted: Callable[[str], bool]) -> dict[str, tuple[list[int], list[float]]] | None:
    """The columns of a metrics.csv for which ``wanted(name)`` is true, as (steps, values) pairs.

    Rows where a column is empty are skipped for that column (CSVLogger writes sparse rows); a cell
    that is not a number is skipped too. ``nan`` / ``inf`` cells are kept: a non-finite gradient
    norm is information. The step is the row's ``step`` cell, or its row index when the file has no
    ``step`` column. Returns None when the file is missing or unreadable.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            names = [name for name in fields if name not in ("step", "epoch") and wanted(name)]
            columns: dict[str, tuple[list[int], list[float]]] = {name: ([], []) for name in names}
            for index, row in enumerate(reader):
                step_cell = row.get("step")
                step = index
                if step_cell not in (None, ""):
                    try:
                        step = int(float(step_cell))
                    except ValueError:
                        pass
                for name in names:
                    cell = row.get(name)
                    if cell in (None, ""):
                        continue
                    try:
                        value = float(cell)
                    except ValueError:
                        continue
                    columns[name][0].append(step)
                    columns[name][1].append(value)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return columns

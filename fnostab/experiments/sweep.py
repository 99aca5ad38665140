"""Plan and run a sweep (shootout or stress): lock, resume, execute, record infeasible, then the caller's finish."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fnostab.config import DataSource, ModelConfig, RunConfig, SimulationConfig, TrainConfig, build, merge
from fnostab.errors import InputError
from fnostab.experiments.arms import Arm
from fnostab.experiments.executors import execute
from fnostab.experiments.store import RunSpec, check_resumable
from fnostab.progress import Progress
from fnostab.rundir import lock, write_sweep_plan
from fnostab.sweep_plan import ArmOptions, PlanData, SweepPlan, SweepSettings
from fnostab.training.result import now_iso

T = TypeVar("T")


@dataclass(frozen=True)
class ExecutionOptions:
    jobs: int = 1
    executor: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise InputError(f"invalid --jobs: expected at least 1, found {self.jobs}")
        if self.executor not in ("local", "ray"):
            raise InputError(f"invalid --executor: expected local or ray, found {self.executor!r}")
        if self.ray_address and self.executor != "ray":
            raise InputError("--ray-address needs --executor ray")
        if self.ray_address:
            from fnostab.experiments.executors import check_ray_address

            check_ray_address(self.ray_address)


def shared_data(
    train: Path | None, test: Path | None, preset: str, gridsize: int | None = None
) -> tuple[DataSource, int]:
    """One data set for every run: the given files, or the preset's simulated set (cached once); and its N.

    The returned source records the data's gridsize, so every run's config.json says it and each run
    checks it. ``gridsize`` picks the simulated set's gridsize; with files it must match theirs.
    """
    if (train is None) != (test is None):
        raise InputError("give both TRAIN.npz and TEST.npz, or neither to simulate the preset's data")
    if train is not None:
        from fnostab.data.npz import load_pair
        from fnostab.training.runner import check_evaluable

        loaded, loaded_test = load_pair(train, test)  # validate once, before anything is written
        if gridsize is not None and gridsize != loaded.gridsize:
            raise InputError(
                f"gridsize mismatch: --gridsize {gridsize}, but {train} holds gridsize {loaded.gridsize} "
                f"({loaded.channels} channel(s) per sample)"
            )
        check_evaluable(loaded_test)
        return DataSource(train=train.resolve(), test=test.resolve(), gridsize=loaded.gridsize), loaded.N
    from fnostab.data.cache import load_cached_pair

    simulation = build(SimulationConfig, merge(preset, "data", {"gridsize": gridsize}))
    train_split, test_split = load_cached_pair(simulation)  # checked (and rebuilt if damaged) before the runs
    return DataSource(train=train_split.path, test=test_split.path, gridsize=simulation.gridsize), simulation.N


def plan_only_data(
    train: Path | None, preset: str, gridsize: int | None = None, N: int | None = None
) -> tuple[DataSource, int]:
    """What memory plans alone need of the data (``stress --plan-only``): its gridsize and N, read from
    ``train`` or the preset's simulation settings (nothing is simulated or cached). ``N`` and ``gridsize``
    override the preset; with a file, ``gridsize`` must match it. The source names placeholder files."""
    size, grid = N, gridsize
    if train is not None:
        from fnostab.data.npz import load_split

        split = load_split(train)
        if grid is not None and grid != split.gridsize:
            raise InputError(f"gridsize mismatch: --gridsize {grid}, but {train} holds gridsize {split.gridsize}")
        size, grid = size or split.N, split.gridsize
    elif size is None or grid is None:
        simulation = build(SimulationConfig, merge(preset, "data", {"gridsize": grid}))
        size, grid = size or simulation.N, simulation.gridsize
    return DataSource(train=Path("train.npz"), test=Path("test.npz"), gridsize=grid), size


def arm_run_config(
    arm: Arm, seed: int, preset: str, data: DataSource, overrides: dict[str, dict[str, Any]], **train_extra: Any
) -> RunConfig:
    """Preset, then sweep-wide flags, then the arm's own options; grad-norm logging always on."""
    model = merge(preset, "model", {**overrides.get("model", {}), **arm.model})
    train = merge(preset, "train", {**overrides.get("train", {}), **arm.train, **train_extra})
    train.update(seed=seed, log_grad_norm=True)
    source = f"arm {arm.name!r}"
    return RunConfig(
        name=arm.name,
        preset=preset,
        data=data,
        model=build(ModelConfig, model, source),
        train=build(TrainConfig, train, source),
    )


def validate_specs(specs: Iterable[RunSpec], N: int) -> None:
    """Every model must be buildable at N (geometry), checked before the sweep writes anything."""
    from fnostab.training.runner import plan_run

    seen: set[tuple] = set()
    for spec in specs:
        key = tuple(sorted(spec.config.model.model_dump().items())) + (spec.config.train.batch_size,)
        if key in seen:
            continue
        seen.add(key)
        model_plan = plan_run(spec.config, N)
        if model_plan.geometry_error:
            raise InputError(f"arm {spec.arm!r}: invalid model for N={N}: {model_plan.geometry_error}")


def sweep_settings(
    preset: str,
    data: DataSource,
    arms: list[Arm],
    seeds: list[int],
    *,
    depths: list[int | None] | None = None,
    lrs: list[float | None] | None = None,
    memory_limit: int | None = None,
) -> SweepSettings:
    """The sweep-wide part of a sweep's plan; an axis or limit left None is not part of the sweep."""
    optional = {"depths": depths, "lrs": lrs, "memory_limit": memory_limit}
    return SweepSettings(
        preset=preset,
        data=PlanData(train=str(data.train), test=str(data.test), gridsize=data.gridsize),
        arms={arm.name: ArmOptions(model=dict(arm.model), train=dict(arm.train)) for arm in arms},
        seeds=seeds,
        **{key: value for key, value in optional.items() if value is not None},
    )


def run_sweep(
    sweep_dir: Path,
    kind: str,
    specs: list[RunSpec],
    settings: SweepSettings,
    execution: ExecutionOptions,
    progress: Progress,
    *,
    infeasible: dict[str, str] | None = None,
    logging: Any = None,
    finish: Callable[[Path], T],
) -> T:
    """Run (or resume) the sweep under its lock, then ``finish(sweep_dir)`` (the caller's summary)
    still under the lock; returns what ``finish`` returns.

    ``settings`` (:func:`sweep_settings`) are the sweep-wide part of its plan; the
    :class:`~fnostab.sweep_plan.SweepPlan` written to sweep.json adds the kind, the command and every run.

    ``logging`` (:class:`fnostab.training.loggers.LoggingOptions`) sends every run to TensorBoard
    and/or MLflow too, each run as its own MLflow run in the sweep's experiment.

    ``infeasible`` maps a run's relative dir to the reason it cannot run (its memory plan): such
    runs get a result of status ``infeasible`` without building anything.
    """
    from fnostab.training.loggers import prepare_store
    from fnostab.training.runner import record_bare_result

    infeasible = infeasible or {}
    with lock(sweep_dir):
        finished, to_run = check_resumable(sweep_dir, specs)
        plan = SweepPlan(
            kind=kind,
            created=now_iso(),
            command=sys.argv[1:],
            **{name: getattr(settings, name) for name in settings.model_fields_set},  # an unset axis stays out
            runs=[spec.planned() for spec in specs],
        )
        write_sweep_plan(sweep_dir, plan)
        prepare_store(logging)
        runnable = [spec for spec in to_run if spec.relative_dir not in infeasible]
        for spec in to_run:
            if spec.relative_dir in infeasible:
                record_bare_result(
                    sweep_dir / spec.relative_dir,
                    spec.config,
                    "infeasible",
                    infeasible[spec.relative_dir],
                    plan=spec.plan,
                    sweep=spec.sweep_info(kind),
                )
        progress.log(
            f"{len(specs)} runs: {len(finished)} already finished, {len(to_run) - len(runnable)} infeasible, "
            f"{len(runnable)} to run ({execution.executor}, {execution.jobs} at a time)"
        )
        with progress.progress(f"{kind} runs", total=len(specs)) as advance:
            advance(len(specs) - len(runnable))

            def report(outcome: dict[str, Any]) -> None:
                advance(1)
                failure = outcome.get("failure")
                detail = f" at step {failure['step']}: {failure['reason']}" if failure else ""
                progress.log(f"  {outcome['dir']}: {outcome['status']}{detail}")

            gpus = 1.0 if any(spec.config.train.accelerator == "cuda" for spec in runnable) else 0.0
            execute(
                runnable,
                sweep_dir,
                kind,
                jobs=execution.jobs,
                executor=execution.executor,
                ray_address=execution.ray_address,
                gpus_per_run=gpus,
                on_outcome=report,
                logging=logging,
            )
        return finish(sweep_dir)

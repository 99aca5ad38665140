"""Stage A of the study (docs/method.md): arms × seeds on one shared data set, at most 20 epochs."""

from __future__ import annotations

from typing import Any

from fnostab.config import DataSource
from fnostab.errors import InputError
from fnostab.experiments.arms import Arm
from fnostab.experiments.store import RunSpec
from fnostab.experiments.sweep import arm_run_config
from fnostab.rundir import shootout_lr_run_dir, shootout_run_dir

# The study compares arms over at most 20 epochs; longer runs are stress tests (docs/method.md).
MAX_SHOOTOUT_EPOCHS = 20


def check_epochs(epochs: int | None) -> None:
    if epochs is not None and epochs > MAX_SHOOTOUT_EPOCHS:
        raise InputError(
            f"invalid --epochs: a shootout runs at most {MAX_SHOOTOUT_EPOCHS} epochs "
            f"(the study's comparison rule, docs/method.md), "
            f"found {epochs}; longer runs are stress tests: use `fnostab stress`"
        )


def resolve_seeds(seeds: int | None, seed_list: list[int] | None) -> list[int]:
    if seeds is not None and seed_list is not None:
        raise InputError("give --seeds N or --seed-list, not both")
    if seed_list is not None:
        if any(s < 0 for s in seed_list):
            raise InputError(f"invalid --seed-list: seeds must be >= 0, found {min(seed_list)}")
        return seed_list
    count = 3 if seeds is None else seeds
    if count < 1:
        raise InputError(f"invalid --seeds: expected at least 1, found {count}")
    return list(range(count))


def plan_shootout(
    arms: list[Arm],
    seeds: list[int],
    preset: str,
    data: DataSource,
    overrides: dict[str, dict[str, Any]],
    lrs: list[float] | None = None,
) -> list[RunSpec]:
    """Arms × seeds, or arms × learning rates × seeds when ``lrs`` is given (each run's peak LR).

    Over a learning-rate grid the runs are cells of a sweep grid, as in a stress sweep, so the summary
    gives each arm's stable-LR boundary and LR sensitivity next to the Stage A comparison
    (docs/method.md#lr-sensitivity).
    """
    specs = []
    for arm in arms:
        for lr in lrs or [None]:
            for seed in seeds:
                extra = {} if lr is None else {"lr": lr}
                config = arm_run_config(arm, seed, preset, data, overrides, **extra)
                check_epochs(config.train.epochs)
                if lr is None:
                    specs.append(RunSpec(arm.name, seed, config, shootout_run_dir(arm.name, seed)))
                else:
                    specs.append(
                        RunSpec(
                            arm.name,
                            seed,
                            config,
                            shootout_lr_run_dir(arm.name, config.train.lr, seed),
                            depth=config.model.fno_blocks,
                            lr=config.train.lr,
                        )
                    )
    return specs

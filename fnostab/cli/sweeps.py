"""``fnostab shootout`` and ``fnostab stress``: sweeps of arms × seeds (× depth × learning rate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fnostab.cli.common import (
    JSON_OPTION,
    LOGGER_OPTION,
    MLFLOW_URI_OPTION,
    PRESET_HELP,
    QUIET_OPTION,
    Output,
    command,
    gridsize_option,
)
from fnostab.cli.options import ConfigOptions, config_options
from fnostab.config import DEFAULT_PRESET, ModelConfig, TrainConfig
from fnostab.errors import InputError
from fnostab.rundir import check_sweep_out

SWEEP_PANEL = "Sweep"
EXEC_PANEL = "Execution"

TRAIN_ARG = typer.Argument(
    None, metavar="[TRAIN.npz]", help="Train split shared by all runs (default: the preset's simulated data, cached)."
)
TEST_ARG = typer.Argument(None, metavar="[TEST.npz]", help="Test split shared by all runs.")
ARM_OPTION = typer.Option(
    None,
    "--arm",
    help="NAME:key=val,... (repeatable); keys are model and training options, e.g. control:arch=hybrid,clip=none.",
    rich_help_panel=SWEEP_PANEL,
)
# The backslash keeps rich from reading [arms.NAME] as markup (it printed "TOML file with  tables.").
ARMS_FILE_OPTION = typer.Option(
    None, "--arms-file", help="TOML file with \\[arms.NAME] tables.", rich_help_panel=SWEEP_PANEL
)
SEEDS_OPTION = typer.Option(None, "--seeds", help="Seeds 0..N-1 per arm (default 3).", rich_help_panel=SWEEP_PANEL)
SEED_LIST_OPTION = typer.Option(None, "--seed-list", help="Explicit seeds, e.g. 3,7,11.", rich_help_panel=SWEEP_PANEL)
JOBS_OPTION = typer.Option(
    1,
    "--jobs",
    "-j",
    help="Runs at once on this machine (CPU threads are split between them).",
    rich_help_panel=EXEC_PANEL,
)
EXECUTOR_OPTION = typer.Option("local", "--executor", help="local (process pool) or ray.", rich_help_panel=EXEC_PANEL)
RAY_ADDRESS_OPTION = typer.Option(
    None, "--ray-address", help="Ray cluster address (default: start a local Ray instance).", rich_help_panel=EXEC_PANEL
)


def _overrides(groups: tuple[ConfigOptions, ...], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The sweep-wide model and training options given on the command line."""
    model = {k: v for group in groups if group.config is ModelConfig for k, v in group.values(options).items()}
    train = {k: v for group in groups if group.config is TrainConfig for k, v in group.values(options).items()}
    return {"model": model, "train": train}


def _summarize(sweep_dir: Path) -> Any:
    """The end of a sweep (``run_sweep``'s ``finish``): its summary, written into the sweep dir."""
    from fnostab.report import summarize

    return summarize([sweep_dir], out_dir=sweep_dir)


def _finish(output: Output, summary: dict[str, Any], sweep_dir: Path) -> None:
    from fnostab.report import format_terminal

    text = format_terminal(summary) + f"\n\nfull summary: {sweep_dir / 'summary.md'}"
    output.result(text, summary)


# Sweep-wide options: a few model and training fields set for every arm (an arm's own keys, any
# ModelConfig or TrainConfig field, go on top). Each is generated from its config field.
SHOOTOUT_OPTIONS = (
    ConfigOptions(
        ModelConfig,
        panel=SWEEP_PANEL,
        fields=("fno_blocks",),
        help={"fno_blocks": "Depth for every arm (arms may override)."},
    ),
    ConfigOptions(
        TrainConfig,
        panel=SWEEP_PANEL,
        fields=("epochs", "batch_size", "val_patches", "monitor_every", "accelerator"),
        panels={"accelerator": EXEC_PANEL},
        help={"epochs": "Epochs per run (at most 20; longer runs belong to `stress`)."},
    ),
)
STRESS_OPTIONS = (
    ConfigOptions(ModelConfig, panel=SWEEP_PANEL, fields=("max_hidden_channels", "checkpointing")),
    ConfigOptions(
        TrainConfig,
        panel=SWEEP_PANEL,
        fields=("epochs", "batch_size", "val_patches", "accelerator"),
        panels={"accelerator": EXEC_PANEL},
        help={"epochs": "Epochs per run (not capped)."},
    ),
)


@command
@config_options(*SHOOTOUT_OPTIONS)
def shootout_command(
    train_npz: Path | None = TRAIN_ARG,
    test_npz: Path | None = TEST_ARG,
    out: Path = typer.Option(
        ..., "--out", help="Sweep dir (rerun the same command to resume).", rich_help_panel=SWEEP_PANEL
    ),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", help=PRESET_HELP, rich_help_panel=SWEEP_PANEL),
    arm: list[str] | None = ARM_OPTION,
    arms_file: Path | None = ARMS_FILE_OPTION,
    seeds: int | None = SEEDS_OPTION,
    seed_list: str | None = SEED_LIST_OPTION,
    lrs: str | None = typer.Option(
        None,
        "--lrs",
        help="Run every arm at each of these peak learning rates, e.g. 1e-3,1e-2,3e-2,1e-1: "
        "stable-LR boundary and LR sensitivity per arm.",
        rich_help_panel=SWEEP_PANEL,
    ),
    clip_sweep: str | None = typer.Option(
        None,
        "--clip-sweep",
        help="Add control arms with these global norm clips, e.g. 1,5,10,20,50,100.",
        rich_help_panel=SWEEP_PANEL,
    ),
    gridsize: int | None = gridsize_option(SWEEP_PANEL),
    jobs: int = JOBS_OPTION,
    executor: str = EXECUTOR_OPTION,
    ray_address: str | None = RAY_ADDRESS_OPTION,
    logger: list[str] | None = LOGGER_OPTION,
    mlflow_uri: str | None = MLFLOW_URI_OPTION,
    json_output: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
    **options: Any,
) -> None:
    """Stage A: arms × seeds on one data set; failure rates and metrics per arm, and the verdict.

    Default arms: control (hybrid, no clipping), arch (stable_hybrid, no clipping), opt (hybrid,
    agc:0.01). With --lrs every arm runs at each learning rate, and the summary adds each arm's
    stable-LR boundary and LR sensitivity (Stage B on the learning-rate axis). Rerunning the same
    command resumes: finished runs are kept.
    """
    from fnostab.experiments.arms import parse_number_list, resolve_arms
    from fnostab.experiments.shootout import check_epochs, plan_shootout, resolve_seeds
    from fnostab.experiments.sweep import ExecutionOptions, run_sweep, shared_data, sweep_settings, validate_specs

    output = Output(json_mode=json_output, quiet=quiet)
    check_epochs(options["epochs"])
    execution = ExecutionOptions(jobs=jobs, executor=executor, ray_address=ray_address)
    arms = resolve_arms(arm or [], arms_file, clip_sweep)
    seed_values = resolve_seeds(
        seeds, parse_number_list(seed_list, "--seed-list", kind=int, positive=False) if seed_list else None
    )
    overrides = _overrides(SHOOTOUT_OPTIONS, options)
    check_sweep_out(out, "shootout")
    logging = _logging(logger, mlflow_uri, out)
    data, size = shared_data(train_npz, test_npz, preset, gridsize)
    lr_values = parse_number_list(lrs, "--lrs") if lrs else None
    specs = plan_shootout(arms, seed_values, preset, data, overrides, lr_values)
    validate_specs(specs, size)
    plan_document = sweep_settings(preset, data, arms, seed_values, lrs=lr_values or None)
    summary = run_sweep(out, "shootout", specs, plan_document, execution, output, logging=logging, finish=_summarize)
    _finish(output, summary, out)


def _logging(logger: list[str] | None, mlflow_uri: str | None, out: Path) -> Any:
    """The sweep's loggers; MLflow's experiment is named after the sweep dir."""
    from fnostab.training.loggers import parse_logging

    return parse_logging(logger, mlflow_uri, out, experiment=out.resolve().name)


@command
@config_options(*STRESS_OPTIONS)
def stress_command(
    train_npz: Path | None = TRAIN_ARG,
    test_npz: Path | None = TEST_ARG,
    out: Path | None = typer.Option(
        None, "--out", help="Sweep dir (required unless --plan-only).", rich_help_panel=SWEEP_PANEL
    ),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", help=PRESET_HELP, rich_help_panel=SWEEP_PANEL),
    arm: list[str] | None = ARM_OPTION,
    arms_file: Path | None = ARMS_FILE_OPTION,
    seeds: int | None = SEEDS_OPTION,
    seed_list: str | None = SEED_LIST_OPTION,
    depths: str | None = typer.Option(
        None, "--depths", help="fno_blocks values, e.g. 4,6,8.", rich_help_panel=SWEEP_PANEL
    ),
    lrs: str | None = typer.Option(
        None, "--lrs", help="Learning rates, e.g. 1e-3,3e-3,1e-2,3e-2,1e-1.", rich_help_panel=SWEEP_PANEL
    ),
    N: int | None = typer.Option(
        None,
        "--N",
        help="Patch size for --plan-only without data (default: the preset's).",
        rich_help_panel=SWEEP_PANEL,
    ),
    memory_limit: str | None = typer.Option(
        None,
        "--memory-limit",
        help="Memory of the machine the runs share, e.g. 24GiB (default: the device's free memory, "
        "or 75% of RAM on CPU); with --jobs K each run's plan must fit in a K-th of it.",
        rich_help_panel=SWEEP_PANEL,
    ),
    plan_only: bool = typer.Option(
        False,
        "--plan-only",
        help="Print the memory plans and exit; nothing is built or written.",
        rich_help_panel=SWEEP_PANEL,
    ),
    gridsize: int | None = gridsize_option(SWEEP_PANEL),
    jobs: int = JOBS_OPTION,
    executor: str = EXECUTOR_OPTION,
    ray_address: str | None = RAY_ADDRESS_OPTION,
    logger: list[str] | None = LOGGER_OPTION,
    mlflow_uri: str | None = MLFLOW_URI_OPTION,
    json_output: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
    **options: Any,
) -> None:
    """Stage B: depth and/or learning-rate sweep; each arm's largest stable depth and learning rate.

    Every configuration's memory plan is printed and recorded before anything is built; one over
    --memory-limit is recorded as infeasible with its numbers, and the sweep goes on.
    """
    from fnostab.experiments.arms import parse_number_list, resolve_arms
    from fnostab.experiments.shootout import resolve_seeds
    from fnostab.experiments.stress import format_bytes, plan_stress, plan_table, run_memory_limit
    from fnostab.experiments.sweep import ExecutionOptions, plan_only_data, run_sweep, shared_data, sweep_settings

    output = Output(json_mode=json_output, quiet=quiet)
    execution = ExecutionOptions(jobs=jobs, executor=executor, ray_address=ray_address)
    arms = resolve_arms(arm or [], arms_file, None)
    seed_values = resolve_seeds(
        seeds, parse_number_list(seed_list, "--seed-list", kind=int, positive=False) if seed_list else None
    )
    depth_values: list = parse_number_list(depths, "--depths", kind=int) if depths else [None]
    lr_values: list = parse_number_list(lrs, "--lrs") if lrs else [None]
    if depths is None and lrs is None:
        raise InputError("give --depths and/or --lrs: the axes of the stress sweep")
    if not plan_only and out is None:
        raise InputError("--out is required (unless --plan-only)")
    limit, limit_source = run_memory_limit(memory_limit, options["accelerator"], execution)
    overrides = _overrides(STRESS_OPTIONS, options)
    if plan_only:
        placeholder, size = plan_only_data(train_npz, preset, gridsize, N)
        grid = placeholder.gridsize
        specs, infeasible = plan_stress(
            arms, seed_values, depth_values, lr_values, preset, placeholder, overrides, size, limit
        )
        table, rows = plan_table(specs, infeasible)
        text = (
            f"memory plans at N={size}, gridsize {grid}, batch {specs[0].config.train.batch_size}; "
            f"limit {format_bytes(limit)} ({limit_source})\n\n{table}"
        )
        output.result(
            text,
            {"N": size, "gridsize": grid, "memory_limit": limit, "memory_limit_source": limit_source, "plans": rows},
        )
        return
    if N is not None:
        raise InputError("--N only applies to --plan-only; a sweep uses the data's N")
    assert out is not None
    check_sweep_out(out, "stress")
    logging = _logging(logger, mlflow_uri, out)
    data, size = shared_data(train_npz, test_npz, preset, gridsize)
    specs, infeasible = plan_stress(arms, seed_values, depth_values, lr_values, preset, data, overrides, size, limit)
    table, _ = plan_table(specs, infeasible)
    output.log(f"memory plans (limit {format_bytes(limit)}, {limit_source}):\n{table}")
    plan_document = sweep_settings(
        preset, data, arms, seed_values, depths=depth_values, lrs=lr_values, memory_limit=limit
    )
    summary = run_sweep(
        out,
        "stress",
        specs,
        plan_document,
        execution,
        output,
        infeasible=infeasible,
        logging=logging,
        finish=_summarize,
    )
    _finish(output, summary, out)

"""``fnostab train``: train one arm (architecture × clipping × schedule × seed), evaluate, write a run dir."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from fnostab.cli.common import (
    EXIT_FAILED,
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
from fnostab.config import (
    DEFAULT_PRESET,
    DataSource,
    ModelConfig,
    RunConfig,
    SimulationConfig,
    TrainConfig,
    build,
    merge,
)
from fnostab.errors import InputError
from fnostab.io import DirectoryLock, check_out_dir, make_temp_dir

MODEL_PANEL = "Model"
TRAIN_PANEL = "Optimisation"
RUN_PANEL = "Run"


def build_run_config(
    *,
    train_npz: Path | None,
    test_npz: Path | None,
    preset: str,
    model: dict[str, Any],
    train: dict[str, Any],
    name: str | None = None,
    gridsize: int | None = None,
) -> RunConfig:
    """Preset values, explicit options on top, validated; data from files or the preset's simulation.

    ``gridsize`` picks the simulated data set's gridsize, or (with files) the gridsize they must hold.
    """
    model_config = build(ModelConfig, merge(preset, "model", model))
    train_config = build(TrainConfig, merge(preset, "train", train))
    simulation = (
        None if train_npz is not None else build(SimulationConfig, merge(preset, "data", {"gridsize": gridsize}))
    )
    data = build(
        DataSource, {"train": train_npz, "test": test_npz, "simulation": simulation, "gridsize": gridsize},
        source="TRAIN.npz TEST.npz",
    )  # fmt: skip
    return RunConfig(name=name, preset=preset, data=data, model=model_config, train=train_config)


def format_result(result: dict[str, Any], run_dir: Path) -> str:
    lines = [f"run dir: {run_dir}"]
    failure = result.get("failure")
    if failure:
        lines.append(
            f"status: {result['status']} at step {failure['step']} (epoch {failure['epoch']}): {failure['reason']}"
        )
    else:
        lines.append("status: ok")
    if (run_dir / "precursors.csv").is_file():
        lines.append(f"precursor windows (spikes, failure) in precursors.csv: `fnostab explain {run_dir}` says why")
    training = result["training"]
    if training["best_val_loss"] is not None:
        lines.append(
            f"{training['val_loss_name']}: best {training['best_val_loss']:.4g} (epoch {training['best_epoch']}), "
            f"final {training['final_val_loss']:.4g}; {training['epochs_completed']} epochs, {training['steps']} steps"
        )
    levels = [f"initial {training['initial_val_loss']:.4g}"] if training.get("initial_val_loss") is not None else []
    if training.get("noise_floor") is not None:
        levels.append(f"noise floor {training['noise_floor']:.4g}")
        if training.get("final_val_loss_over_floor") is not None:
            levels.append(f"final = {training['final_val_loss_over_floor']:.1f} × floor")
    if levels:
        lines.append(f"{training['val_loss_name']}: " + ", ".join(levels))
    metrics = result.get("metrics")
    if metrics:
        base = metrics["baseline"]
        lines.append(
            f"amplitude SSIM {metrics['amp_ssim']:.3f} (constant {base['amp_ssim']:.3f}), MAE {metrics['amp_mae']:.4f} "
            f"(constant {base['amp_mae']:.4f}); phase SSIM {metrics['phase_ssim']:.3f} "
            f"(constant {base['phase_ssim']:.3f}), "
            f"per-patch-aligned {metrics['phase_aligned_ssim']:.3f}"
        )
    elif result.get("evaluation_note"):
        lines.append(result["evaluation_note"])
    grads = result.get("grad_norm")
    if grads and grads.get("max") is not None:
        lines.append(
            f"grad norm (pre-clip): median {grads['median']:.3g}, p99 {grads['p99']:.3g}, max {grads['max']:.3g} "
            f"at step {grads['max_step']}; {100 * grads['frac_above_1']:.1f}% of steps above 1"
        )
    timing = result["timing"]
    rate = f", {timing['samples_per_s']:.0f} samples/s" if timing.get("samples_per_s") else ""
    lines.append(f"time: train {timing['train_s']:.1f} s{rate}, evaluation {timing['eval_s']:.1f} s")
    return "\n".join(lines)


def _is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds an fnostab run (a readable result.json, or a config.json that is a RunConfig)."""
    from fnostab.training.result import CONFIG_NAME, RESULT_NAME, read_result

    try:
        read_result(path / RESULT_NAME)
        return True
    except (InputError, OSError):
        pass
    try:
        RunConfig.model_validate_json((path / CONFIG_NAME).read_bytes())
        return True
    except (ValueError, OSError):
        return False


def _prepare_out(out: Path | None, config: RunConfig, force: bool) -> tuple[Path, bool]:
    """The run dir, and whether it holds a run that ``--force`` replaces."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"train-{stamp}-{config.model.arch}-s{config.train.seed}"
    check_out_dir(out)
    replacing = out.is_dir() and any(p.name != DirectoryLock.NAME for p in out.iterdir())
    if replacing:
        if not _is_run_dir(out):
            raise InputError(f"{out}: --out is a non-empty directory that is not an fnostab run dir; choose another")
        if not force:
            raise InputError(f"{out} already holds a run; pass --force to replace it or choose another --out")
    return out, replacing


def _train_replacing(prepared: Any, run_dir: Path, output: Output, logging: Any) -> dict[str, Any]:
    """Train into a staging dir beside ``run_dir`` and swap it in only once the new run is written,
    so an interrupted ``--force`` rerun leaves the old run as it was."""
    from fnostab.training.runner import run_training

    staging = make_temp_dir(run_dir.parent, f".{run_dir.name}", ".partial")
    try:
        result = run_training(prepared, staging, output=output, logging=logging)
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
    return result


# Every ModelConfig and TrainConfig field is an option of `train`; the run-level ones are listed in the
# Run panel, a new field lands in Model or Optimisation.
MODEL_OPTIONS = ConfigOptions(ModelConfig, panel=MODEL_PANEL)
TRAIN_OPTIONS = ConfigOptions(
    TrainConfig,
    panel=TRAIN_PANEL,
    panels={
        name: RUN_PANEL
        for name in (
            "accelerator", "precision", "devices", "strategy", "threads", "log_grad_norm", "grad_norm_log_freq",
            "monitor_every", "precursors_every", "curvature_every", "batch_sharpness_every", "precursor_window",
            "val_patches",
        )
    },
)  # fmt: skip


@command
@config_options(MODEL_OPTIONS, TRAIN_OPTIONS)
def train_command(
    train_npz: Path | None = typer.Argument(
        None, metavar="[TRAIN.npz]", help="Train split (default: the preset's simulated data, cached)."
    ),
    test_npz: Path | None = typer.Argument(None, metavar="[TEST.npz]", help="Test split (validation and evaluation)."),
    out: Path | None = typer.Option(
        None, "--out", help="Run dir to write (default runs/train-<time>-<arch>-s<seed>).", rich_help_panel=RUN_PANEL
    ),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", help=PRESET_HELP, rich_help_panel=RUN_PANEL),
    gridsize: int | None = gridsize_option(MODEL_PANEL),
    force: bool = typer.Option(False, "--force", help="Replace an existing run dir.", rich_help_panel=RUN_PANEL),
    logger: list[str] | None = LOGGER_OPTION,
    mlflow_uri: str | None = MLFLOW_URI_OPTION,
    json_output: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
    **options: Any,
) -> None:
    """Train one generator on TRAIN.npz, validate and evaluate on TEST.npz, write a run dir.

    Exit 0 when the run is ok, 1 when it diverged, collapsed, ran out of memory or failed (its
    result.json is still written), 2 on bad input.
    """
    output = Output(json_mode=json_output, quiet=quiet)
    config = build_run_config(
        train_npz=train_npz,
        test_npz=test_npz,
        preset=preset,
        gridsize=gridsize,
        model=MODEL_OPTIONS.values(options),
        train=TRAIN_OPTIONS.values(options),
    )
    from fnostab.training.loggers import parse_logging
    from fnostab.training.runner import prepare_run, run_training

    logging = parse_logging(logger, mlflow_uri, experiment="fnostab-train")
    run_dir, _ = _prepare_out(out, config, force)
    if config.data.train is None:
        output.log(f"no data given: using the {preset} preset's simulated data set (cached)")
    prepared = prepare_run(config)
    created = not run_dir.exists()
    # Two commands training into one dir would mix their files: the second is refused, as for a
    # sweep. The checks are repeated under the lock: a run may have finished there since.
    with DirectoryLock(run_dir):
        try:
            _, replacing = _prepare_out(run_dir, config, force)
        except InputError:
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)  # ours, holding only the lock: leave nothing
            raise
        if replacing:
            result = _train_replacing(prepared, run_dir, output, logging)
        else:
            result = run_training(prepared, run_dir, output=output, logging=logging)
    output.result(format_result(result, run_dir), {"run_dir": str(run_dir), **result})
    if result["status"] != "ok":
        raise typer.Exit(EXIT_FAILED)

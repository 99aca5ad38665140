"""``fnostab train``: train one arm (architecture × clipping × schedule × seed), evaluate, write a run dir."""

from __future__ import annotations

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
from fnostab.rundir import check_run_out, write_run_dir

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


def _prepare_out(out: Path | None, config: RunConfig, force: bool) -> Path:
    """The run dir (default runs/train-<time>-<arch>-s<seed>), checked: see :func:`fnostab.rundir.check_run_out`."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"train-{stamp}-{config.model.arch}-s{config.train.seed}"
    check_run_out(out, force)
    return out


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
    run_dir = _prepare_out(out, config, force)
    if config.data.train is None:
        output.log(f"no data given: using the {preset} preset's simulated data set (cached)")
    prepared = prepare_run(config)
    # Locked (a second command on the dir is refused) and, with --force, swapped in only once written.
    result = write_run_dir(
        run_dir, force, lambda target: run_training(prepared, target, progress=output, logging=logging)
    )
    output.result(format_result(result, run_dir), {"run_dir": str(run_dir), **result})
    if result["status"] != "ok":
        raise typer.Exit(EXIT_FAILED)

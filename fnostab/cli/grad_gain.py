"""``fnostab grad-gain``: backward gradient gain ‖∂L/∂h_{i-1}‖ / ‖∂L/∂h_i‖ per block, JSON + plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fnostab.cli.common import JSON_OPTION, QUIET_OPTION, Output, command
from fnostab.cli.options import config_options
from fnostab.cli.probe import (
    BATCH_SIZE_OPTION,
    CHECKPOINT_OPTION,
    DEVICE_OPTION,
    MODEL_OPTIONS,
    PRESET_OPTION,
    RUN_OPTION,
    RUN_PANEL,
    SEED_OPTION,
    load_diagnostic_inputs,
)


@command
@config_options(MODEL_OPTIONS)
def grad_gain_command(
    train_npz: Path = typer.Argument(..., metavar="TRAIN.npz", help="Patterns (and probe) for the physics loss."),
    out: Path = typer.Option(
        Path("grad-gain"), "--out", help="Directory for grad_gain.json and grad_gain.png.", rich_help_panel=RUN_PANEL
    ),
    checkpoint: Path | None = CHECKPOINT_OPTION,
    run: Path | None = RUN_OPTION,
    preset: str | None = PRESET_OPTION,
    seed: int | None = SEED_OPTION,
    batches: int = typer.Option(
        4, "--batches", help="K batches (consecutive, in file order) to average over.", rich_help_panel=RUN_PANEL
    ),
    batch_size: int = BATCH_SIZE_OPTION,
    norm: str = typer.Option(
        "l2",
        "--norm",
        help="Gradient norm: l2, l1, linf or mean (mean |g|: compares blocks of different sizes, e.g. hybrid levels).",
        rich_help_panel=RUN_PANEL,
    ),
    loss: str = typer.Option("mae", "--loss", help="Physics loss: mae or poisson.", rich_help_panel=RUN_PANEL),
    device: str = DEVICE_OPTION,
    json_output: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
    **options: Any,
) -> None:
    """Per-block gradient norms of the physics loss and the backward gains between blocks.

    Uses the NPZ's probe, or the documented synthetic probe of its N (with a warning). Writes
    grad_gain.json and grad_gain.png. Exit 0 done, 2 bad input (nothing written).
    """
    from fnostab.config import build
    from fnostab.diagnostics import (
        GradGainSettings,
        format_grad_gain_report,
        measure_grad_gain,
        probe_for,
        write_grad_gain_report,
    )

    output = Output(json_mode=json_output, quiet=quiet)
    settings = build(
        GradGainSettings, dict(batches=batches, batch_size=batch_size, norm=norm, loss=loss, device=device)
    )
    target, split, generator, model_info = load_diagnostic_inputs(
        train_npz, out, settings.device, checkpoint=checkpoint, run=run, preset=preset, seed=seed,
        options=MODEL_OPTIONS.values(options),
    )  # fmt: skip
    probe, warning = probe_for(split)

    if warning:
        output.warn(warning)
    output.log(f"measuring gradient gain of {model_info['architecture']} ({model_info['source']}) on {train_npz} ...")
    report = measure_grad_gain(
        split.diffraction, probe, generator, loss=settings.loss, batches=settings.batches,
        batch_size=settings.batch_size, norm_type=settings.norm, device=target, groups=split.groups,
    )  # fmt: skip
    used, requested = report["settings"]["batches_used"], report["settings"]["batches_requested"]
    if used < requested:
        output.warn(
            f"{train_npz} holds {split.n} patterns: only {used} of the {requested} requested batches "
            f"of {settings.batch_size} exist"
        )
    report["model"] = model_info
    report["data"] = {
        "path": str(train_npz),
        "N": split.N,
        "gridsize": split.gridsize,
        "n_samples": split.n,
        "n_patterns": split.n * split.channels,
        "probe": "synthetic" if warning else "npz",
    }
    paths = write_grad_gain_report(report, out)
    output.result(format_grad_gain_report(report, paths), report)

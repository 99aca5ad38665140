"""``fnostab probe-activations``: forward activation statistics per layer of a generator, JSON + plot.

The model source and run options here are shared with ``fnostab grad-gain`` (:mod:`fnostab.cli.grad_gain`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fnostab.cli.common import JSON_OPTION, PRESET_HELP, QUIET_OPTION, Output, command
from fnostab.cli.options import ConfigOptions, config_options
from fnostab.config import ModelConfig, TrainConfig

MODEL_PANEL = "Model (a trained checkpoint, or options for a fresh generator)"
RUN_PANEL = "Run"

# Option declarations shared by both diagnostics commands. Every model option (one per ModelConfig
# field) defaults to None so that an explicitly given one can be told apart from a default and
# refused next to a checkpoint.
MODEL_OPTIONS = ConfigOptions(ModelConfig, panel=MODEL_PANEL)
CHECKPOINT_OPTION = typer.Option(
    None, "--checkpoint", help="A trained generator's checkpoint.pt.", rich_help_panel=MODEL_PANEL
)
RUN_OPTION = typer.Option(None, "--run", help="A run dir: its checkpoint.pt is used.", rich_help_panel=MODEL_PANEL)
PRESET_OPTION = typer.Option(
    None, "--preset", help=PRESET_HELP + " Fresh generator only; N comes from the NPZ.", rich_help_panel=MODEL_PANEL
)
SEED_OPTION = typer.Option(
    None,
    "--seed",
    help=f"Seed of a fresh generator's weights (default {TrainConfig.model_fields['seed'].default}, as fnostab train).",
    rich_help_panel=MODEL_PANEL,
)
DEVICE_OPTION = typer.Option(
    "auto", "--device", help="cpu, cuda or auto (cuda when available).", rich_help_panel=RUN_PANEL
)
BATCH_SIZE_OPTION = typer.Option(16, "--batch-size", help="Patterns per forward pass.", rich_help_panel=RUN_PANEL)


def load_diagnostic_inputs(
    train_npz: Path,
    out: Path,
    device: str,
    *,
    checkpoint: Path | None,
    run: Path | None,
    preset: str | None,
    seed: int | None,
    options: dict[str, Any],
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """What both diagnostics commands need, checked in this order before any work: the model source,
    the device, ``--out``, the NPZ; then the generator. Returns (device, split, generator, model info)."""
    from fnostab.data.npz import load_split
    from fnostab.diagnostics import load_model, resolve_device, resolve_model_source
    from fnostab.io import check_out_dir

    source = resolve_model_source(checkpoint=checkpoint, run=run, preset=preset, seed=seed, options=options)
    target = resolve_device(device)
    check_out_dir(out)
    split = load_split(train_npz)
    generator, model_info = load_model(source, split.N, split.gridsize)
    return target, split, generator, model_info


@command
@config_options(MODEL_OPTIONS)
def probe_activations_command(
    train_npz: Path = typer.Argument(
        ..., metavar="TRAIN.npz", help="Patterns to probe (only 'diffraction' is needed)."
    ),
    out: Path = typer.Option(
        Path("activations"),
        "--out",
        help="Directory for activation_report.json and activations.png.",
        rich_help_panel=RUN_PANEL,
    ),
    checkpoint: Path | None = CHECKPOINT_OPTION,
    run: Path | None = RUN_OPTION,
    preset: str | None = PRESET_OPTION,
    seed: int | None = SEED_OPTION,
    max_samples: int = typer.Option(
        64, "--max-samples", help="Probe the first this many patterns.", rich_help_panel=RUN_PANEL
    ),
    batch_size: int = BATCH_SIZE_OPTION,
    device: str = DEVICE_OPTION,
    json_output: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
    **options: Any,
) -> None:
    """Forward-hook statistics of the lifter, every block and its spectral and local branches.

    Writes activation_report.json (layers and summary, with the depth trend of block-output mean
    |x| and its drift flag) and activations.png. Exit 0 done, 2 bad input (nothing written).
    """
    from fnostab.config import build
    from fnostab.diagnostics import (
        ActivationProbeSettings,
        format_activation_report,
        probe_activations,
        write_activation_report,
    )

    output = Output(json_mode=json_output, quiet=quiet)
    settings = build(ActivationProbeSettings, dict(batch_size=batch_size, max_samples=max_samples, device=device))
    target, split, generator, model_info = load_diagnostic_inputs(
        train_npz, out, settings.device, checkpoint=checkpoint, run=run, preset=preset, seed=seed,
        options=MODEL_OPTIONS.values(options),
    )  # fmt: skip

    output.log(
        f"probing {model_info['architecture']} ({model_info['source']}) "
        f"on {min(settings.max_samples, split.n)} patterns of {train_npz} ..."
    )
    report = probe_activations(
        split.diffraction, generator, batch_size=settings.batch_size, max_samples=settings.max_samples, device=target
    )
    report["model"] = model_info
    report["data"] = {
        "path": str(train_npz),
        "N": split.N,
        "gridsize": split.gridsize,
        "n_samples": split.n,
        "n_patterns": split.n * split.channels,
    }
    paths = write_activation_report(report, out)
    output.result(format_activation_report(report, paths), report)

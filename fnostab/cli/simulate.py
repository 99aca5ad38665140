"""``fnostab simulate``: make a grid-lines data set (train.npz, test.npz)."""

from __future__ import annotations

from pathlib import Path

import typer

from fnostab.cli.common import JSON_OPTION, PRESET_HELP, QUIET_OPTION, Output, command
from fnostab.config import DEFAULT_PRESET, SimulationConfig, build, merge
from fnostab.errors import InputError
from fnostab.io import check_out_dir


def _check_destination(out: Path, force: bool) -> None:
    check_out_dir(out)
    existing = [out / name for name in ("train.npz", "test.npz") if (out / name).exists()]
    for path in existing:
        if not path.is_file():
            raise InputError(f"{path}: expected a file to overwrite, found a directory or special file")
    if existing and not force:
        raise InputError(f"{existing[0]} already exists; pass --force to overwrite it")


def format_summary(summary: dict, out: Path) -> str:
    lines = [
        f"wrote {out / 'train.npz'} and {out / 'test.npz'}",
        f"N {summary['N']}, gridsize {summary['gridsize']}"
        + (f" (offset {summary['offset']} px)" if summary["gridsize"] > 1 else "")
        + f", object {summary['object_size']}×{summary['object_size']}, "
        f"nphotons {summary['nphotons']:.3g}, intensity scale {summary['intensity_scale']:.4g}, "
        f"probe {summary['probe']}",
    ]
    for split in ("train", "test"):
        s = summary[split]
        lines.append(
            f"{split:5s}: {s['patches']} {'patches' if s['patterns'] == s['patches'] else 'groups'}"
            + f" ({s['nimgs']} image(s), {s['patterns']} patterns, grid {s['grid_shape'][0]}×{s['grid_shape'][1]}, "
            f"stride {s['stride']}), mean counts/pattern {s['mean_total_counts']:.4g}, "
            f"diffraction mean {s['diffraction_mean']:.4f} std {s['diffraction_std']:.4f}"
        )
    return "\n".join(lines)


@command
def simulate_command(
    out: Path = typer.Option(..., "--out", help="Directory to write train.npz and test.npz into."),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", help=PRESET_HELP),
    N: int | None = typer.Option(None, "--N", help="Patch size: 32, 64 or 128."),
    object_size: int | None = typer.Option(None, "--object-size", help="Object side S in pixels (default 392)."),
    nimgs_train: int | None = typer.Option(None, "--nimgs-train", help="Objects in the train split."),
    nimgs_test: int | None = typer.Option(None, "--nimgs-test", help="Objects in the test split."),
    stride_train: int | None = typer.Option(None, "--stride-train", help="Scan stride of the train grid (px)."),
    stride_test: int | None = typer.Option(None, "--stride-test", help="Scan stride of the test grid (px)."),
    nphotons: float | None = typer.Option(None, "--nphotons", help="Mean photon count per pattern."),
    set_phi: bool | None = typer.Option(None, "--set-phi/--no-set-phi", help="Give the object a phase (default on)."),
    probe: Path | None = typer.Option(
        None, "--probe", help="NPZ whose 'probeGuess' (complex N×N) replaces the synthetic probe."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed of objects and noise."),
    gridsize: int | None = typer.Option(
        None,
        "--gridsize",
        help="g: each sample a g×g group of overlapping patterns, C = g² channels (1 or 2; docs/gridsize.md).",
    ),
    offset: int | None = typer.Option(
        None, "--offset", help="Spacing of the patterns inside a group in px (gridsize 2; default 4)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing train.npz / test.npz."),
    json_output: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Simulate a grid-lines ptychography data set (train.npz and test.npz)."""
    output = Output(json_mode=json_output, quiet=quiet)
    overrides = dict(
        N=N,
        object_size=object_size,
        nimgs_train=nimgs_train,
        nimgs_test=nimgs_test,
        stride_train=stride_train,
        stride_test=stride_test,
        nphotons=nphotons,
        set_phi=set_phi,
        probe=probe,
        seed=seed,
        gridsize=gridsize,
        offset=offset,
    )
    config: SimulationConfig = build(SimulationConfig, merge(preset, "data", overrides))
    _check_destination(out, force)

    from fnostab.data.npz import load_probe_guess
    from fnostab.data.simulate import dataset_summary, simulate, write_dataset

    if config.probe is not None:
        load_probe_guess(config.probe, config.N)  # the full check, normalisation included, before any work
    output.log(f"simulating {preset} data set (N {config.N}, S {config.object_size}) ...")
    train, test = simulate(config)
    write_dataset(train, test, out)
    summary = dataset_summary(train, test)
    summary["train_path"], summary["test_path"] = str(out / "train.npz"), str(out / "test.npz")
    output.result(format_summary(summary, out), summary)

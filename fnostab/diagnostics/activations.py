"""Activation probe of a generator (docs/probes.md): forward statistics per layer against block depth.

:func:`probe_activations` runs the first ``max_samples`` patterns through the generator in batches of
``batch_size`` (eval mode, no grad) with an :class:`~fnostab.hooks.ActivationMonitor` attached, and
returns the monitor's report extended for a reader who did not run it:

* ``layers``: the monitor's per-module statistics (lifter, every block, each block's ``spectral`` and
  ``local`` branch and its activations), unchanged;
* ``summary``: the monitor's summary (``n_samples``, ``n_batches``, ``n_blocks``, ``block_mean_abs``,
  ``depth_slope``, ``depth_relative_slope``, ``drift_threshold``, ``drift``) plus ``architecture``,
  ``N``, ``batch_size``, ``max_samples``, ``device``, ``nonfinite_layers`` and a one-line ``verdict``;
* ``depth_profile``: one row per depth (the lifter first, depth None, then each block) with the
  numbers the plot and the table show: mean and p99 |x| of the output, spectral/local branch ratio,
  sparsity (fraction ≤ 0) of the block's GELU and low-frequency energy ratio of the output.

The patterns probed are the *first* ``max_samples`` of the array, in order, so a report is
reproducible; the quantile sampling inside the monitor is seeded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fnostab.diagnostics.source import Device, Settings, architecture_of, as_patterns, resolve_device
from fnostab.hooks import ActivationMonitor
from fnostab.hooks.activations import DRIFT_THRESHOLD
from fnostab.io import write_json_atomic

ACTIVATION_SCHEMA = "fnostab.activations/1"
ACTIVATION_REPORT = "activation_report.json"
ACTIVATION_PNG = "activations.png"


class ActivationProbeSettings(Settings):
    """Options of ``fnostab probe-activations`` (field names are the CLI flags)."""

    batch_size: int = Field(16, ge=1, description="patterns per forward pass")
    max_samples: int = Field(64, ge=1, description="probe the first this many patterns")
    device: Device = "auto"


def _depth_profile(layers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per depth: the lifter (depth None), then each block with its branch and GELU numbers."""
    rows: list[dict[str, Any]] = []
    activation_sparsity: dict[int, float | None] = {}
    for record in layers.values():
        if record["kind"] == "activation" and record["depth"] is not None:
            activation_sparsity.setdefault(record["depth"], record.get("sparsity"))  # the block's first GELU
    for name, record in layers.items():
        if record["kind"] not in ("lifter", "block"):
            continue
        rows.append(
            {
                "name": name,
                "kind": record["kind"],
                "depth": record["depth"],
                "mean_abs": record["mean_abs"],
                "p99_abs": record["p99_abs"],
                "branch_ratio": record.get("branch_ratio"),
                "sparsity": activation_sparsity.get(record["depth"]) if record["kind"] == "block" else None,
                "low_freq_ratio": record["low_freq_ratio"],
                "n_nonfinite": record["n_nonfinite"],
            }
        )
    rows.sort(key=lambda row: -1 if row["depth"] is None else row["depth"])
    return rows


def drift_verdict(summary: dict[str, Any]) -> str:
    """One line on the depth trend of block-output mean |x| (and on non-finite activations)."""
    if summary.get("nonfinite_layers"):
        return f"NON-FINITE activations in {', '.join(summary['nonfinite_layers'])}"
    relative = summary.get("depth_relative_slope")
    if relative is None:
        return "no depth trend: fewer than two blocks measured"
    threshold = summary["drift_threshold"]
    change = f"block-output mean |x| changes by {100 * relative:+.1f}% of its average level per block"
    if summary["drift"]:
        return f"DRIFT: {change} (threshold ±{100 * threshold:.0f}%)"
    return f"no drift: {change} (threshold ±{100 * threshold:.0f}%)"


def probe_activations(
    diffraction: np.ndarray | torch.Tensor,
    generator: torch.nn.Module,
    *,
    batch_size: int = 16,
    max_samples: int = 64,
    device: str | torch.device = "cpu",
    drift_threshold: float = DRIFT_THRESHOLD,
    seed: int = 0,
) -> dict[str, Any]:
    """Forward activation statistics of ``generator`` on the first ``max_samples`` diffraction patterns.

    Args:
        diffraction: amplitudes (n, N, N) or (n, N, N, 1), float32 (the NPZ ``diffraction``).
        generator: a fnostab generator (``lifter``, ``blocks``); it is moved to ``device`` and left
            there, run in eval mode without grad, and its train/eval mode is restored afterwards.
        batch_size: patterns per forward pass (≥ 1).
        max_samples: the first ``min(max_samples, n)`` patterns are probed (≥ 1).
        device: ``cpu``, ``cuda``, ``auto`` or a torch.device.
        drift_threshold, seed: passed to :class:`~fnostab.hooks.ActivationMonitor`.

    Returns:
        ``{"schema", "layers", "summary", "depth_profile"}`` of plain Python values (see the module
        docstring); non-finite statistics stay as float nan/inf (JSON writers turn them into null).
    """
    if batch_size < 1 or max_samples < 1:
        raise ValueError(f"batch_size and max_samples must be ≥ 1, got {batch_size} and {max_samples}")
    patterns = as_patterns(diffraction)[:max_samples]
    target = resolve_device(device)
    was_training = generator.training
    generator.to(target).eval()
    try:
        with ActivationMonitor(generator, drift_threshold=drift_threshold, seed=seed) as monitor, torch.no_grad():
            for start in range(0, patterns.shape[0], batch_size):
                generator(patterns[start : start + batch_size].to(target))
            report = monitor.report()
    finally:
        generator.train(was_training)

    layers = report["layers"]
    summary = {
        "architecture": architecture_of(generator),
        "N": int(patterns.shape[-1]),
        "batch_size": batch_size,
        "max_samples": max_samples,
        "device": str(target),
        **report["summary"],
        "nonfinite_layers": [name for name, record in layers.items() if record.get("n_nonfinite")],
    }
    summary["verdict"] = drift_verdict(summary)
    return {"schema": ACTIVATION_SCHEMA, "summary": summary, "layers": layers, "depth_profile": _depth_profile(layers)}


def write_activation_report(report: dict[str, Any], out_dir: Path | str) -> dict[str, Path]:
    """Write ``activation_report.json`` and ``activations.png`` into ``out_dir`` (atomically); their paths."""
    from fnostab.diagnostics.plots import plot_activations, save_figure

    out_dir = Path(out_dir)
    paths = {"report": out_dir / ACTIVATION_REPORT, "plot": out_dir / ACTIVATION_PNG}
    write_json_atomic(paths["report"], report)
    save_figure(plot_activations(report), paths["plot"])
    return paths


def _num(value: float | None, spec: str = ".3e") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def format_activation_report(report: dict[str, Any], paths: dict[str, Path] | None = None) -> str:
    """A compact per-depth table (lifter, then each block) and the drift verdict, for a terminal."""
    summary = report["summary"]
    lines = [
        f"activations of {summary['architecture']} (N={summary['N']}): {summary['n_samples']} patterns in "
        f"{summary['n_batches']} batch(es) of ≤{summary['batch_size']} on {summary['device']}",
        f"{'layer':<14}{'depth':>6}{'mean|x|':>11}{'p99|x|':>11}{'spec/local':>11}{'sparsity':>10}{'low-freq':>10}{'non-finite':>11}",
    ]
    for row in report["depth_profile"]:
        lines.append(
            f"{row['name']:<14}{'-' if row['depth'] is None else row['depth']:>6}{_num(row['mean_abs']):>11}"
            f"{_num(row['p99_abs']):>11}{_num(row['branch_ratio'], '.3f'):>11}{_num(row['sparsity'], '.3f'):>10}"
            f"{_num(row['low_freq_ratio'], '.3f'):>10}{_num(row['n_nonfinite'], 'd'):>11}"
        )
    slope = summary.get("depth_slope")
    if slope is not None:
        lines.append(
            f"depth trend: slope {_num(slope, '+.3e')} per block, "
            f"relative {_num(summary['depth_relative_slope'], '+.3f')}"
        )
    lines.append(summary["verdict"])
    if paths:
        lines.append("wrote " + ", ".join(str(p) for p in paths.values()))
    return "\n".join(lines)

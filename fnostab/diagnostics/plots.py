"""PNG plots of the diagnostics reports, drawn on ``matplotlib.figure.Figure`` with the Agg canvas.

No pyplot (its global figure registry is shared state and wants a display), as in
:mod:`fnostab.report.plots`. Non-finite values are left out of the curves rather than breaking the
log axes; a panel with nothing finite to draw says so in its middle.

* ``activations.png``: four panels against depth (the lifter at the left, then block 0, 1, …):
  mean and p99 |x| of the outputs (log axis), spectral/local branch ratio, GELU sparsity, and the
  low-frequency energy ratio of the outputs.
* ``grad_gain.png``: ‖∂L/∂h_i‖ per block (log axis) and log γ per transition (ratio of mean norms
  as bars, the mean of per-batch log-gains as markers) with the heuristic thresholds log 2 and
  log 0.5 drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fnostab.io import atomic_path


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: Path | str) -> Path:
    """Save ``figure`` as a PNG at ``path`` atomically (temp file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _series(xs: Sequence[int], values: Sequence[Any], *, positive: bool = False) -> tuple[list[int], list[float]]:
    """The (x, y) points whose y is finite (and > 0 for a log axis)."""
    points = [(x, float(v)) for x, v in zip(xs, values) if _finite(v) and (not positive or v > 0)]
    return [p[0] for p in points], [p[1] for p in points]


def _empty(axes: Axes, why: str) -> None:
    axes.text(0.5, 0.5, why, ha="center", va="center", transform=axes.transAxes, color="gray")


def plot_activations(report: dict[str, Any]) -> Figure:
    """Statistics of the lifter and block outputs against depth (see the module docstring)."""
    rows = report["depth_profile"]
    xs = [-1 if row["depth"] is None else int(row["depth"]) for row in rows]
    labels = ["lifter" if row["depth"] is None else str(row["depth"]) for row in rows]
    summary = report["summary"]
    figure = _figure(11, 7.5)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.88, hspace=0.35, wspace=0.22)
    figure.suptitle(
        f"activations of {summary['architecture']} (N={summary['N']}, {summary['n_samples']} patterns)\n"
        f"{summary['verdict']}",
        fontsize=10,
    )
    panels = figure.subplots(2, 2)

    axes = panels[0, 0]
    drawn = False
    for key, label, style in (("mean_abs", "mean |x|", "o-"), ("p99_abs", "p99 |x|", "s--")):
        x, y = _series(xs, [row[key] for row in rows], positive=True)
        if y:
            axes.plot(x, y, style, label=label)
            drawn = True
    if drawn:
        axes.set_yscale("log")
        axes.legend(fontsize=8)
    else:
        _empty(axes, "no finite positive values")
    axes.set_title("output magnitude", fontsize=10)

    for axes, key, title, block_only in (
        (panels[0, 1], "branch_ratio", "branch ratio mean|spectral| / mean|local|", True),
        (panels[1, 0], "sparsity", "GELU sparsity (fraction ≤ 0)", True),
        (panels[1, 1], "low_freq_ratio", "low-frequency energy ratio of the output", False),
    ):
        chosen = [(x, row[key]) for x, row in zip(xs, rows) if not (block_only and row["depth"] is None)]
        x, y = _series([c[0] for c in chosen], [c[1] for c in chosen])
        if y:
            axes.plot(x, y, "o-")
        else:
            _empty(axes, "nothing finite to draw")
        if key == "branch_ratio" and y:
            axes.axhline(1.0, color="gray", lw=0.8, ls=":")
        if key in ("sparsity", "low_freq_ratio"):
            axes.set_ylim(-0.02, 1.02)
        axes.set_title(title, fontsize=10)

    for axes in panels.flat:
        axes.set_xticks(xs, labels)
        axes.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
        axes.grid(alpha=0.3)
    for axes in panels[1]:
        axes.set_xlabel("depth (block index)")
    return figure


def plot_grad_gain(report: dict[str, Any]) -> Figure:
    """Per-block gradient norms and per-transition log-gains with the heuristic thresholds."""
    names = report["block_names"]
    thresholds = report["thresholds"]
    settings = report["settings"]
    figure = _figure(11, 4.5)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.2, top=0.84, wspace=0.25)
    figure.suptitle(
        f"gradient gain of {report['architecture']} (N={report['N']}), {settings['loss']} loss, "
        f"{settings['norm_type']} norm, {settings['batches_used']} batch(es)",
        fontsize=10,
    )
    norm_axes, gain_axes = figure.subplots(1, 2)

    x, y = _series(range(len(names)), report["norms"], positive=True)
    if y:
        norm_axes.plot(x, y, "o-")
        norm_axes.set_yscale("log")
    else:
        _empty(norm_axes, "no finite positive norms")
    norm_axes.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    norm_axes.set_title("‖∂L/∂h_i‖ (mean over batches)", fontsize=10)
    norm_axes.grid(alpha=0.3)

    transitions = [f"{names[i]}→{names[i - 1]}" for i in range(1, len(names))]
    if not transitions:
        _empty(gain_axes, "one block: no transitions")
    else:
        positions = list(range(len(transitions)))
        x, y = _series(positions, report["log_gains"])
        colours = {"amplifying": "tab:red", "damping": "tab:blue"}
        flags = dict(zip(positions, report["flags"]))
        gain_axes.bar(x, y, color=[colours.get(flags[p], "tab:gray") for p in x], label="log γ of mean norms")
        mx, my = _series(positions, report["mean_log_gains"])
        if my:
            gain_axes.plot(mx, my, "kD", ms=5, label="mean per-batch log γ")
        gain_axes.axhline(
            math.log(thresholds["amplifying"]),
            color="tab:red",
            ls="--",
            lw=1,
            label=f"amplifying γ > {thresholds['amplifying']:g} (heuristic)",
        )
        gain_axes.axhline(
            math.log(thresholds["damping"]),
            color="tab:blue",
            ls="--",
            lw=1,
            label=f"damping γ < {thresholds['damping']:g} (heuristic)",
        )
        gain_axes.axhline(0.0, color="black", lw=0.8)
        gain_axes.set_xticks(positions, transitions, rotation=30, fontsize=8)
        gain_axes.legend(fontsize=7, loc="best")
    gain_axes.set_title("backward log-gain log γ_i = log norm[i-1] − log norm[i]", fontsize=10)
    gain_axes.grid(alpha=0.3)
    return figure

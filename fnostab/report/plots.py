"""PNG plots of a summary, drawn on ``matplotlib.figure.Figure`` with the Agg canvas.

No pyplot: its global figure registry is shared state that leaks between callers (tests, a sweep
that summarises at its end) and needs a display backend. Each plot is a function returning a
Figure, or a string saying why there is nothing to draw; :func:`write_plots` saves the figures
atomically and records the skipped ones.

* ``val_loss.png``: validation loss per epoch, one colour per arm: the median over seeds as a line
  and the min–max band across seeds (runs that stopped early drop out of later epochs).
* ``grad_norm.png``: logged pre-clip gradient norm per step on a log axis: per arm, the rolling median
  (over steps) of the median over its runs as a line, the rolling min–max over its runs as a band,
  spikes (values above the ``--grad-norm-threshold`` line and 3× their run's rolling median) as dots,
  and each failed run's failure step as its status marker on the top edge.
* ``train_loss.png``: the per-step training loss, drawn the same way (spikes: 3× the rolling median).
* ``ssim.png``: amplitude and phase SSIM of each successful run per arm, the median as a bar, and
  the constant baseline drawn across each arm (phase SSIM means nothing without it).
* ``failure_times.png``: step at which each failed run failed, per arm, marker by status.
* ``stress_map.png`` (grid runs): per arm, failed / run seeds over the depth × LR grid.
* ``lr_curves.png`` (a learning-rate grid): final validation loss against the learning rate per arm,
  seed band, failed runs at ℓ0, each arm's LR sensitivity in the legend.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fnostab.io import atomic_path
from fnostab.report.document import ArmSummary, PlotsRecord, SummaryDocument
from fnostab.report.verdict_text import sensitivity

_COLOURS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
_STATUS_MARKERS = {"diverged": "x", "collapsed": "v", "oom": "s", "error": "D", "infeasible": "P"}


def _colour(index: int) -> str:
    return _COLOURS[index % len(_COLOURS)]


def _groups(document: SummaryDocument) -> list[ArmSummary]:
    """The arms the per-arm plots show: shootout arms when there are any (stress cells have their map)."""
    arms = [g for g in document.arms if not g.grid_cell]
    return arms or list(document.arms)


def _figure(width: float = 7.0, height: float = 4.5, *, bottom: float = 0.12, left: float = 0.11) -> Figure:
    # Fixed margins rather than constrained layout: the layout engine measures every tick label
    # and would take half of the drawing time for pictures whose labels we know.
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=left, right=0.97, bottom=bottom, top=0.86, wspace=0.3)
    FigureCanvasAgg(figure)
    return figure


def plot_val_loss(document: SummaryDocument, traces: Any) -> Figure | str:
    """Median validation loss per epoch with the min–max band across seeds, per arm."""
    series = {g.label: [c for c in traces.val_losses.get(g.label, []) if c] for g in _groups(document)}
    if not any(series.values()):
        return "no validation losses in any run"
    from matplotlib.ticker import MaxNLocator

    figure = _figure(left=0.15)
    axes = figure.add_subplot()
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    positive, drawn = True, 0
    for index, (label, curves) in enumerate(series.items()):
        if not curves:
            continue
        length = max(len(c) for c in curves)
        grid = np.full((len(curves), length), np.nan)
        for row, curve in enumerate(curves):
            grid[row, : len(curve)] = curve
        grid[~np.isfinite(grid)] = np.nan
        if not np.isfinite(grid).any():
            continue
        positive &= bool(np.nanmin(grid) > 0)
        epochs = np.arange(length)
        present = np.isfinite(grid).any(axis=0)
        with np.errstate(all="ignore"):
            lo = np.nanmin(np.where(present, grid, 0), axis=0)
            hi = np.nanmax(np.where(present, grid, 0), axis=0)
            mid = np.nanmedian(np.where(present, grid, 0), axis=0)
        epochs, lo, hi, mid = epochs[present], lo[present], hi[present], mid[present]
        colour = _colour(index)
        axes.fill_between(epochs, lo, hi, color=colour, alpha=0.2, linewidth=0)
        axes.plot(epochs, mid, color=colour, label=f"{label} (n={len(curves)})")
        drawn += 1
    if not drawn:  # every run diverged from its first epoch: an empty picture would only mislead
        return "no finite validation loss in any run"
    if positive:
        axes.set_yscale("log")
    names = sorted({n for g in _groups(document) for n in g.val_loss_names}) or ["val loss"]
    axes.set(xlabel="epoch", ylabel=" / ".join(names), title="Validation loss: median over seeds, band = min–max")
    axes.legend(fontsize="small")
    return figure


def plot_grad_norm(document: SummaryDocument, traces: Any) -> Figure | str:
    """Pre-clip gradient norm per logged step: rolling median per arm, min–max band, spikes and failures marked."""
    if not any(traces.grad_norms.get(g.label) for g in _groups(document)):
        return "no run logged grad_norm_preclip in metrics.csv (train with --log-grad-norm)"
    threshold = document.grad_norm_threshold
    return _trace_figure(
        document,
        traces.grad_norms,
        threshold=threshold if threshold > 0 else None,
        ylabel="pre-clip global L2 gradient norm",
        title="Gradient norm per logged step",
    )


def plot_train_loss(document: SummaryDocument, traces: Any) -> Figure | str:
    """Training loss per step, drawn like the gradient norm (no threshold: spikes are relative)."""
    if not any(traces.train_losses.get(g.label) for g in _groups(document)):
        return "no run logged a per-step training loss in metrics.csv"
    names = sorted({n.replace("_val_", "_train_") for g in _groups(document) for n in g.val_loss_names})
    return _trace_figure(
        document,
        traces.train_losses,
        threshold=None,
        ylabel=" / ".join(names) or "training loss",
        title="Training loss per step",
    )


# A logged value counts as a spike when it is this many times its run's rolling median (and above the
# threshold when there is one): isolated jumps stand out, a trace that sits above the threshold does not.
SPIKE_FACTOR = 3.0


def _window(n_steps: int) -> int:
    """Rolling window (odd, in logged steps): about 1/40 of the trace, so 2,000 steps give 51."""
    return max(5, (n_steps // 40) | 1)


def _rolling(values: np.ndarray, window: int, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    """Centred NaN-aware rolling ``reduce`` (np.nanmedian, np.nanmin, np.nanmax) over ``window`` points."""
    half = window // 2
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(values, half, constant_values=np.nan), window)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows give NaN, which is what we want
        return reduce(windows, axis=1)


def spike_mask(values: np.ndarray, window: int, threshold: float | None) -> np.ndarray:
    """Which values are spikes: above SPIKE_FACTOR × their rolling median and above ``threshold`` (if any)."""
    with np.errstate(invalid="ignore"):
        spike = values > SPIKE_FACTOR * _rolling(values, window, np.nanmedian)
        if threshold is not None:
            spike &= values > threshold
    return spike


def _aligned(runs: list[tuple[list[int], list[float]]], log_axis: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every run on the union of their steps: (steps, runs × steps), NaN where a run has no finite value."""
    steps = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s, _ in runs]))
    grid = np.full((len(runs), len(steps)), np.nan)
    for row, (run_steps, values) in enumerate(runs):
        grid[row, np.searchsorted(steps, np.asarray(run_steps, dtype=np.int64))] = values
    grid[~np.isfinite(grid) | ((grid <= 0) if log_axis else False)] = np.nan
    return steps, grid


def _trace_figure(
    document: SummaryDocument,
    per_label: Mapping[str, list[tuple[list[int], list[float]]]],
    *,
    threshold: float | None,
    ylabel: str,
    title: str,
) -> Figure:
    """One line per arm: the rolling median of the per-step median over its runs, a band from the
    rolling min to the rolling max over its runs (narrower window: where the raw extremes are), every
    spike of every run as a dot, and each failed run's failure step as its status marker along the top."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    groups = _groups(document)
    all_values = [v for g in groups for _, values in per_label.get(g.label) or [] for v in values]
    finite = np.asarray([v for v in all_values if math.isfinite(v)])
    log_axis = finite.size > 0 and bool(finite.min() > 0)
    figure = _figure(10.0, 4.8, left=0.09)
    figure.subplots_adjust(right=0.73)  # the legend sits to the right of the traces, never over them
    axes = figure.add_subplot()
    top = blended_transform_factory(axes.transData, axes.transAxes)
    handles: list[Any] = []
    statuses: set[str] = set()
    spikes_seen = False
    for index, group in enumerate(groups):
        colour = _colour(index)
        runs = [r for r in per_label.get(group.label) or [] if len(r[0])]
        if runs:
            steps, grid = _aligned(runs, log_axis)
            window = _window(len(steps))
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                middle, low, high = np.nanmedian(grid, axis=0), np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
            line = _rolling(middle, window, np.nanmedian)
            # The band's window is a quarter of the line's: a lone spike widens it by a sliver, not a block.
            narrow = max(3, (window // 4) | 1)
            axes.fill_between(
                steps,
                _rolling(low, narrow, np.nanmin),
                _rolling(high, narrow, np.nanmax),
                color=colour,
                alpha=0.18,
                linewidth=0,
            )
            axes.plot(steps, line, color=colour, linewidth=1.6)
            for row in grid:
                spike = spike_mask(row, window, threshold)
                if spike.any():
                    spikes_seen = True
                    axes.scatter(
                        steps[spike], row[spike], s=16, color=colour, edgecolors="black", linewidths=0.5, zorder=3
                    )
        failures = [
            (run.failure["step"], run.status)
            for run in group.runs
            if run.status not in ("ok", "infeasible") and isinstance((run.failure or {}).get("step"), (int, float))
        ]
        for step, status in failures:
            statuses.add(status)
            axes.axvline(step, color=colour, linestyle=":", linewidth=0.9, alpha=0.6)
            marker = _STATUS_MARKERS.get(status, "o")
            outline = {"linewidths": 1.5} if marker in ("x", "+") else {"edgecolors": "black", "linewidths": 0.6}
            axes.scatter(
                [step], [0.97], transform=top, marker=marker, s=55, color=colour, zorder=4, clip_on=False, **outline
            )
        n_failed = len(failures)
        label = f"{group.label} ({len(runs)} runs" + (f", {n_failed} failed)" if n_failed else ")")
        handles.append(Line2D([], [], color=colour, linewidth=1.6, label=label))
    if threshold is not None:
        axes.axhline(threshold, color="black", linestyle="--", linewidth=0.8)
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=0.8, label=f"threshold {threshold:g}"))
    if spikes_seen:
        rule = f"> {SPIKE_FACTOR:g}× median" + (", > threshold" if threshold is not None else "")
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                color="grey",
                markeredgecolor="black",
                linestyle="",
                markersize=4,
                label=f"spike ({rule})",
            )
        )
    for status in sorted(statuses):
        handles.append(
            Line2D(
                [],
                [],
                marker=_STATUS_MARKERS.get(status, "o"),
                color="grey",
                markeredgecolor="black",
                linestyle="",
                label=f"{status} (step)",
            )
        )
    if log_axis:
        axes.set_yscale("log")
    axes.set(xlabel="step", ylabel=ylabel, title=f"{title}\nline: rolling median per arm; band: min–max over its runs")
    axes.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return figure


def plot_ssim(document: SummaryDocument, traces: Any) -> Figure | str:
    """Amplitude and phase SSIM of successful runs per arm, with the constant baseline of each arm."""
    groups = _groups(document)
    points: dict[str, list[list[float]]] = {"amp_ssim": [], "phase_ssim": []}
    for key, per_group in points.items():
        for group in groups:
            values = []
            for run in group.runs:
                value = getattr(run.metrics, key) if run.metrics is not None else None
                if run.status == "ok" and isinstance(value, (int, float)) and math.isfinite(value):
                    values.append(value)
            per_group.append(values)
    any_point = any(values for per_group in points.values() for values in per_group)
    if not any_point:
        return "no successful run was evaluated (no SSIM)"
    figure = _figure(min(20.0, max(8.0, 0.9 * len(groups) + 3)), 4.5, bottom=0.2, left=0.08)
    figure.suptitle("SSIM of successful runs: dots = runs, bar = median, dashed = constant baseline")
    axes_pair = figure.subplots(1, 2, sharey=False)
    for axes, key, title in zip(axes_pair, ("amp_ssim", "phase_ssim"), ("amplitude SSIM", "phase SSIM")):
        for index, group in enumerate(groups):
            values = points[key][index]
            x = index + np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.full(len(values), float(index))
            axes.scatter(x, values, color=_colour(index), s=18, zorder=3)
            median = group.metrics.get(key).median
            if median is not None:
                axes.hlines(median, index - 0.3, index + 0.3, color=_colour(index), linewidth=2.5, zorder=2)
            base = group.metrics.get(key).baseline_median
            if base is not None:
                axes.hlines(base, index - 0.4, index + 0.4, color="black", linestyle="--", linewidth=1, zorder=1)
        axes.set_xticks(range(len(groups)), [g.label for g in groups], rotation=30, ha="right", fontsize="small")
        axes.set(ylabel=title, title=title, xlim=(-0.6, len(groups) - 0.4))  # the suptitle is the legend
    return figure


def plot_failure_times(document: SummaryDocument, traces: Any) -> Figure | str:
    """Failure step of every failed run, one row per arm."""
    groups = _groups(document)
    rows = []
    for index, group in enumerate(groups):
        for run in group.runs:
            failure = run.failure or {}
            if run.status not in ("ok", "infeasible") and isinstance(failure.get("step"), (int, float)):
                rows.append((index, failure["step"], run.status))
    if not rows:
        return "no run failed during training"
    figure = _figure(7.0, max(2.8, 0.5 * len(groups) + 1.5), bottom=0.2, left=0.25)
    axes = figure.add_subplot()
    from matplotlib.lines import Line2D

    handles = []
    for status in sorted({status for _, _, status in rows}):
        chosen = [(i, s) for i, s, st in rows if st == status]
        marker = _STATUS_MARKERS.get(status, "o")
        axes.scatter(
            [s for _, s in chosen], [i for i, _ in chosen], marker=marker, c=[_colour(i) for i, _ in chosen], s=40
        )
        # The points take their arm's colour; the legend explains only the marker.
        handles.append(Line2D([], [], marker=marker, color="black", linestyle="", label=status))
    axes.set_yticks(range(len(groups)), [g.label for g in groups], fontsize="small")
    axes.set_ylim(-0.5, len(groups) - 0.5)
    axes.set(xlabel="training step at failure", title="Time to failure")
    axes.legend(handles=handles, fontsize="small")
    return figure


def plot_stress_map(document: SummaryDocument, traces: Any) -> Figure | str:
    """Failed / run seeds per (depth, lr) cell, one panel per arm; infeasible cells hatched grey."""
    stress = document.stress
    if stress is None:
        return "no stress runs"
    arms = [a.arm for a in stress.arms]
    depths = sorted({c.depth for c in stress.cells if c.depth is not None})
    lrs = sorted({c.lr for c in stress.cells if c.lr is not None})
    if not depths or not lrs:
        return "stress runs carry no depth/lr"
    figure = _figure(max(4.5, 3.4 * len(arms)), 0.45 * len(depths) + 2.4, bottom=0.2, left=0.1)
    panels = figure.subplots(1, len(arms), squeeze=False)[0]
    image = None
    for axes, arm in zip(panels, arms):
        grid = np.full((len(depths), len(lrs)), np.nan)
        for cell in (c for c in stress.cells if c.arm == arm):
            row, col = depths.index(cell.depth), lrs.index(cell.lr)
            if cell.infeasible:
                axes.add_patch(_hatched(col, row))
                axes.text(col, row, "infeasible", ha="center", va="center", fontsize="x-small")
                continue
            grid[row, col] = cell.failures / cell.n if cell.n else np.nan
            axes.text(col, row, f"{cell.failures}/{cell.n}", ha="center", va="center", fontsize="small")
        image = axes.imshow(grid, cmap="RdYlGn_r", vmin=0, vmax=1, origin="lower", aspect="auto")
        axes.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], fontsize="small")
        axes.set_yticks(range(len(depths)), [str(d) for d in depths], fontsize="small")
        axes.set(xlabel="learning rate", ylabel="depth (fno_blocks)", title=f"{arm}: failed / seeds")
    if image is not None:
        figure.colorbar(image, ax=list(panels), label="failure rate", shrink=0.8)
    return figure


def plot_lr_curves(document: SummaryDocument, traces: Any) -> Figure | str:
    """Final validation loss against log learning rate, one line per arm (and depth) with its seed band.

    The line is the median over seeds of each run's score min(final loss, ℓ0), the band its min–max;
    a run that diverged or collapsed is marked at its ℓ0 (the loss before training), which is what
    the LR sensitivity in the legend charges it. Runs that are no measurement (oom, error) are left out.
    """
    sensitivities = document.stress.lr_sensitivity if document.stress is not None else []
    entries = [e for e in sensitivities if e.per_seed or e.excluded_seeds]
    if not entries:
        return "no learning-rate grid with at least two rates"
    several_depths = len({e.depth for e in entries}) > 1
    cells = [g for g in document.arms if g.grid_cell and g.lr is not None]
    figure = _figure(7.5, 4.8, bottom=0.12, left=0.12)
    axes = figure.add_subplot()
    for index, entry in enumerate(entries):
        colour = _colour(index)
        name = entry.arm + (f" d{entry.depth}" if several_depths else "")
        # Arms sharing an initialisation fail at the same ℓ0: nudge each arm sideways (a few % of a
        # decade) so that no line hides another.
        dodge = 10 ** (0.025 * (index - (len(entries) - 1) / 2))
        grid = [lr * dodge for lr in entry.grid]
        if entry.per_seed:
            scores = np.array([seed.scores for seed in entry.per_seed], dtype=float)
            axes.plot(
                grid,
                np.median(scores, axis=0),
                marker="o",
                color=colour,
                label=f"{name}: LR-sens {sensitivity(entry)}, n={len(scores)}",
            )
            if len(scores) > 1:
                axes.fill_between(grid, scores.min(axis=0), scores.max(axis=0), color=colour, alpha=0.18, linewidth=0)
        else:
            axes.plot([], [], color=colour, label=f"{name}: no complete seed")
        for cell in (c for c in cells if c.arm == entry.arm and c.depth == entry.depth):
            for run in cell.runs:
                if run.status in ("diverged", "collapsed") and run.initial_val_loss is not None:
                    axes.scatter(
                        [cell.lr * dodge],
                        [run.initial_val_loss],
                        marker=_STATUS_MARKERS[run.status],
                        color=colour,
                        s=50,
                        zorder=3,
                    )
    from matplotlib.lines import Line2D

    handles, _ = axes.get_legend_handles_labels()
    handles += [
        Line2D([], [], marker=_STATUS_MARKERS[s], color="black", linestyle="", label=f"{s} (scored at ℓ0)")
        for s in ("diverged", "collapsed")
    ]
    axes.set_xscale("log")
    axes.set(
        xlabel="peak learning rate (arms nudged apart)",
        ylabel="final validation loss, min(ℓ, ℓ0)",
        title="Final loss against learning rate (median, min–max over seeds)",
    )
    axes.legend(handles=handles, fontsize="small")
    return figure


def _hatched(col: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, facecolor="lightgrey", hatch="//", edgecolor="grey", linewidth=0)


PLOTS: dict[str, Callable[[SummaryDocument, Any], Figure | str]] = {
    "val_loss.png": plot_val_loss,
    "grad_norm.png": plot_grad_norm,
    "train_loss.png": plot_train_loss,
    "ssim.png": plot_ssim,
    "failure_times.png": plot_failure_times,
    "stress_map.png": plot_stress_map,
    "lr_curves.png": plot_lr_curves,
}


def save_figure(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def write_plots(out_dir: Path, document: SummaryDocument, traces: Any) -> PlotsRecord:
    """Draw every plot that has data; ``{written: [names], skipped: {name: why}}``.

    A skipped plot's file from an earlier summary in the same directory is removed, so the
    directory never shows a picture of other data than its summary.json.
    """
    written: list[str] = []
    skipped: dict[str, str] = {}
    for name, draw in PLOTS.items():
        outcome = draw(document, traces)
        if isinstance(outcome, str):
            skipped[name] = outcome
            (out_dir / name).unlink(missing_ok=True)
            continue
        save_figure(outcome, out_dir / name)
        written.append(name)
    return PlotsRecord(written=written, skipped=skipped)

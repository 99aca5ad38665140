"""The trace plots (grad_norm.png, train_loss.png): rolling median, min–max band, spikes, failure steps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from matplotlib.collections import PathCollection, PolyCollection
from test_report import arm, run_entry, summary_document

from fnostab.report.document import SummaryDocument
from fnostab.report.plots import plot_grad_norm, plot_train_loss, plot_val_loss, spike_mask

STEPS = list(range(200))


def _document(threshold: float = 5.0) -> SummaryDocument:
    runs_a = [
        run_entry(0, "ok"),
        run_entry(1, "ok"),
        run_entry(2, "diverged", failure={"status": "diverged", "step": 150, "epoch": 3}),
    ]
    arms = [
        arm("control", 3, 1, None, label="a", runs=runs_a, val_loss_names=["mae_val_loss"]),
        arm("control", 1, 0, None, label="b", runs=[run_entry(0, "ok")], val_loss_names=["mae_val_loss"]),
    ]
    return summary_document(arms, threshold)


def _traces() -> SimpleNamespace:
    # Arm a: three runs at constant 1, 2 and 3 (the third has a spike of 40 at step 100 and stops at
    # step 150 with a NaN); arm b: one run at 0.5 with a spike of 4 at step 60 (below the threshold).
    third = [3.0] * 151
    third[100], third[150] = 40.0, float("nan")
    b = [0.5] * 200
    b[60] = 4.0
    a = [(STEPS, [1.0] * 200), (STEPS, [2.0] * 200), (STEPS[:151], third)]
    return SimpleNamespace(grad_norms={"a": a, "b": [(STEPS, b)]}, train_losses={"a": a, "b": [(STEPS, b)]})


def test_spikes_are_jumps_over_the_rolling_median_and_the_threshold() -> None:
    values = np.ones(200)
    values[100], values[150] = 10.0, 2.5
    assert np.flatnonzero(spike_mask(values, 11, threshold=5.0)).tolist() == [100]
    assert np.flatnonzero(spike_mask(values, 11, threshold=None)).tolist() == [100]  # 2.5 < 3 × 1
    assert np.flatnonzero(spike_mask(values, 11, threshold=20.0)).tolist() == []
    assert not spike_mask(np.full(200, 2.0), 11, threshold=1.0).any()  # above the threshold, but no spike


def _drawn(figure) -> tuple:
    axes = figure.axes[0]
    lines = [line for line in axes.get_lines() if len(line.get_xdata()) > 2]  # not the axvline/axhline
    bands = [c for c in axes.collections if isinstance(c, PolyCollection)]
    dots = [c for c in axes.collections if isinstance(c, PathCollection)]
    return axes, lines, bands, dots


def test_grad_norm_plot_draws_the_median_line_band_spikes_and_failure_step() -> None:
    figure = plot_grad_norm(_document(), _traces())
    axes, lines, bands, dots = _drawn(figure)
    assert axes.get_yscale() == "log"
    assert len(lines) == 2 and len(bands) == 2
    # Arm a: the per-step median of 1, 2, 3 is 2 everywhere (the spike at 100 is one run of three);
    # after step 150 only runs 1 and 2 remain (median 1.5).
    line_a = np.asarray(lines[0].get_ydata())
    assert np.allclose(line_a[:140], 2.0) and np.allclose(line_a[160:], 1.5)
    band = bands[0].get_paths()[0].vertices
    assert band[:, 1].min() == 1.0 and band[:, 1].max() == 40.0
    offsets = [tuple(o) for c in dots for o in c.get_offsets()]
    assert (100.0, 40.0) in offsets  # arm a's spike: above 5 and 3× its run's median
    assert all(x != 60.0 for x, _ in offsets)  # arm b's jump to 4 is below the threshold
    assert any(x == 150.0 for x, _ in offsets)  # the failure marker of the diverged run
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels[:2] == ["a (3 runs, 1 failed)", "b (1 runs)"] and "diverged (step)" in labels


def test_train_loss_plot_marks_relative_spikes_without_a_threshold() -> None:
    _, lines, _, dots = _drawn(plot_train_loss(_document(), _traces()))
    offsets = [tuple(o) for c in dots for o in c.get_offsets()]
    assert (60.0, 4.0) in offsets and (100.0, 40.0) in offsets
    assert len(lines) == 2


def test_trace_plots_say_why_nothing_is_drawn() -> None:
    empty = SimpleNamespace(grad_norms={}, train_losses={})
    assert "grad_norm_preclip" in plot_grad_norm(_document(), empty)
    assert "training loss" in plot_train_loss(_document(), empty)


def test_val_loss_plot_draws_the_finite_arms_and_says_so_when_none_is_finite() -> None:
    nan = float("nan")
    finite = SimpleNamespace(val_losses={"a": [[1.0, 0.5], [nan, nan]], "b": [[nan, nan]]})
    axes = plot_val_loss(_document(), finite).axes[0]
    assert [line.get_label() for line in axes.get_lines()] == ["a (n=2)"]
    assert list(axes.get_lines()[0].get_ydata()) == [1.0, 0.5]  # the median of one finite curve is that curve
    diverged = SimpleNamespace(val_losses={"a": [[nan, nan]], "b": [[nan]]})
    assert plot_val_loss(_document(), diverged) == "no finite validation loss in any run"

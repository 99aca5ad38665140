"""Reconstruction picture for a run dir: amplitude and phase, prediction beside ground truth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fnostab.errors import InputError
from fnostab.io import atomic_path

__all__ = ["save_reconstruction_png"]


def _limits(image: np.ndarray) -> tuple[float, float]:
    """Colour limits from the finite pixels (a diverged prediction may hold NaN or inf)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _title(metrics: dict | None, kind: str) -> str:
    """'SSIM 0.452 (const 0.336)' for kind 'amp' or 'phase', or '' without metrics."""
    if not metrics or f"{kind}_ssim" not in metrics:
        return ""
    text = f"SSIM {float(metrics[f'{kind}_ssim']):.3f}"
    baseline = metrics.get("baseline")
    if isinstance(baseline, dict) and f"{kind}_ssim" in baseline:
        text += f" (const {float(baseline[f'{kind}_ssim']):.3f})"
    if kind == "phase" and "phase_aligned_ssim" in metrics:
        text += f", tile-aligned {float(metrics['phase_aligned_ssim']):.3f}"
    return text


def save_reconstruction_png(
    path: str | os.PathLike,
    stitched_pred: np.ndarray,
    ground_truth: np.ndarray,
    metrics: dict | None = None,
) -> None:
    """Write a 2×2 PNG: amplitude (top) and phase in rad (bottom), prediction left, truth right.

    Args:
        path: destination file; its directory must exist. Written atomically: the PNG goes to a
            temporary file in the same directory, which then replaces ``path`` (os.replace), so a
            reader never sees a half-written picture and an interrupted write leaves nothing behind.
        stitched_pred: (L, L) complex stitched prediction in object units (NaN/inf are drawn blank).
        ground_truth: (L, L) complex ground-truth region.
        metrics: optional ``evaluate_reconstruction`` result; its amplitude and phase SSIM (and
            their constant baselines) go into the panel titles.

    The phase panels show ``np.angle`` without plane removal or tile alignment, so per-tile phase
    offsets (free at gridsize 1) are visible. Each panel has its own colour scale (a sequential map:
    a cyclic one would give both ends of a narrow phase range the same colour).
    """
    # Imported here so that `import fnostab.evaluation` stays light for training workers.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pred, truth = np.asarray(stitched_pred), np.asarray(ground_truth)
    for name, arr in (("stitched_pred", pred), ("ground_truth", truth)):
        if arr.ndim != 2:
            raise InputError(f"{name} must be a 2-D (L, L) image; found shape {arr.shape}")
    path = Path(path)

    fig = Figure(figsize=(8, 7), layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas attached to this figure only: no pyplot global state
    axes = fig.subplots(2, 2)
    amp_title, phase_title = _title(metrics, "amp"), _title(metrics, "phase")
    panels = [
        (axes[0, 0], np.abs(pred), f"prediction amplitude\n{amp_title}", "gray"),
        (axes[0, 1], np.abs(truth), "ground-truth amplitude", "gray"),
        (axes[1, 0], np.angle(pred), f"prediction phase (rad)\n{phase_title}", "viridis"),
        (axes[1, 1], np.angle(truth), "ground-truth phase (rad)", "viridis"),
    ]
    for ax, image, title, cmap in panels:
        vmin, vmax = _limits(image)
        im = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title.strip(), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)

    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        fig.savefig(handle, format="png", dpi=100)

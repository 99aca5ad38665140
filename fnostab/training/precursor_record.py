"""The precursor record's names and rules, and its reader: what precursors.csv and metrics.csv hold.

Kept apart from the recorder (:mod:`fnostab.training.precursors`, which needs torch) so that
``summarize`` and ``explain`` read the record without importing torch.

precursors.csv: one row per buffered step of each window, columns ``window`` (index), ``trigger``
(``spike``, ``diverged`` or ``collapsed``), ``trigger_step``, ``step``, ``reason``, then
``precursor/loss``, ``precursor/grad_norm``, ``precursor/lr``, the curvature columns (NaN on steps
without a measurement) and ``precursor/<block>/<signal>`` for every block and signal.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

PRECURSORS_NAME = "precursors.csv"
SIGNALS: tuple[str, ...] = ("grad_norm", "weight_norm", "update_norm", "update_ratio", "update_grad_cos", "adam_v_rms")
GLOBALS: tuple[str, ...] = ("loss", "grad_norm", "lr")
CURVATURE: tuple[str, ...] = ("sharpness", "sharpness_precond", "batch_sharpness", "edge_gd", "edge_adam")
PRECURSOR_PREFIX = "precursor/"
CURVATURE_PREFIX = "curvature/"
WINDOW_COLUMNS: tuple[str, ...] = ("window", "trigger", "trigger_step", "step")

# A spike: a step whose loss exceeds LOSS_SPIKE_FACTOR, or whose pre-clip gradient norm exceeds
# GRAD_SPIKE_FACTOR, × its median over the previous SPIKE_HISTORY steps. In two healthy `cpu`-preset
# runs (Adam, lr 1e-3 and 3e-3, 2,660 steps each) the largest such ratios were 1.31 and 1.29 for the
# loss and 4.98 and 5.16 for the gradient norm (the small last batch of an epoch); the factors sit
# about 2× above those (scripts/precursor_thresholds.py). A blow-up is orders of magnitude larger.
LOSS_SPIKE_FACTOR = 3.0
GRAD_SPIKE_FACTOR = 10.0
SPIKE_HISTORY = 50
SPIKE_MIN_HISTORY = 10


def read_windows(path: Path) -> list[dict[str, Any]]:
    """precursors.csv back as windows: {trigger, trigger_step, reason, steps, columns: {name: [values]}}."""
    windows: dict[int, dict[str, Any]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        names = [n for n in (reader.fieldnames or []) if n not in (*WINDOW_COLUMNS, "reason")]
        for row in reader:
            index = int(row["window"])
            window = windows.setdefault(
                index,
                {
                    "trigger": row["trigger"],
                    "trigger_step": int(row["trigger_step"]),
                    "reason": row["reason"],
                    "steps": [],
                    "columns": {n: [] for n in names},
                },
            )
            window["steps"].append(int(row["step"]))
            for name in names:
                cell = row.get(name)
                window["columns"][name].append(float(cell) if cell not in (None, "") else math.nan)
    return [windows[i] for i in sorted(windows)]

"""The numbers behind the spike factors and the "moved" rule of ``fnostab explain``, from healthy runs.

Give run dirs trained with ``--precursors-every 1 --log-grad-norm`` that did not fail (e.g. the ``cpu``
preset at lr 1e-3 and 3e-3). For each run it prints:

* the largest ratio of a step's training loss and of its pre-clip gradient norm to the median of the
  previous ``SPIKE_HISTORY`` steps (after ``SPIKE_MIN_HISTORY`` steps): the spike factors
  (``LOSS_SPIKE_FACTOR``, ``GRAD_SPIKE_FACTOR``) must sit above these;
* per signal, on how many steps (after ``WARMUP_STEPS``) :func:`fnostab.report.explain.signal_moves`
  fires, at the shipped ``NOISE_MADS`` and at 6 MADs: a healthy run should give 0 at the shipped value;
* for the update/gradient cosine (not ranked by explain), on how many steps it fell 0.5 below its
  median by ``NOISE_MADS`` MADs: why it names no first signal.

Usage::

    .venv/bin/python scripts/precursor_thresholds.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fnostab.report import explain
from fnostab.report.collect import read_metric_columns
from fnostab.training.precursor_record import SPIKE_HISTORY, SPIKE_MIN_HISTORY


def max_ratio(values: list[float]) -> tuple[float, int]:
    best, where = 0.0, -1
    history: deque[float] = deque(maxlen=SPIKE_HISTORY)
    for index, value in enumerate(values):
        if len(history) >= SPIKE_MIN_HISTORY and math.isfinite(value):
            ratio = value / statistics.median(history)
            if ratio > best:
                best, where = ratio, index
        if math.isfinite(value):
            history.append(value)
    return best, where


def cosine_drops(values: list[float]) -> int:
    history: deque[float] = deque(maxlen=explain.HISTORY)
    count = 0
    for index, value in enumerate(values):
        if not math.isfinite(value):
            continue
        if index >= explain.WARMUP_STEPS and history:
            past = np.asarray(history)
            level = float(np.median(past))
            spread = float(np.median(np.abs(past - level)))
            if level - value >= max(0.5, explain.NOISE_MADS * spread):
                count += 1
        history.append(value)
    return count


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    for run in map(Path, sys.argv[1:]):
        columns = (
            read_metric_columns(run / "metrics.csv", lambda n: n.startswith("precursor/") or n.endswith("_train_loss"))
            or {}
        )
        loss_name = next((n for n in columns if n.endswith("_train_loss")), None)
        print(f"{run}:")
        for label, name in (("loss", loss_name), ("grad norm", "precursor/grad_norm")):
            if name in columns:
                steps, values = columns[name]
                ratio, where = max_ratio(values)
                print(
                    f"  {label}: {len(values)} steps, max ratio to the median of the previous {SPIKE_HISTORY}: "
                    f"{ratio:.2f} at step {steps[where]}"
                )
        counts: dict[str, list[int]] = {}
        cosine = 0
        shipped = explain.NOISE_MADS
        for name, (steps, values) in columns.items():
            parts = name.split("/")
            if len(parts) != 3:
                continue
            signal = parts[2]
            if signal == "update_grad_cos":
                cosine += cosine_drops(values)
                continue
            row = counts.setdefault(signal, [0, 0])
            for slot, mads in enumerate((shipped, 6.0)):
                explain.NOISE_MADS = mads
                row[slot] += sum(
                    1 for _ in explain.signal_moves(signal, steps, values, explain.WARMUP_STEPS, steps[-1])
                )
            explain.NOISE_MADS = shipped
        for signal, (at_shipped, at_six) in sorted(counts.items()):
            if signal in explain.DIRECTIONS:
                print(f"  {signal}: moves on {at_shipped} block-steps at {shipped:g} MADs, {at_six} at 6 MADs")
        print(f"  update_grad_cos: fell ≥ 0.5 and ≥ {shipped:g} MADs below its median on {cosine} block-steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

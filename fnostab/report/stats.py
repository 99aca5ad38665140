"""Pure statistics behind ``fnostab summarize``: no files, no plotting, plain numbers in and out.

* :func:`wilson_interval` — the 95% Wilson score interval of a failure rate (Wilson 1927). Unlike the
  normal approximation it stays inside [0, 1] and is not degenerate at 0/n or n/n, which is exactly
  where a seed sweep of 5–10 runs lives.
* :func:`quartiles` — median and IQR of the finite values (linear interpolation, numpy's default).
* :func:`series_stats` — a gradient-norm trace read from metrics.csv: max, median, p99, the
  fraction of logged steps above a threshold (the original runs' "exceeds 1.0 for ~97.8% of steps",
  docs/probes.md) and the largest spike with its step.
* :func:`first_block_to_blow_up` — which residual block's gradient norm left its own running median
  first, and by the largest factor.
* :func:`stable_boundary` / :func:`stress_boundaries` — the stability boundary of a depth × LR stress
  grid (docs/method.md, Stage A and Stage B).
"""

from __future__ import annotations

import heapq
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Two-sided 95%: the 0.975 quantile of the standard normal (scipy.stats.norm.ppf(0.975)).
Z_95 = 1.959963984540054

# A block counts as "blown up" at the first logged step where its gradient norm exceeds this
# multiple of the median of its own earlier steps. 10× separates a blow-up from ordinary
# step-to-step noise (in healthy cpu-preset runs p99/median of the global norm is about 4).
BLOWUP_FACTOR = 10.0


def wilson_interval(failures: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``failures / n``.

    centre = (p + z²/2n) / (1 + z²/n), half-width = z·sqrt(p(1−p)/n + z²/4n²) / (1 + z²/n).
    For n = 0 nothing is known and the interval is (0, 1).
    """
    if n < 0 or failures < 0 or failures > n:
        raise ValueError(f"wilson_interval needs 0 <= failures <= n, got {failures}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = failures / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # In exact arithmetic the bound is exactly 0 at 0/n and exactly 1 at n/n; floating point is not.
    lower = 0.0 if failures == 0 else max(0.0, centre - half)
    upper = 1.0 if failures == n else min(1.0, centre + half)
    return lower, upper


def intervals_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when two closed intervals share a point (a difference within them is not resolved)."""
    return a[0] <= b[1] and b[0] <= a[1]


def _finite(values: Iterable[Any]) -> np.ndarray:
    out = [float(v) for v in values if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)]
    return np.asarray(out, dtype=np.float64)


def quartiles(values: Iterable[Any]) -> dict[str, Any]:
    """``{n, median, p25, p75}`` over the finite values (None entries and NaN are left out)."""
    finite = _finite(values)
    if finite.size == 0:
        return {"n": 0, "median": None, "p25": None, "p75": None}
    p25, p50, p75 = np.percentile(finite, [25, 50, 75])
    return {"n": int(finite.size), "median": float(p50), "p25": float(p25), "p75": float(p75)}


def spread(values: Iterable[Any]) -> dict[str, Any]:
    """``{median, min, max}`` of the finite values (time-to-failure steps and epochs)."""
    finite = _finite(values)
    if finite.size == 0:
        return {"median": None, "min": None, "max": None}
    return {"median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max())}


def series_stats(steps: Sequence[int], values: Sequence[float], threshold: float) -> dict[str, Any] | None:
    """Statistics of one logged gradient-norm trace (``steps[i]`` is the step of ``values[i]``).

    Non-finite values are counted apart (``nonfinite``) and left out of the rest: a NaN norm is the
    divergence itself, which the run's status already reports. ``frac_above`` is over the finite
    logged steps. Returns None for an empty trace.
    """
    if len(steps) != len(values):
        raise ValueError("steps and values must have the same length")
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    finite_mask = np.isfinite(array)
    finite = array[finite_mask]
    out: dict[str, Any] = {
        "logged_steps": int(array.size),
        "nonfinite": int((~finite_mask).sum()),
        "max": None,
        "median": None,
        "p99": None,
        "frac_above": None,
        "above": 0,
        "max_step": None,
    }
    if finite.size:
        index = int(np.argmax(np.where(finite_mask, array, -np.inf)))
        out.update(
            max=float(finite.max()),
            median=float(np.median(finite)),
            p99=float(np.percentile(finite, 99)),
            above=int((finite > threshold).sum()),
            frac_above=float((finite > threshold).mean()),
            max_step=int(steps[index]),
        )
    return out


def pooled_series_stats(
    traces: Mapping[str, tuple[Sequence[int], Sequence[float]]], threshold: float
) -> dict[str, Any]:
    """Pool several runs' traces (``{run label: (steps, values)}``) into one summary of the arm.

    Every logged step of every run weighs the same; the largest spike names its run and step.
    """
    pooled_values: list[float] = []
    best: tuple[float, str, int] | None = None
    for label, (steps, values) in traces.items():
        pooled_values.extend(values)
        stats = series_stats(steps, values, threshold)
        if stats and stats["max"] is not None and (best is None or stats["max"] > best[0]):
            best = (stats["max"], label, stats["max_step"])
    stats = series_stats(list(range(len(pooled_values))), pooled_values, threshold)
    out: dict[str, Any] = {
        "runs_with_series": sum(1 for _, values in traces.values() if len(values)),
        "logged_steps": 0,
        "nonfinite": 0,
        "max": None,
        "median": None,
        "p99": None,
        "frac_above": None,
        "above": 0,
        "max_run": None,
        "max_step": None,
    }
    if stats is not None:
        out.update({k: stats[k] for k in ("logged_steps", "nonfinite", "max", "median", "p99", "frac_above", "above")})
    if best is not None:
        out["max_run"], out["max_step"] = best[1], best[2]
    return out


class _RunningMedian:
    """Median of the values pushed so far, in O(log n) per push (two heaps)."""

    def __init__(self) -> None:
        self._low: list[float] = []  # max-heap (negated) of the smaller half
        self._high: list[float] = []  # min-heap of the larger half

    def __len__(self) -> int:
        return len(self._low) + len(self._high)

    def push(self, value: float) -> None:
        if not self._low or value <= -self._low[0]:
            heapq.heappush(self._low, -value)
        else:
            heapq.heappush(self._high, value)
        if len(self._low) > len(self._high) + 1:
            heapq.heappush(self._high, -heapq.heappop(self._low))
        elif len(self._high) > len(self._low):
            heapq.heappush(self._low, -heapq.heappop(self._high))

    def median(self) -> float:
        if len(self._low) > len(self._high):
            return -self._low[0]
        return (-self._low[0] + self._high[0]) / 2


def _block_excursions(steps: Sequence[int], values: Sequence[float], factor: float) -> dict[str, Any] | None:
    """Each logged value of one block against the median of its own earlier values."""
    history = _RunningMedian()
    first: tuple[int, float, float] | None = None
    peak: tuple[float, int] | None = None
    for step, value in zip(steps, values):
        if math.isnan(value):
            continue  # the block saw no gradient on this step
        if len(history):
            baseline = history.median()
            if baseline > 0:
                ratio = value / baseline  # +inf stays +inf: a non-finite gradient is a blow-up
                if peak is None or ratio > peak[0]:
                    peak = (ratio, int(step))
                if first is None and ratio > factor:
                    first = (int(step), ratio, value)
        if math.isfinite(value):
            history.push(value)
    if peak is None:
        return None
    finite = [v for v in values if math.isfinite(v)]
    return {
        "median": float(np.median(finite)) if finite else None,
        "peak_factor": peak[0],
        "peak_step": peak[1],
        "first_cross_step": None if first is None else first[0],
        "first_cross_factor": None if first is None else first[1],
        "first_cross_value": None if first is None else first[2],
    }


def first_block_to_blow_up(
    blocks: Mapping[int, tuple[Sequence[int], Sequence[float]]], factor: float = BLOWUP_FACTOR
) -> dict[str, Any] | None:
    """The residual block whose gradient norm left its own median first, by the largest factor.

    ``blocks`` maps block index → (steps, ‖∂L/∂h_i‖ at those steps). Each value is compared with the
    median of the same block's earlier values — its own scale, since deep and shallow blocks carry
    gradients of different size, and its own past, since a median over the whole run of a run that
    diverged early is the exploded level itself. The answer is the earliest step at which a block
    exceeds ``factor`` × that median; a blow-up reaches every block in the same backward pass, so
    among blocks crossing at that step the one with the largest factor wins. +inf counts as a
    crossing; NaN (the block saw no gradient on that step) is skipped. When no block crosses, the
    block with the largest excursion is given with ``crossed: false``. None without usable data.
    """
    per_block = []
    for index in sorted(blocks):
        excursions = _block_excursions(*blocks[index], factor)
        if excursions is not None:
            per_block.append({"block": int(index), **excursions})
    if not per_block:
        return None
    crossed = [b for b in per_block if b["first_cross_step"] is not None]
    if crossed:
        winner = min(crossed, key=lambda b: (b["first_cross_step"], -b["first_cross_factor"]))
        step, ratio, value, did_cross = (
            winner["first_cross_step"],
            winner["first_cross_factor"],
            winner["first_cross_value"],
            True,
        )
    else:
        winner = max(per_block, key=lambda b: b["peak_factor"])
        step, ratio, value, did_cross = winner["peak_step"], winner["peak_factor"], None, False
    return {
        "block": winner["block"],
        "step": step,
        "factor": ratio,
        "value": value,
        "crossed": did_cross,
        "threshold_factor": factor,
        "blocks": per_block,
    }


# ------------------------------------------------------------------------------------ stress grid
def stable_boundary(points: Mapping[float, bool]) -> float | None:
    """Largest tested value v such that v and every smaller tested value are stable.

    ``points`` maps a tested value (a learning rate, a depth) to "all seeds ok there". Being
    stable above an unstable point is luck, not a boundary, so the scan stops at the first
    unstable value. None: unstable already at the smallest value tested.
    """
    boundary = None
    for value in sorted(points):
        if not points[value]:
            break
        boundary = value
    return boundary


def _lower(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return min(a, b)


def stress_boundaries(
    cells: Sequence[Mapping[str, Any]],
    *,
    depths: Iterable[int] | None = None,
    lrs: Iterable[float] | None = None,
) -> dict[str, Any]:
    """Stability boundaries of one arm's stress cells (``{depth, lr, n, failures, infeasible}``).

    Restrict to ``depths`` / ``lrs`` to compare two arms on the grid they share.

    * ``lr_by_depth``: per depth, :func:`stable_boundary` over its LRs; a depth whose every cell is
      infeasible (the plan did not fit) has no LR boundary and ``infeasible: true``.
    * ``depth_by_lr``: per LR, :func:`stable_boundary` over depths; an infeasible cell counts as not
      stable here, since a depth that cannot be built is not reached.
    * ``boundary``: one number per axis. ``lr``: the smallest of the per-depth LR boundaries over the
      feasible depths (the LR that is safe at every depth tested); ``depth``: the smallest of the
      per-LR depth boundaries. None means "not even at the smallest value tested" — or, when
      ``lr_swept`` / ``depth_swept`` is False, that the axis had a single value and so no boundary.
    """
    depth_set = None if depths is None else set(depths)
    lr_set = None if lrs is None else {float(v) for v in lrs}
    chosen = [
        c
        for c in cells
        if c["depth"] is not None
        and c["lr"] is not None
        and (depth_set is None or c["depth"] in depth_set)
        and (lr_set is None or float(c["lr"]) in lr_set)
    ]

    def is_stable(cell: Mapping[str, Any]) -> bool:
        return not cell["infeasible"] and cell["n"] > 0 and cell["failures"] == 0

    lr_by_depth = []
    boundary_lr: float | None = math.inf
    for depth in sorted({c["depth"] for c in chosen}):
        at_depth = [c for c in chosen if c["depth"] == depth]
        feasible = [c for c in at_depth if not c["infeasible"]]
        if not feasible:
            lr_by_depth.append({"depth": depth, "lr": None, "infeasible": True})
            continue
        value = stable_boundary({float(c["lr"]): is_stable(c) for c in feasible})
        lr_by_depth.append({"depth": depth, "lr": value, "infeasible": False})
        boundary_lr = _lower(boundary_lr, value)

    depth_by_lr = []
    boundary_depth: float | None = math.inf
    for lr in sorted({float(c["lr"]) for c in chosen}):
        at_lr = {c["depth"]: is_stable(c) for c in chosen if float(c["lr"]) == lr}
        value = stable_boundary(at_lr)
        depth_by_lr.append({"lr": lr, "depth": value})
        boundary_depth = _lower(boundary_depth, value)

    # An axis with one tested value (an LR-only or depth-only sweep) has no boundary to report.
    lr_swept = len({float(c["lr"]) for c in chosen}) > 1
    depth_swept = len({c["depth"] for c in chosen}) > 1
    return {
        "lr_by_depth": lr_by_depth,
        "depth_by_lr": depth_by_lr,
        "boundary": {
            "lr": None if not lr_swept or boundary_lr in (None, math.inf) else boundary_lr,
            "depth": None if not depth_swept or boundary_depth in (None, math.inf) else int(boundary_depth),
            "lr_swept": lr_swept,
            "depth_swept": depth_swept,
        },
    }


def beyond(a: float | None, b: float | None) -> bool:
    """Is boundary ``a`` strictly beyond boundary ``b``? None means below the tested range."""
    if a is None:
        return False
    return b is None or a > b

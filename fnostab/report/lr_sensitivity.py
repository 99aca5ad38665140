"""Learning-rate sensitivity of an arm (Wortsman et al. 2023, arXiv:2309.14322, §2.2).

    LR-sens = mean over η in the grid of [ min(ℓ(η), ℓ0) − ℓ* ]

ℓ(η) is the final validation loss of the run at peak learning rate η, ℓ0 the validation loss of the
same initialisation before the first step, and ℓ* the best final loss over the grid. A run that
diverged or collapsed scores ℓ0: it ended no better than untrained. A run that is not a measurement
of stability (``oom``, ``error``, ``infeasible``) leaves its seed's curve incomplete, and that seed
is left out with the reason, rather than scored as if it had trained.

ℓ* is defined two ways (docs/method.md#lr-sensitivity):

* **per arm** (Wortsman's definition): the arm's own best score over the grid and its seeds. It
  measures how much of the arm's best loss is lost by a wrong learning rate, whatever that best is;
  an arm that never learns scores 0, which is why it is always read beside the loss-vs-LR curves.
* **common**: the best score of all arms at the same depth. Sensitivities then share one scale, and a
  lower value means a lower clipped loss across the grid.

Each seed gives one sensitivity (its scores on the grid minus ℓ*); the arm's figure is their mean,
with a 95% Student-t interval over seeds (none from a single seed).

The functions here return plain numbers (dicts); the summary types them as
:class:`fnostab.report.document.LrSensitivity`, which :func:`separated` and
:func:`seeds_to_separate` read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fnostab.report.document import RunEntry, SensitivityScores

# Statuses whose final loss is scored at ℓ0: instabilities, the thing LR sensitivity measures.
SCORED_AT_INITIAL = ("diverged", "collapsed")


@dataclass(frozen=True)
class LrPoint:
    """One run of an LR sweep: its seed, peak learning rate, status and losses."""

    seed: int | None
    lr: float
    status: str
    final_val_loss: float | None
    initial_val_loss: float | None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def score(point: LrPoint) -> tuple[float | None, str | None]:
    """min(ℓ(η), ℓ0) for one run, or (None, why it is not a measurement)."""
    if not _finite(point.initial_val_loss):
        return None, "no initial validation loss recorded"
    initial = float(point.initial_val_loss)
    if point.status in SCORED_AT_INITIAL:
        return initial, None
    if point.status != "ok":
        return None, f"status {point.status} (not a measurement of stability)"
    if not _finite(point.final_val_loss):
        return initial, None
    return min(float(point.final_val_loss), initial), None


def _sample_sd(values: Sequence[float]) -> float:
    """Standard deviation with n − 1 in the denominator (at least two values)."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t_interval_95(values: Sequence[float]) -> list[float] | None:
    """Two-sided 95% Student-t interval of the mean; None for fewer than two values."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    half = float(t.ppf(0.975, n - 1)) * _sample_sd(values) / math.sqrt(n)
    return [mean - half, mean + half]


@dataclass(frozen=True)
class SeedCurve:
    seed: int | None
    scores: dict[float, float]  # lr → min(ℓ(η), ℓ0)
    initial: float | None


def seed_curves(points: Iterable[LrPoint], grid: Sequence[float]) -> tuple[list[SeedCurve], list[dict[str, Any]]]:
    """Complete per-seed score curves on ``grid``, and the seeds left out with their reason."""
    by_seed: dict[int | None, list[LrPoint]] = {}
    for point in points:
        by_seed.setdefault(point.seed, []).append(point)
    curves, excluded = [], []
    for seed in sorted(by_seed, key=lambda s: (s is None, s)):
        scores: dict[float, float] = {}
        problems = []
        for point in by_seed[seed]:
            value, why = score(point)
            if value is None:
                problems.append(f"lr {point.lr:g}: {why}")
            else:
                scores[float(point.lr)] = value
        tried = {float(p.lr) for p in by_seed[seed]}
        problems += [f"lr {lr:g}: no run" for lr in grid if lr not in tried]
        if problems:
            excluded.append({"seed": seed, "reasons": problems})
            continue
        initials = {float(p.initial_val_loss) for p in by_seed[seed] if _finite(p.initial_val_loss)}
        curves.append(SeedCurve(seed, scores, min(initials) if initials else None))
    return curves, excluded


def sensitivity(curves: Sequence[SeedCurve], grid: Sequence[float], best: float) -> dict[str, Any]:
    """Mean, 95% interval and per-seed values of the sensitivity for a given ℓ*."""
    per_seed = [
        {
            "seed": c.seed,
            "value": sum(c.scores[lr] for lr in grid) / len(grid) - best,
            "scores": [c.scores[lr] for lr in grid],
            "initial_val_loss": c.initial,
        }
        for c in curves
    ]
    values = [entry["value"] for entry in per_seed]
    return {
        "best_loss": best,
        "mean": sum(values) / len(values) if values else None,
        "ci95": t_interval_95(values),
        "per_seed": per_seed,
    }


def _arm(points: Sequence[LrPoint]) -> tuple[dict[str, Any], list[SeedCurve]] | None:
    grid = sorted({float(p.lr) for p in points})
    if len(grid) < 2:
        return None
    curves, excluded = seed_curves(points, grid)
    entry: dict[str, Any] = {"grid": grid, "n_seeds": len(curves), "excluded_seeds": excluded, "definition": "per_arm"}
    if not curves:
        entry.update(best_loss=None, mean=None, ci95=None, per_seed=[])
    else:
        entry.update(sensitivity(curves, grid, min(min(c.scores.values()) for c in curves)))
    return entry, curves


def arm_lr_sensitivity(points: Iterable[LrPoint]) -> dict[str, Any] | None:
    """One arm's LR sensitivity with the per-arm ℓ*; None when its grid has fewer than two rates."""
    found = _arm(list(points))
    return None if found is None else found[0]


def lr_sensitivities(points_by_arm: Mapping[str, Iterable[LrPoint]]) -> dict[str, dict[str, Any]]:
    """Every arm's LR sensitivity (per-arm ℓ*), each with a ``common`` block scored against the best ℓ*
    of all of them; arms whose grid has fewer than two rates are left out."""
    found = {arm: _arm(list(points)) for arm, points in points_by_arm.items()}
    found = {arm: value for arm, value in found.items() if value is not None}
    bests = [entry["best_loss"] for entry, _ in found.values() if entry["best_loss"] is not None]
    common_best = min(bests) if bests else None
    out = {}
    for arm, (entry, curves) in found.items():
        if common_best is None or not curves:
            entry["common"] = {"best_loss": common_best, "mean": None, "ci95": None, "per_seed": []}
        else:
            entry["common"] = sensitivity(curves, entry["grid"], common_best)
        out[arm] = entry
    return out


def points_from_runs(runs: Iterable[RunEntry], lr: float) -> list[LrPoint]:
    """LrPoints from a summary group's run entries (``seed, status, final_val_loss, initial_val_loss``)."""
    return [LrPoint(run.seed, float(lr), run.status, run.final_val_loss, run.initial_val_loss) for run in runs]


def separated(fix: SensitivityScores | None, control: SensitivityScores | None) -> bool | None:
    """Is the fix's sensitivity below the control's beyond seed noise (95% intervals apart)?

    None when either has no interval (a single seed, or no complete seed).
    """
    if fix is None or control is None or fix.ci95 is None or control.ci95 is None:
        return None
    return fix.ci95[1] < control.ci95[0]


def seeds_to_separate(fix: SensitivityScores, control: SensitivityScores, limit: int = 50) -> int | None:
    """Seeds per arm at which the two 95% intervals would no longer overlap, if the seed spread and the
    means stayed as measured; None when the fix is not lower, a spread is unknown, or over ``limit``."""
    from scipy.stats import t

    def spread(entry: SensitivityScores) -> float | None:
        values = [seed.value for seed in entry.per_seed]
        return _sample_sd(values) if len(values) >= 2 else None

    fix_sd, control_sd = spread(fix), spread(control)
    if fix_sd is None or control_sd is None or fix.mean is None or control.mean is None:
        return None
    gap = control.mean - fix.mean
    if gap <= 0:
        return None
    for n in range(2, limit + 1):
        if float(t.ppf(0.975, n - 1)) * (fix_sd + control_sd) / math.sqrt(n) < gap:
            return n
    return None

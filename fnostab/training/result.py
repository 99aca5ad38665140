"""The ``result.json`` of a run: one versioned document, written last (its presence = finished).

Schema ``fnostab.result/1`` (keys in order):

* ``schema``; ``name`` (arm); ``status`` (ok | diverged | collapsed | oom | infeasible | error);
* ``failure``: null, or {status, reason, step, epoch} — step counts training steps from 0;
* ``seed``; ``model``: {arch, params (complex entries once), params_real, config};
* ``data``: {train, test, N, n_train, n_val, n_test};
* ``training``: {config (the TrainConfig: clip, lr, optimizer, ...), epochs_requested, epochs_completed,
  steps, val_loss_name, val_losses (per epoch),
  train_losses (per epoch mean), best_val_loss, best_epoch, final_val_loss, final_train_loss,
  initial_val_loss (ℓ0: the validation loss before the first step), noise_floor (the same loss of the
  true object on the test split, from its simulation metadata; null when the file has none),
  best_val_loss_over_floor, final_val_loss_over_floor (the losses as multiples of that floor)};
* ``grad_norm``: statistics of the pre-clip global L2 norm over every step (max, median, p99,
  mean, frac_above_1, steps, max_step) — independent of the logging frequency;
* ``metrics``: evaluation on the test split (see ``fnostab.evaluation``) with ``baseline``: the
  same metrics for a constant prediction; null when the run could not be evaluated, with
  ``evaluation_note`` saying why;
* ``memory_plan``: the model plan (stress runs), or null;
* ``timing``: {wall_s, train_s, eval_s, samples_per_s}; ``device`` (null when the run never started);
  ``versions``; ``created``;
* ``sweep`` (runs of a shootout or stress sweep only): {kind, arm, seed, depth, lr}.
"""

from __future__ import annotations

import math
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from fnostab import __version__
from fnostab.errors import InputError
from fnostab.io import read_json_document, validate_document
from fnostab.training.failure import STATUSES

RESULT_SCHEMA = "fnostab.result/1"
RESULT_NAME = "result.json"
# The other files of a run dir.
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.csv"


def versions() -> dict[str, str]:
    import lightning
    import torch

    return {
        "fnostab": __version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def grad_norm_stats(norms: list[float], threshold: float = 1.0) -> dict[str, Any] | None:
    """Summary of per-step pre-clip norms; the fraction above ``threshold`` is the figure of the original
    investigation (docs/probes.md).
    """
    if not norms:
        return None
    values = np.asarray(norms, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {
            "steps": int(values.size),
            "max": None,
            "median": None,
            "p99": None,
            "mean": None,
            "frac_above_1": None,
            "max_step": None,
        }
    return {
        "steps": int(values.size),
        "max": float(finite.max()),
        "median": float(np.median(finite)),
        "p99": float(np.percentile(finite, 99)),
        "mean": float(finite.mean()),
        "frac_above_1": float((finite > threshold).mean()),
        "max_step": int(np.nanargmax(np.where(np.isfinite(values), values, -np.inf))),
    }


class _Open(BaseModel):
    """A part of the document: the keys readers use are typed, others are kept as they are."""

    model_config = ConfigDict(extra="allow")


Number = float | None  # a non-finite value is written as null


class _FailureDocument(_Open):
    status: str
    reason: str
    step: int | None
    epoch: int | None


class _ModelDocument(_Open):
    arch: str | None = None
    config: dict[str, Any]


class _TrainingDocument(_Open):
    config: dict[str, Any]
    epochs_completed: int
    steps: int
    val_losses: list[Number]
    train_losses: list[Number]
    best_val_loss: Number
    best_epoch: int | None
    final_val_loss: Number
    final_train_loss: Number


class _SweepDocument(_Open):
    kind: str
    arm: str
    seed: int | None
    depth: int | None = None
    lr: Number = None


class ResultDocument(_Open):
    """What every reader of a result.json relies on (see the module docstring for the meaning)."""

    name: str | None
    status: str
    failure: _FailureDocument | None
    seed: int | None
    model: _ModelDocument
    training: _TrainingDocument
    grad_norm: dict[str, int | float | None] | None
    metrics: dict[str, float | None | dict[str, Number]] | None
    evaluation_note: str | None
    memory_plan: dict[str, Any] | None = None
    timing: dict[str, Number]
    sweep: _SweepDocument | None = None


def read_result(path: Path | str) -> dict[str, Any]:
    """Load and check a result.json against its schema; a corrupt, foreign or malformed file is an
    InputError naming it and the wrong key."""
    path = Path(path)
    result = read_json_document(path, RESULT_SCHEMA)
    if result.get("status") not in STATUSES:
        raise InputError(f"{path}: unknown status {result.get('status')!r}; expected one of {', '.join(STATUSES)}")
    validate_document(path, result, ResultDocument)
    if (result["status"] == "ok") != (result["failure"] is None):
        raise InputError(
            f"{path}: invalid {path.name}: key 'failure' must be null exactly when status is ok "
            f"(status {result['status']!r})"
        )
    return result


def loss_levels(
    initial: float | None, best: float | None, final: float | None, floor: float | None
) -> dict[str, float | None]:
    """ℓ0, the noise floor, and the best and final validation losses as multiples of that floor."""

    def over(value: float | None) -> float | None:
        if value is None or floor is None or floor <= 0 or not math.isfinite(value):
            return None
        return value / floor

    return {
        "initial_val_loss": initial,
        "noise_floor": floor,
        "best_val_loss_over_floor": over(best),
        "final_val_loss_over_floor": over(final),
    }


def best_and_final(values: list[float]) -> tuple[float | None, int | None, float | None]:
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        return None, None, (values[-1] if values else None)
    best, epoch = min(finite)
    return best, epoch, values[-1]

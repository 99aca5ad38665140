"""The ``result.json`` of a run: one versioned document, written last (its presence = finished).

:class:`RunResult` is the document as a pydantic model: the runner builds one and writes
:meth:`RunResult.to_document`, and every reader parses the file through :func:`read_result`, so a
renamed or mistyped key fails in one place. Where the file lives is :mod:`fnostab.rundir`'s business.

Schema ``fnostab.result/1`` (keys in order):

* ``schema``; ``name`` (arm); ``status`` (ok | diverged | collapsed | oom | infeasible | error);
* ``failure``: null, or {status, reason, step, epoch} — step counts training steps from 0;
* ``seed``; ``model``: {arch, params (complex entries once), params_real, config};
* ``data``: {train, test, N, gridsize, channels, offset, n_train, n_val, n_test} (a run that never
  started: {train, test, gridsize});
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

from fnostab import __version__
from fnostab.errors import InputError
from fnostab.io import DocumentPart, parse_document, read_json_document
from fnostab.training.failure import STATUSES, Failure, Status

RESULT_SCHEMA = "fnostab.result/1"


def versions() -> dict[str, str]:
    import lightning
    import numpy as np
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


def grad_norm_stats(norms: list[float], threshold: float = 1.0) -> GradNormStats | None:
    """Summary of per-step pre-clip norms; the fraction above ``threshold`` is the figure of the original
    investigation (docs/probes.md).
    """
    import numpy as np  # not at the top: the CLI reads result.json documents without loading numpy

    if not norms:
        return None
    values = np.asarray(norms, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return GradNormStats(
            steps=int(values.size), max=None, median=None, p99=None, mean=None, frac_above_1=None, max_step=None
        )
    return GradNormStats(
        steps=int(values.size),
        max=float(finite.max()),
        median=float(np.median(finite)),
        p99=float(np.percentile(finite, 99)),
        mean=float(finite.mean()),
        frac_above_1=float((finite > threshold).mean()),
        max_step=int(np.nanargmax(np.where(np.isfinite(values), values, -np.inf))),
    )


Number = float | None  # a non-finite value is written as null


class FailureInfo(DocumentPart):
    """Why and when a run ended abnormally; ``step`` counts training steps from 0."""

    status: str
    reason: str
    step: int | None
    epoch: int | None

    @classmethod
    def of(cls, failure: Failure) -> FailureInfo:
        """The document part of a detected :class:`~fnostab.training.failure.Failure`."""
        return cls(status=failure.status, reason=failure.reason, step=failure.step, epoch=failure.epoch)


class ModelInfo(DocumentPart):
    """The generator: its name, parameter counts (complex entries once, and as reals) and ModelConfig."""

    arch: str | None = None
    params: int | None = None
    params_real: int | None = None
    config: dict[str, Any]


class DataInfo(DocumentPart):
    """The run's data; a run that never started records only the files and the gridsize asked for."""

    train: str | None = None
    test: str | None = None
    N: int | None = None
    gridsize: int | None = None
    channels: int | None = None
    offset: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None


class TrainingInfo(DocumentPart):
    """The TrainConfig and the training record: per-epoch losses, their best and final values, ℓ0 and the floor."""

    config: dict[str, Any]
    epochs_requested: int | None = None
    epochs_completed: int
    steps: int
    val_loss_name: str | None = None
    val_losses: list[Number]
    train_losses: list[Number]
    best_val_loss: Number
    best_epoch: int | None
    final_val_loss: Number
    final_train_loss: Number
    initial_val_loss: Number = None
    noise_floor: Number = None
    best_val_loss_over_floor: Number = None
    final_val_loss_over_floor: Number = None


class GradNormStats(DocumentPart):
    """Statistics of the per-step pre-clip gradient norm (all null when no step had a finite norm)."""

    steps: int | None = None
    max: Number = None
    median: Number = None
    p99: Number = None
    mean: Number = None
    frac_above_1: Number = None
    max_step: int | None = None


class Timing(DocumentPart):
    """Seconds of the whole run, of training and of evaluation; training throughput."""

    wall_s: Number = None
    train_s: Number = None
    eval_s: Number = None
    samples_per_s: Number = None


class DeviceInfo(DocumentPart):
    """Where the run trained: accelerator, torch threads, processes (DDP) and device name."""

    accelerator: str | None = None
    threads: int | None = None
    devices: int | None = None
    name: str | None = None


class SweepInfo(DocumentPart):
    """Where a run of a shootout or stress sweep belongs."""

    kind: str
    arm: str
    seed: int | None
    depth: int | None = None
    lr: Number = None


class RunResult(DocumentPart):
    """The result.json of a run (schema ``fnostab.result/1``, see the module docstring).

    Writers build it and write :meth:`to_document`; readers get it from :func:`read_result`. Keys
    that older files lack have defaults; keys this version does not know are kept as they are.
    """

    name: str | None
    status: Status
    failure: FailureInfo | None
    seed: int | None
    model: ModelInfo
    data: DataInfo | None = None
    training: TrainingInfo
    grad_norm: GradNormStats | None
    metrics: dict[str, float | None | dict[str, Number]] | None
    evaluation_note: str | None
    memory_plan: dict[str, Any] | None = None
    timing: Timing
    device: DeviceInfo | None = None
    versions: dict[str, str] | None = None
    created: str | None = None
    sweep: SweepInfo | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def arch(self) -> str | None:
        """The generator's name (older files keep it only in the model config)."""
        return self.model.arch or self.model.config.get("arch")

    @property
    def clip(self) -> str | None:
        return self.training.config.get("clip")

    def to_document(self) -> dict[str, Any]:
        """The JSON object of result.json: ``schema`` first, then the keys in the documented order."""
        return {"schema": RESULT_SCHEMA, **super().to_document()}


def read_result(path: Path | str) -> RunResult:
    """Load and check a result.json against its schema; a corrupt, foreign or malformed file is an
    InputError naming it and the wrong key."""
    path = Path(path)
    document = read_json_document(path, RESULT_SCHEMA)
    if document.get("status") not in STATUSES:
        raise InputError(f"{path}: unknown status {document.get('status')!r}; expected one of {', '.join(STATUSES)}")
    result = parse_document(path, {k: v for k, v in document.items() if k != "schema"}, RunResult)
    if result.ok != (result.failure is None):
        raise InputError(
            f"{path}: invalid {path.name}: key 'failure' must be null exactly when status is ok "
            f"(status {result.status!r})"
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

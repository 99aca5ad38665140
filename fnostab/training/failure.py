"""Failure of a run as an outcome: which status, when, and why.

Statuses: ``ok``, ``diverged`` (non-finite loss or gradient norm, or a loss blow-up), ``collapsed``
(the predicted amplitude is a constant image on validation), ``oom``, ``infeasible`` (a memory plan
over the limit, decided before building anything) and ``error`` (any other exception). The
detector is plain Python so its rules can be tested without training anything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "diverged", "collapsed", "oom", "infeasible", "error"]
STATUSES: tuple[str, ...] = ("ok", "diverged", "collapsed", "oom", "infeasible", "error")
FAILURE_STATUSES: tuple[str, ...] = tuple(s for s in STATUSES if s != "ok")

# A step loss compared with the best smoothed loss so far: the EMA ignores single lucky batches.
_EMA_WEIGHT = 0.1
_BLOWUP_WARMUP_STEPS = 10
# The predicted amplitude counts as constant when its spatial std is below this fraction of its mean.
# Grid-lines object patches have a relative amplitude std of at least 0.06 (mean 0.16, cpu preset),
# while runs that collapsed in the LR stress sweep sat at 1e-7 to 8e-3: 0.01 separates the two.
COLLAPSE_RELATIVE_STD = 0.01
# Consecutive collapsed validations before the run is stopped as collapsed (a brief dip may recover).
COLLAPSE_PATIENCE = 2


@dataclass(frozen=True)
class Failure:
    status: Status
    reason: str
    step: int
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FailureDetector:
    """Watches per-step losses and gradient norms and per-epoch validation outputs."""

    def __init__(self, blowup_factor: float, collapse_threshold: float = COLLAPSE_RELATIVE_STD) -> None:
        self.blowup_factor = blowup_factor
        self.collapse_threshold = collapse_threshold
        self.failure: Failure | None = None
        self._ema: float | None = None
        self._best_ema = math.inf
        self._steps_seen = 0
        self._collapse_streak: list[int] = []

    def check_step(self, loss: float, grad_norm: float | None, *, step: int, epoch: int) -> Failure | None:
        """Record a training step; returns the failure if this step ends the run."""
        if self.failure is not None:
            return self.failure
        if not math.isfinite(loss):
            return self._fail("diverged", f"non-finite training loss ({loss})", step, epoch)
        if grad_norm is not None and not math.isfinite(grad_norm):
            return self._fail("diverged", f"non-finite gradient norm ({grad_norm})", step, epoch)
        self._steps_seen += 1
        self._ema = loss if self._ema is None else (1 - _EMA_WEIGHT) * self._ema + _EMA_WEIGHT * loss
        if self._steps_seen > _BLOWUP_WARMUP_STEPS:
            if loss > self.blowup_factor * self._best_ema:
                return self._fail(
                    "diverged",
                    f"loss blow-up: step loss {loss:.4g} > {self.blowup_factor:g} × "
                    f"best smoothed loss {self._best_ema:.4g}",
                    step,
                    epoch,
                )
            self._best_ema = min(self._best_ema, self._ema)
        return None

    def check_validation(
        self, val_loss: float, relative_amplitude_std: float, *, step: int, epoch: int, last_epoch: bool
    ) -> Failure | None:
        """Record one validation; a constant amplitude for COLLAPSE_PATIENCE epochs (or at the end) fails."""
        if self.failure is not None:
            return self.failure
        if not math.isfinite(val_loss):
            return self._fail("diverged", f"non-finite validation loss ({val_loss})", step, epoch)
        if relative_amplitude_std < self.collapse_threshold or not math.isfinite(relative_amplitude_std):
            self._collapse_streak.append(epoch)
        else:
            self._collapse_streak.clear()
        if self._collapse_streak and (len(self._collapse_streak) >= COLLAPSE_PATIENCE or last_epoch):
            return self._fail(
                "collapsed",
                f"constant-amplitude output on validation since epoch {self._collapse_streak[0]} "
                f"(relative amplitude std {relative_amplitude_std:.2e} < {self.collapse_threshold:g})",
                step,
                self._collapse_streak[0],
            )
        return None

    def _fail(self, status: Status, reason: str, step: int, epoch: int) -> Failure:
        self.failure = Failure(status, reason, step, epoch)
        return self.failure

"""CI gates on a summary: ``fnostab summarize --fail-on GATE`` (repeatable).

Grammar (whitespace allowed between the parts)::

    GATE   := METRIC [ "[" ARM "]" ] OP NUMBER
    OP     := "<=" | ">=" | "<" | ">"
    NUMBER := a decimal or scientific number (0.3, 1e-2, -0.5)

``failure_rate<=0.3`` must hold for every arm (every stress cell, for stress runs; a cell where no
run started, all infeasible, is skipped);
``failure_rate[control]<=0.5`` for one arm — ``ARM`` is an arm name (every stress cell of that arm)
or a cell label such as ``control@d4-lr0.001``. Metrics are the per-arm numbers of the summary
(see :data:`GATE_METRICS`): ``failure_rate`` is the point estimate, the quality metrics are medians
over the successful runs. A gate whose value is missing (e.g. no successful run, so no median)
fails: a CI gate that cannot be checked must not pass silently.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fnostab.errors import InputError
from fnostab.report.document import ArmSummary, GateResult

GATE_METRICS: dict[str, str] = {
    "failure_rate": "failed runs / runs (point estimate)",
    "failures": "number of failed runs",
    "n": "number of finished runs",
    "best_val_loss": "median best validation loss, successful runs",
    "final_val_loss": "median final validation loss, successful runs",
    "best_val_loss_over_floor": "median best validation loss as a multiple of the noise floor, successful runs",
    "amp_ssim": "median amplitude SSIM, successful runs",
    "amp_ssim_gain": "median of amplitude SSIM minus the constant baseline's, successful runs",
    "amp_mae": "median amplitude MAE, successful runs",
    "phase_ssim": "median phase SSIM, successful runs (compare with its constant baseline)",
    "phase_aligned_ssim": "median phase SSIM after per-tile phase alignment, successful runs",
    "grad_norm_max": "largest logged pre-clip gradient norm, all runs pooled",
    "grad_norm_median": "median logged pre-clip gradient norm, all runs pooled",
    "grad_norm_frac_above": "fraction of logged steps with pre-clip norm above --grad-norm-threshold",
}

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_GATE = re.compile(
    rf"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\[\s*(?P<arm>[^\[\]]+?)\s*\])?\s*"
    rf"(?P<op><=|>=|<|>)\s*(?P<number>{_NUMBER})\s*$"
)


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str
    arm: str | None
    op: str
    threshold: float

    def holds(self, value: float | None) -> bool:
        return value is not None and OPERATORS[self.op](value, self.threshold)


def parse_gate(text: str) -> Gate:
    """``amp_ssim[arch]>=0.4`` → Gate; InputError naming the valid metrics when malformed."""
    match = _GATE.match(text)
    valid = ", ".join(GATE_METRICS)
    if match is None:
        raise InputError(
            f"--fail-on {text!r}: expected METRIC[ARM]OP NUMBER with OP one of <=, >=, <, > "
            f"(e.g. 'failure_rate[control]<=0.5'); valid metrics: {valid}"
        )
    metric = match["metric"]
    if metric not in GATE_METRICS:
        raise InputError(f"--fail-on {text!r}: unknown metric {metric!r}; valid metrics: {valid}")
    return Gate(text=text.strip(), metric=metric, arm=match["arm"], op=match["op"], threshold=float(match["number"]))


def parse_gates(texts: Iterable[str]) -> list[Gate]:
    return [parse_gate(text) for text in texts]


def gate_value(group: ArmSummary, metric: str) -> float | None:
    """The number a gate compares, read from one per-arm entry of the summary."""
    if metric in ("failure_rate", "failures", "n"):
        return getattr(group, metric)
    if metric.startswith("grad_norm_"):
        return getattr(group.grad_norm, metric.removeprefix("grad_norm_"))
    return group.metrics.get(metric).median


def _targets(gate: Gate, groups: Sequence[ArmSummary]) -> list[ArmSummary]:
    if gate.arm is None:
        return list(groups)
    return [g for g in groups if gate.arm in (g.arm, g.label)]


def check_arms(gates: Sequence[Gate], groups: Sequence[ArmSummary]) -> None:
    """InputError for a gate naming an arm the summary does not have (before anything is written)."""
    for gate in gates:
        if not _targets(gate, groups):
            arms = sorted({g.arm for g in groups})
            raise InputError(f"--fail-on {gate.text!r}: no arm {gate.arm!r} in these runs; arms: {', '.join(arms)}")


def evaluate_gates(gates: Sequence[Gate], groups: Sequence[ArmSummary]) -> list[GateResult]:
    """One entry per (gate, arm).

    ``passed`` is None (skipped) for a group where no run started (all infeasible): there is
    nothing to hold a gate against, and an unstartable plan is not a failed run.
    """
    check_arms(gates, groups)
    results = []
    for gate in gates:
        for group in _targets(gate, groups):
            value = gate_value(group, gate.metric)
            results.append(
                GateResult(
                    gate=gate.text,
                    metric=gate.metric,
                    arm=group.label,
                    op=gate.op,
                    threshold=gate.threshold,
                    value=value,
                    passed=gate.holds(value) if group.n > 0 else None,
                )
            )
    return results


def describe_failure(entry: GateResult) -> str:
    """``failure_rate[control] = 0.6, required <= 0.5`` for a failed gate entry."""
    value = "missing" if entry.value is None else f"{entry.value:.4g}"
    return f"{entry.metric}[{entry.arm}] = {value}, required {entry.op} {entry.threshold:g} (gate {entry.gate!r})"

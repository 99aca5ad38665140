"""Every sentence of the verdict, rendered from its data (:class:`fnostab.report.document.Verdict`).

:func:`fnostab.report.verdict.decide` returns data only: an outcome, checks with their numbers, and
reasons, notes and next steps as typed codes. This module is the one place that turns them into
words — for summary.md, for the terminal (``fnostab summarize``, ``shootout``, ``stress``) and for
the text fields kept in summary.json — so a sentence changes in one place and means the same
everywhere. The rules behind the words are in docs/method.md#decision-rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fnostab.report.document import (
        ArmNumbers,
        Boundary,
        LrSensitivity,
        NextStep,
        Note,
        Reason,
        SensitivityFigure,
        StageACheck,
        StageBCheck,
        Verdict,
    )

OUTCOMES = {
    "gold": "stable_hybrid passes Stage A and Stage B: make it the default FNO architecture and deprecate PtychoBlock.",
    "silver": "stable_hybrid fails, AGC lowers the failure rate without a >10% median-loss regression: "
    "AGC becomes the mandatory training policy for FNO models.",
    "pivot": "neither fix holds up: investigate LayerScale (explicit depth damping).",
    "inconclusive": "the data cannot decide between gold, silver and pivot yet (see next steps).",
}

# The learning-rate axis finds each arm's stability boundary in minutes on a CPU (the cpu preset's
# control collapses at lr 3e-2); depths need N large enough to halve, so they are left to the user
# (e.g. --preset paper --depths 4,6).
STRESS_HINT = "fnostab stress --lrs 1e-3,3e-3,1e-2,3e-2,1e-1 --seeds 3 --out DIR"
LR_GRID_HINT = "fnostab shootout --lrs 1e-3,1e-2,3e-2,1e-1 --seeds 3 --out DIR"

_VERB = {True: "passes", False: "fails", None: "is undecided at"}


# ------------------------------------------------------------------------------------- numbers
def pct(rate: float | None, missing: str = "n/a") -> str:
    """A rate as a whole percentage (``40%``); ``missing`` when there is none."""
    return missing if rate is None else f"{100 * rate:.0f}%"


def loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def bound(boundary: Boundary, axis: str) -> str:
    """One axis of a stability boundary in a sentence: its value, or why there is none."""
    if not getattr(boundary, f"{axis}_swept"):
        return "not swept"
    value = getattr(boundary, axis)
    return "below the smallest tested" if value is None else f"{value:g}"


def sensitivity(entry: SensitivityFigure | LrSensitivity) -> str:
    """``0.21 [0.18, 0.25]``: mean and 95% interval over seeds."""
    if entry.mean is None:
        return "n/a"
    interval = entry.ci95
    return f"{entry.mean:.3g}" + (f" [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else " (one seed)")


def _lrs(lrs: Sequence[float]) -> str:
    return ", ".join(f"{lr:g}" for lr in lrs)


def describe_arm(numbers: ArmNumbers) -> str:
    """``arch failed 0/10 (0%, 95% CI 0%–28%), median best val loss 0.04``."""
    lo, hi = numbers.failure_ci95
    return (
        f"{numbers.arm} failed {numbers.failures}/{numbers.n} ({pct(numbers.failure_rate)}, "
        f"95% CI {pct(lo)}–{pct(hi)}), median best val loss {loss(numbers.median_best_val_loss)}"
    )


# ----------------------------------------------------------------------------------- the codes
def reason_text(reason: Reason) -> str:
    """Why a check passed, failed or could not decide, in one clause."""
    match reason.code:
        case "no_arm":
            return f"no {reason.role} arm among the runs"
        case "control_never_failed":
            return f"control never failed ({reason.failures}/{reason.n}): a lower failure rate is impossible"
        case "loss_names_differ":
            return (
                f"{reason.role} validates with {'/'.join(reason.names)} and the control with "
                f"{'/'.join(reason.control_names)}: their losses cannot be compared"
            )
        case "no_successful_run":
            return f"{reason.role} has no successful run, so no median val loss"
        case "control_no_successful_run":
            return "control has no successful run to compare the loss with"
        case "rate_not_lower":
            return f"failure rate {pct(reason.rate)} is not below the control's {pct(reason.control_rate)}"
        case "loss_not_below":
            return f"median best val loss {loss(reason.loss)} does not beat the control's {loss(reason.control_loss)}"
        case "loss_above_tolerance":
            return (
                f"median best val loss {loss(reason.loss)} is more than {reason.tolerance:.0%} "
                f"above the control's {loss(reason.control_loss)}"
            )
        case "no_stress_runs":
            return f"no stress runs of the {reason.role} arm"
        case "no_shared_grid":
            return f"the {reason.role} and control stress grids share no (depth, lr) setting"
        case "no_feasible_depth":
            return "no depth on the shared grid was feasible for both arms"
        case "control_never_failed_on_grid":
            return "the control never failed on the grid: it stops short of the control's stability boundary"
        case "sensitivity_within_noise":
            return (
                f"its LR sensitivity {sensitivity(reason.sensitivity)} is below the control's "
                f"{sensitivity(reason.control_sensitivity)} but within seed noise"
            )
        case "not_beyond":
            sens = (
                f", LR sensitivity {sensitivity(reason.sensitivity)} not below the control's "
                f"{sensitivity(reason.control_sensitivity)} at a comparable best loss"
                if reason.sensitivity is not None and reason.control_sensitivity is not None
                else ""
            )
            deep = (
                f", and failure rate at depth {reason.deep_depth} {pct(reason.deep_rate)} not below the control's "
                f"{pct(reason.control_deep_rate)}"
                if reason.deep_depth is not None
                else ""
            )
            return (
                f"boundary lr {bound(reason.boundary, 'lr')} / depth {bound(reason.boundary, 'depth')} not beyond "
                f"the control's {bound(reason.control_boundary, 'lr')} / {bound(reason.control_boundary, 'depth')}"
                f"{sens}{deep}"
            )
    raise ValueError(f"no text for reason {reason.code!r}")


def note_text(note: Note) -> str:
    """A caveat on the verdict as a whole."""
    match note.code:
        case "stage_a_on_lr_grid":
            return (
                f"the plain shootout's control never failed in {note.n} runs, so Stage A is taken at the "
                f"learning rates where it does fail ({_lrs(note.lrs)})"
            )
        case "no_shootout_control":
            return "no control arm (named 'control', or hybrid without clipping) among the shootout runs"
        case "no_shootout":
            return "no shootout runs: Stage A was not measured"
        case "no_stress_control":
            return "no control arm among the stress runs: Stage B cannot compare"
        case "crashed":
            return f"runs of {note.label} ended in error (a crash, not a training instability)"
        case "failure_intervals_overlap":
            which = ", ".join(f"{c.role} (Stage {c.stage})" for c in note.checks)
            return (
                f"the 95% failure-rate intervals of {which} overlap the control's: "
                "the difference is within seed noise at this number of runs"
            )
        case "sensitivity_intervals_overlap":
            return (
                f"the 95% LR-sensitivity intervals of {', '.join(note.roles)} overlap the control's: "
                "which arm is less sensitive is within seed noise"
            )
    raise ValueError(f"no text for note {note.code!r}")


def next_step_text(step: NextStep) -> str:
    """What to run next, with the command."""
    match step.code:
        case "extend_lr_grid":
            return (
                f"The control never failed, neither in the shootout nor on the learning-rate grid (up to "
                f"{step.largest_lr:g}): extend the grid upwards until it does, e.g. `{LR_GRID_HINT}` with larger rates."
            )
        case "reproduce_instability":
            return (
                f"The control never failed in {step.n} run{'s' if step.n != 1 else ''}, so this shootout does not "
                f"reproduce the instability: run it over a learning-rate grid that reaches the unstable band, "
                f"`{LR_GRID_HINT}`, or add seeds or epochs."
            )
        case "add_control":
            return "Run a shootout with a control arm: `fnostab shootout --out DIR` (arms control, arch, opt)."
        case "run_stage_a_on_grid":
            return f"Run Stage A over a learning-rate grid: `{LR_GRID_HINT}` (arms control, arch, opt)."
        case "add_arm":
            return f"Add the {step.role} arm to the shootout."
        case "stress_control":
            return f"Stress the control next to the fixes: `{STRESS_HINT}`."
        case "raise_stress":
            return f"Raise the learning rates or depths until the control fails: `{STRESS_HINT}` with larger values."
        case "add_seeds_for_sensitivity":
            how_many = (
                f"about {step.seeds} seeds would separate them at the spread seen"
                if step.seeds
                else "the spread seen is too large to separate them with a few more seeds"
            )
            return (
                f"{step.role} looks less LR-sensitive than the control but within seed noise: {how_many}; rerun "
                f"the same command with --seeds {step.seeds or 'N'} on the same --out (finished runs are kept)."
            )
        case "stress_arm":
            return f"Stress the {step.role} arm on the control's grid: `{STRESS_HINT}`."
        case "run_stage_b":
            return f"Stage B was not measured: run the arms over a learning-rate grid, `{LR_GRID_HINT}`."
        case "fix_crash":
            return f"Fix the error of {step.label} and rerun its runs" + (f": {step.reason}" if step.reason else ".")
        case "add_seeds_for_failure_rate":
            return "Add seeds to separate the failure-rate intervals before acting on this verdict."
        case "no_rule_applies":
            return (
                "No decision rule applies to these results; add seeds, or stress the arms "
                f"(`{STRESS_HINT}`), until Stage A and Stage B give a pass or a fail."
            )
    raise ValueError(f"no text for next step {step.code!r}")


# ------------------------------------------------------------------------------ the paragraph
def decision(outcome: str) -> str:
    """What the outcome means for the project."""
    return OUTCOMES[outcome]


def _stage_a_sentence(role: str, check: StageACheck) -> str:
    if not check.present:
        return f"No {role} arm was run."
    reasons = [reason_text(r) for r in check.reason_codes]
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return f"{describe_arm(check.numbers)}: it {_VERB[check.passes]} Stage A{why}."


def _stage_b_sentence(role: str, check: StageBCheck) -> str:
    reasons = [reason_text(r) for r in check.reason_codes]
    if not check.present:
        return f"Stage B has no {role} runs."
    if check.fix is None or check.deep_depth is None:
        return f"Stage B for {role} is undecided ({'; '.join(reasons)})."
    fix, control = check.fix, check.control
    why = f" ({'; '.join(reasons)})" if reasons and check.passes is not False else ""
    figures = ""
    if fix.lr_sensitivity and control.lr_sensitivity:
        figures = f", LR sensitivity {sensitivity(fix.lr_sensitivity)} (control {sensitivity(control.lr_sensitivity)})"
    return (
        f"On the grid {role} has stability boundary lr {bound(fix.boundary, 'lr')}, depth "
        f"{bound(fix.boundary, 'depth')} (control: lr {bound(control.boundary, 'lr')}, depth "
        f"{bound(control.boundary, 'depth')}){figures} and fails "
        f"{fix.deep.failures}/{fix.deep.n} at depth {check.deep_depth} "
        f"(control {control.deep.failures}/{control.deep.n}): it {_VERB[check.passes]} Stage B{why}."
    )


def explanation(verdict: Verdict) -> str:
    """One paragraph: the outcome, then the numbers of each stage that led to it, then the notes."""
    stage_a, stage_b = verdict.stage_a, verdict.stage_b
    parts = [f"Outcome {verdict.outcome}: {decision(verdict.outcome)}"]
    if stage_a.control is not None:
        where = (
            f" (at the learning rates where the control fails: {_lrs(stage_a.lrs)})"
            if stage_a.source == "lr_grid"
            else ""
        )
        parts.append(f"Stage A{where}: {describe_arm(stage_a.control)}.")
        parts.append(_stage_a_sentence("arch", stage_a.arch))
        parts.append(_stage_a_sentence("opt", stage_a.opt))
    if stage_b.measured:
        parts.append(_stage_b_sentence("arch", stage_b.arch))
        parts.append(_stage_b_sentence("opt", stage_b.opt))
    else:
        parts.append("Stage B (depth/LR stress) was not measured.")
    if verdict.note_codes:
        parts.append("Note: " + "; ".join(note_text(n) for n in verdict.note_codes) + ".")
    return " ".join(parts)


def next_steps(verdict: Verdict) -> list[str]:
    return [next_step_text(step) for step in verdict.next_step_codes]


# ----------------------------------------------------------------------------------- layouts
def markdown_lines(verdict: Verdict) -> list[str]:
    """The verdict section of summary.md."""
    lines = [f"## Verdict: **{verdict.outcome}**", "", decision(verdict.outcome), "", explanation(verdict), ""]
    steps = next_steps(verdict)
    if steps:
        lines += ["Next steps:", ""] + [f"- {step}" for step in steps] + [""]
    return lines


def terminal_lines(verdict: Verdict) -> list[str]:
    """The verdict as ``fnostab summarize`` (and the sweeps) print it."""
    lines = [f"verdict: {verdict.outcome}: {decision(verdict.outcome)}", explanation(verdict)]
    return lines + [f"next: {step}" for step in next_steps(verdict)]

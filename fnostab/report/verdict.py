"""The study's decision rules (docs/method.md#decision-rules), applied to the summary's per-arm entries.

Roles: ``control`` (the arm named "control", else the hybrid arm without clipping), ``arch`` (the
arm named "arch", else stable_hybrid without clipping) and ``opt`` (the arm named "opt", else hybrid
with AGC).

* **Stage A** (shootout at standard depth). arch passes when its median best val loss (successful
  runs) is below the control's AND its failure rate is lower. opt passes when its failure rate is
  lower AND its median val loss is at most 10% above the control's. When the plain shootout's
  control never failed (or there is none) and a learning-rate grid is among the inputs, the
  comparison is taken at the learning rates where the control does fail, pooled over them.
* **Stage B** (a depth/LR grid: stress runs, or a shootout over --lrs). A fix passes when it
  scales: on the grid it shares with the control, its stability boundary (largest LR / depth at
  which every seed is ok, see :func:`fnostab.report.stats.stress_boundaries`) lies beyond the
  control's, or it is less LR-sensitive than the control beyond seed noise (95% intervals apart,
  :mod:`fnostab.report.lr_sensitivity`, with a best loss within 10% of the control's), or — when
  depth was swept — its failure rate at the deep setting (the deepest depth both could build) is
  lower. A lower sensitivity within seed noise leaves Stage B undecided.
* **Outcome**: ``gold`` (arch passes A and B: new default architecture), ``pivot`` (both fixes fail
  Stage B — or both already fail Stage A against a control that does fail, where Stage B cannot
  rescue them: investigate LayerScale),
  ``silver`` (arch fails, opt passes A and did not fail B: AGC becomes mandatory), else
  ``inconclusive`` with what to run next. Runs of a role arm that ended in ``error`` (a crash, not
  an instability) make the verdict inconclusive until they are fixed and rerun.

A check whose answer the data cannot give is None, not False: when the control never failed (0/n)
"a lower failure rate" is impossible, so the stage is undecided, not failed. Comparisons use point
estimates; overlapping 95% Wilson intervals are flagged, since at 5–10 seeds per arm most differences
in failure rate are within noise.

Everything here returns data (:class:`fnostab.report.document.Verdict`): reasons, notes and next
steps are typed codes with their numbers, and :mod:`fnostab.report.verdict_text` words them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fnostab.report import document as doc
from fnostab.report.document import ArmNumbers, ArmSummary, StageACheck, StageBCheck, StressCell, StressSection, Verdict
from fnostab.report.lr_sensitivity import seeds_to_separate, separated
from fnostab.report.stats import beyond, intervals_overlap, quartiles, stress_boundaries, wilson_interval

# Stage A, opt arm: its median validation loss (successful runs only) may be at most 10% worse.
OPT_LOSS_TOLERANCE = 0.10

ROLE_NAMES = ("control", "arch", "opt")


def resolve_roles(arms: Mapping[str, tuple[str | None, str | None]]) -> dict[str, str | None]:
    """Map role → arm name from ``{arm: (arch, clip)}``: by name first, else by architecture and clip.

    An arm fills at most one role; among several candidates the first in sorted order wins, and unit-wise
    AGC (``agc:λ``) is preferred over per-tensor AGC (``agc_tensor:λ``) for the opt role.
    """
    roles: dict[str, str | None] = {role: (role if role in arms else None) for role in ROLE_NAMES}
    wanted = {
        "control": [("hybrid", lambda c: c == "none")],
        "arch": [("stable_hybrid", lambda c: c == "none")],
        "opt": [("hybrid", lambda c: c.startswith("agc:")), ("hybrid", lambda c: c.startswith("agc"))],
    }
    for role in ROLE_NAMES:
        if roles[role] is not None:
            continue
        taken = {name for name in roles.values() if name is not None}
        for arch, clip_test in wanted[role]:
            roles[role] = next(
                (
                    arm
                    for arm in sorted(arms)
                    if arm not in taken and arms[arm][0] == arch and clip_test(arms[arm][1] or "none")
                ),
                None,
            )
            if roles[role] is not None:
                break
    return roles


def _roles(entries: Sequence[ArmSummary | StressCell]) -> doc.Roles:
    return doc.Roles(**resolve_roles({e.arm: (e.arch, e.clip) for e in entries}))


def _beyond(fix: doc.Boundary, control: doc.Boundary, axis: str) -> bool | None:
    """Is the fix's boundary beyond the control's on ``axis``? None when the axis was not swept."""
    if not (getattr(fix, f"{axis}_swept") and getattr(control, f"{axis}_swept")):
        return None
    return beyond(getattr(fix, axis), getattr(control, axis))


def arm_numbers(group: ArmSummary) -> ArmNumbers:
    """The Stage A numbers of one arm of a shootout."""
    best = group.metrics.best_val_loss
    return ArmNumbers(
        arm=group.arm,
        n=group.n,
        failures=group.failures,
        failure_rate=group.failure_rate,
        failure_ci95=list(group.failure_ci95),
        median_best_val_loss=best.median,
        n_ok=best.n,
        val_loss_names=list(group.val_loss_names),
    )


def stage_a_check(role: str, control: ArmNumbers, fix: ArmNumbers | None) -> StageACheck:
    """Stage A for ``role`` ("arch" or "opt") from the two arms' numbers."""
    if fix is None:
        return StageACheck(present=False, passes=None, reason_codes=[doc.NoArm(role=role)])
    reasons: list[doc.Reason] = []
    lower_rate: bool | None = fix.failure_rate < control.failure_rate
    if control.failures == 0:
        lower_rate = None
        reasons.append(doc.ControlNeverFailed(failures=control.failures, n=control.n))
    c_loss, f_loss = control.median_best_val_loss, fix.median_best_val_loss
    c_names, f_names = control.val_loss_names, fix.val_loss_names
    if c_names and f_names and c_names != f_names:
        loss_ok: bool | None = None
        reasons.append(doc.LossNamesDiffer(role=role, names=f_names, control_names=c_names))
    elif f_loss is None:
        loss_ok = False
        reasons.append(doc.NoSuccessfulRun(role=role))
    elif c_loss is None:
        loss_ok = True  # the control never succeeded: any successful fix run is better
        reasons.append(doc.ControlNoSuccessfulRun())
    elif role == "arch":
        loss_ok = f_loss < c_loss
    else:
        loss_ok = f_loss <= (1 + OPT_LOSS_TOLERANCE) * c_loss
    if lower_rate is False:
        reasons.append(doc.RateNotLower(rate=fix.failure_rate, control_rate=control.failure_rate))
    if loss_ok is False and f_loss is not None and c_loss is not None:
        reasons.append(
            doc.LossNotBelow(loss=f_loss, control_loss=c_loss)
            if role == "arch"
            else doc.LossAboveTolerance(loss=f_loss, control_loss=c_loss, tolerance=OPT_LOSS_TOLERANCE)
        )
    passes = False if (lower_rate is False or loss_ok is False) else (None if None in (lower_rate, loss_ok) else True)
    checks = (
        doc.StageAChecks(lower_failure_rate=lower_rate, beats_control_loss=loss_ok)
        if role == "arch"
        else doc.StageAChecks(lower_failure_rate=lower_rate, loss_within_10pct=loss_ok)
    )
    return StageACheck(
        present=True,
        passes=passes,
        checks=checks,
        loss_ratio=(f_loss / c_loss) if (f_loss is not None and c_loss and loss_ok is not None) else None,
        intervals_overlap=intervals_overlap(fix.failure_ci95, control.failure_ci95),
        numbers=fix,
        reason_codes=reasons,
    )


def _pool(cells: Sequence[StressCell]) -> doc.FailurePool:
    n = sum(c.n for c in cells)
    failures = sum(c.failures for c in cells)
    return doc.FailurePool(
        n=n,
        failures=failures,
        failure_rate=failures / n if n else None,
        failure_ci95=list(wilson_interval(failures, n)),
    )


def _lr_sensitivity_check(fix: doc.LrSensitivity | None, control: doc.LrSensitivity | None) -> bool | None:
    """Is the fix less LR-sensitive than the control beyond seed noise, at a comparable best loss?

    True: its 95% interval lies below the control's and its best loss ℓ* is within the Stage A tolerance
    of the control's (sensitivity ignores the loss level: an arm that never learns scores 0). False: its
    mean is not below the control's, or it only looks stable because it learns less. None: lower but
    within seed noise (the intervals overlap, or one seed gives none) — more seeds would decide.
    """
    if fix is None or control is None or fix.mean is None or control.mean is None:
        return None
    if fix.mean >= control.mean:
        return False
    if (
        fix.best_loss is not None
        and control.best_loss is not None
        and fix.best_loss > (1 + OPT_LOSS_TOLERANCE) * control.best_loss
    ):
        return False
    return True if separated(fix, control) else None


def _sensitivity_at(
    sensitivities: Sequence[doc.LrSensitivity], arm: str, depth: int | None
) -> doc.LrSensitivity | None:
    return next((e for e in sensitivities if e.arm == arm and e.depth == depth), None)


def _figure(entry: doc.LrSensitivity | None) -> doc.SensitivityFigure | None:
    return None if entry is None else doc.SensitivityFigure(mean=entry.mean, ci95=entry.ci95)


def _boundary(cells: Sequence[StressCell]) -> doc.Boundary:
    return doc.Boundary(**stress_boundaries([c.model_dump() for c in cells])["boundary"])


def stage_b_check(
    role: str,
    cells: Sequence[StressCell],
    control_arm: str,
    fix_arm: str | None,
    sensitivities: Sequence[doc.LrSensitivity] = (),
) -> StageBCheck:
    """Stage B for ``role`` from the summary's grid cells and LR-sensitivity entries."""
    if fix_arm is None or not any(c.arm == fix_arm for c in cells):
        return StageBCheck(present=False, passes=None, reason_codes=[doc.NoStressRuns(role=role)])
    cells = [c for c in cells if c.depth is not None and c.lr is not None]
    control_cells = [c for c in cells if c.arm == control_arm]
    fix_cells = [c for c in cells if c.arm == fix_arm]
    depths = sorted({c.depth for c in control_cells} & {c.depth for c in fix_cells})
    lrs = sorted({float(c.lr) for c in control_cells} & {float(c.lr) for c in fix_cells})
    if not depths or not lrs:
        return StageBCheck(present=True, passes=None, reason_codes=[doc.NoSharedGrid(role=role)])

    def on_grid(group: Sequence[StressCell]) -> list[StressCell]:
        return [c for c in group if c.depth in depths and float(c.lr) in lrs]

    control_grid, fix_grid = on_grid(control_cells), on_grid(fix_cells)
    control_bounds, fix_bounds = _boundary(control_grid), _boundary(fix_grid)
    feasible_both = [
        d
        for d in depths
        if any(c.n for c in control_grid if c.depth == d) and any(c.n for c in fix_grid if c.depth == d)
    ]
    deep = max(feasible_both) if feasible_both else None
    control_deep = _pool([c for c in control_grid if c.depth == deep]) if deep is not None else None
    fix_deep = _pool([c for c in fix_grid if c.depth == deep]) if deep is not None else None
    check = StageBCheck(
        present=True,
        grid=doc.StageBGrid(depths=depths, lrs=lrs),
        deep_depth=deep,
        control=doc.StageBSide(boundary=control_bounds, deep=control_deep),
        fix=doc.StageBSide(arm=fix_arm, boundary=fix_bounds, deep=fix_deep),
    )
    if deep is None:
        check.passes = None
        check.reason_codes = [doc.NoFeasibleDepth()]
        return check
    control_sens = _sensitivity_at(sensitivities, control_arm, deep)
    fix_sens = _sensitivity_at(sensitivities, fix_arm, deep)
    check.control.lr_sensitivity = control_sens
    check.fix.lr_sensitivity = fix_sens
    if sum(c.failures for c in control_grid) == 0:
        check.passes = None
        check.control_never_failed = True
        check.checks = doc.StageBChecks(
            lr_beyond=None, depth_beyond=None, less_lr_sensitive=None, lower_deep_failure_rate=None
        )
        check.reason_codes = [doc.ControlNeverFailedOnGrid()]
        return check
    # The failure rate "at the deep setting" means something only when depth was swept; on a pure
    # learning-rate grid it would pool every rate, and the boundary and sensitivity already say more.
    depth_swept = len(depths) > 1
    checks = doc.StageBChecks(
        lr_beyond=_beyond(fix_bounds, control_bounds, "lr"),
        depth_beyond=_beyond(fix_bounds, control_bounds, "depth"),
        less_lr_sensitive=_lr_sensitivity_check(fix_sens, control_sens),
        lower_deep_failure_rate=fix_deep.failure_rate < control_deep.failure_rate if depth_swept else None,
    )
    check.checks = checks
    check.intervals_overlap = intervals_overlap(fix_deep.failure_ci95, control_deep.failure_ci95)
    sensitivity_undecided = (
        checks.less_lr_sensitive is None
        and fix_sens is not None
        and control_sens is not None
        and fix_sens.mean is not None
        and control_sens.mean is not None
    )
    if any(value is True for value in checks.model_dump().values()):
        check.passes = True
        check.reason_codes = []
    elif sensitivity_undecided:
        check.passes = None
        check.seeds_to_separate = seeds_to_separate(fix_sens, control_sens)
        check.reason_codes = [
            doc.SensitivityWithinNoise(sensitivity=_figure(fix_sens), control_sensitivity=_figure(control_sens))
        ]
    else:
        check.passes = False
        both = fix_sens is not None and control_sens is not None
        check.reason_codes = [
            doc.NotBeyond(
                boundary=fix_bounds,
                control_boundary=control_bounds,
                sensitivity=_figure(fix_sens) if both else None,
                control_sensitivity=_figure(control_sens) if both else None,
                deep_depth=deep if depth_swept else None,
                deep_rate=fix_deep.failure_rate if depth_swept else None,
                control_deep_rate=control_deep.failure_rate if depth_swept else None,
            )
        ]
    return check


def _crashed_arms(groups: Sequence[ArmSummary], role_maps: Sequence[doc.Roles | None]) -> dict[str, str | None]:
    """{label: first error reason} for the groups of role arms with runs of status ``error``."""
    role_arms = {arm for roles in role_maps if roles for arm in roles.model_dump().values() if arm is not None}
    crashed: dict[str, str | None] = {}
    for group in groups:
        if group.arm in role_arms and group.failures_by_status.get("error"):
            reasons = [(run.failure or {}).get("reason") for run in group.runs if run.status == "error"]
            crashed[group.label] = next((r for r in reasons if r), None)
    return crashed


def _absent_a() -> StageACheck:
    return StageACheck(present=False, passes=None, reason_codes=[])


def _absent_b() -> StageBCheck:
    return StageBCheck(present=False, passes=None, reason_codes=[])


def _grid_arm_numbers(
    groups: Sequence[ArmSummary], arm: str, depth: int | None, lrs: Sequence[float]
) -> ArmNumbers | None:
    """Stage A numbers of ``arm`` pooled over its grid cells at ``depth`` and learning rates ``lrs``."""
    chosen = [g for g in groups if g.grid_cell and g.arm == arm and g.depth == depth and g.lr in lrs]
    if not chosen:
        return None
    n = sum(g.n for g in chosen)
    failures = sum(g.failures for g in chosen)
    best = quartiles(run.best_val_loss for g in chosen for run in g.runs if run.status == "ok")
    return ArmNumbers(
        arm=arm,
        n=n,
        failures=failures,
        failure_rate=failures / n if n else None,
        failure_ci95=list(wilson_interval(failures, n)),
        median_best_val_loss=best["median"],
        n_ok=best["n"],
        val_loss_names=sorted({name for g in chosen for name in g.val_loss_names}),
    )


def _grid_stage_a(groups: Sequence[ArmSummary]) -> tuple[doc.Roles, int | None, list[float], dict[str, Any]] | None:
    """Stage A taken on a learning-rate grid, at the rates where the control failed (at its smallest
    depth: the standard one); None when there is no grid with a control, or its control never failed."""
    grid = [g for g in groups if g.grid_cell and g.lr is not None]
    roles = _roles(grid)
    if roles.control is None:
        return None
    control_cells = [g for g in grid if g.arm == roles.control]
    depth = min((g.depth for g in control_cells if g.depth is not None), default=None)
    failing = sorted(g.lr for g in control_cells if g.depth == depth and g.failures > 0)
    if not failing:
        return None
    numbers = {
        role: _grid_arm_numbers(groups, arm, depth, failing)
        for role, arm in roles.model_dump().items()
        if arm is not None
    }
    return roles, depth, failing, numbers


def decide(groups: Sequence[ArmSummary], stress: StressSection | None = None) -> Verdict:
    """The verdict of the decision rules (docs/method.md#decision-rules) with the numbers behind it.

    ``groups``: the summary's per-arm entries; Stage A uses those that are not grid cells, or the grid
    cells at the learning rates where the control failed (see the module doc). ``stress``: the
    summary's grid section, or None without grid runs.
    """
    shootout = {g.arm: g for g in groups if not g.grid_cell}
    roles = _roles(list(shootout.values()))
    next_steps: list[doc.NextStep] = []
    notes: list[doc.Note] = []

    stage_a = doc.StageA(measured=bool(shootout), roles=roles, source="shootout", arch=_absent_a(), opt=_absent_a())
    arch_a, opt_a = stage_a.arch, stage_a.opt
    plain_control = arm_numbers(shootout[roles.control]) if roles.control is not None else None
    grid_a = _grid_stage_a(groups) if plain_control is None or plain_control.failures == 0 else None
    if grid_a is not None:
        roles, depth, lrs, numbers = grid_a
        stage_a = doc.StageA(measured=True, roles=roles, source="lr_grid", depth=depth, lrs=lrs, arch=arch_a, opt=opt_a)
        control = stage_a.control = numbers["control"]
        arch_a = stage_a_check("arch", control, numbers.get("arch"))
        opt_a = stage_a_check("opt", control, numbers.get("opt"))
        if plain_control is not None:
            notes.append(doc.StageAOnLrGrid(n=plain_control.n, lrs=lrs))
    elif plain_control is not None:
        control = stage_a.control = plain_control
        arch_a = stage_a_check("arch", control, arm_numbers(shootout[roles.arch]) if roles.arch else None)
        opt_a = stage_a_check("opt", control, arm_numbers(shootout[roles.opt]) if roles.opt else None)
        if control.failures == 0:
            grid_lrs = sorted({g.lr for g in groups if g.grid_cell and g.lr is not None})
            if grid_lrs:
                next_steps.append(doc.ExtendLrGrid(largest_lr=grid_lrs[-1]))
            else:
                next_steps.append(doc.ReproduceInstability(n=control.n))
    elif shootout:
        notes.append(doc.NoShootoutControl())
        next_steps.append(doc.AddControl())
    else:
        notes.append(doc.NoShootout())
        next_steps.append(doc.RunStageAOnGrid())
    for role, check in (("arch", arch_a), ("opt", opt_a)):
        if stage_a.control is not None and not check.present:
            next_steps.append(doc.AddArm(role=role))
    stage_a.arch, stage_a.opt = arch_a, opt_a

    cells = list(stress.cells) if stress is not None else []
    stage_b = doc.StageB(measured=bool(cells), arch=_absent_b(), opt=_absent_b())
    arch_b, opt_b = stage_b.arch, stage_b.opt
    if cells:
        roles_b = stage_b.roles = _roles(cells)
        if roles_b.control is None:
            notes.append(doc.NoStressControl())
            next_steps.append(doc.StressControl())
        else:
            sensitivities = list(stress.lr_sensitivity)
            arch_b = stage_b_check("arch", cells, roles_b.control, roles_b.arch, sensitivities)
            opt_b = stage_b_check("opt", cells, roles_b.control, roles_b.opt, sensitivities)
            if arch_b.control_never_failed or opt_b.control_never_failed:
                next_steps.append(doc.RaiseStress())
            for role, check in (("arch", arch_b), ("opt", opt_b)):
                if any(reason.code == "sensitivity_within_noise" for reason in check.reason_codes):
                    next_steps.append(doc.AddSeedsForSensitivity(role=role, seeds=check.seeds_to_separate))
            for role, check in (("arch", arch_b), ("opt", opt_b)):
                if not check.present and getattr(stage_a, role).passes is not False:
                    next_steps.append(doc.StressArmOnGrid(role=role))
    elif arch_a.passes is not False:
        next_steps.append(doc.RunStageB())
    stage_b.arch, stage_b.opt = arch_b, opt_b

    arch_fails = arch_a.passes is False or arch_b.passes is False
    control_failed = stage_a.control is not None and stage_a.control.failures > 0
    crashed = _crashed_arms(groups, [roles, stage_b.roles])
    if crashed:
        # A crash says nothing about stability, and it inflates a failure rate: decide nothing.
        outcome = "inconclusive"
        for label, reason in crashed.items():
            notes.append(doc.Crashed(label=label))
            next_steps.append(doc.FixCrash(label=label, reason=reason))
    elif arch_a.passes is True and arch_b.passes is True:
        outcome = "gold"
    elif arch_b.passes is False and opt_b.passes is False:
        outcome = "pivot"
    elif arch_fails and opt_a.passes is True and opt_b.passes is not False:
        outcome = "silver"
    elif control_failed and arch_a.passes is False and opt_a.passes is False:
        outcome = "pivot"  # both fixes lose to a control that does fail: Stage B cannot rescue them
    else:
        outcome = "inconclusive"

    overlaps = [
        doc.StageRole(role=role, stage=stage)
        for stage, pairs in (("A", (("arch", arch_a), ("opt", opt_a))), ("B", (("arch", arch_b), ("opt", opt_b))))
        for role, check in pairs
        if check.intervals_overlap
    ]
    if overlaps:
        notes.append(doc.FailureIntervalsOverlap(checks=overlaps))
        next_steps.append(doc.AddSeedsForFailureRate())
    sensitivity_overlaps = [
        role
        for role, check in (("arch", arch_b), ("opt", opt_b))
        if check.fix is not None
        and check.fix.lr_sensitivity is not None
        and separated(check.fix.lr_sensitivity, check.control.lr_sensitivity) is False
        and separated(check.control.lr_sensitivity, check.fix.lr_sensitivity) is False
    ]
    if sensitivity_overlaps:
        notes.append(doc.SensitivityIntervalsOverlap(roles=sensitivity_overlaps))
    if outcome == "inconclusive" and not next_steps:
        next_steps.append(doc.NoRuleApplies())
    unique: list[doc.NextStep] = []
    for step in next_steps:
        if step not in unique:
            unique.append(step)
    return Verdict(outcome=outcome, stage_a=stage_a, stage_b=stage_b, note_codes=notes, next_step_codes=unique)

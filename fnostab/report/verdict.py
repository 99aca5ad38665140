"""The study's decision rules (docs/method.md#decision-rules), applied to per-arm statistics.

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fnostab.report.lr_sensitivity import seeds_to_separate, separated
from fnostab.report.stats import beyond, intervals_overlap, quartiles, stress_boundaries, wilson_interval

# Stage A, opt arm: its median validation loss (successful runs only) may be at most 10% worse.
OPT_LOSS_TOLERANCE = 0.10

ROLE_NAMES = ("control", "arch", "opt")

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


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.0f}%"


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _bound(boundary: Mapping[str, Any], axis: str) -> str:
    if not boundary.get(f"{axis}_swept", True):
        return "not swept"
    value = boundary[axis]
    return "below the smallest tested" if value is None else f"{value:g}"


def _beyond(fix: Mapping[str, Any], control: Mapping[str, Any], axis: str) -> bool | None:
    """Is the fix's boundary beyond the control's on ``axis``? None when the axis was not swept."""
    if not (fix.get(f"{axis}_swept", True) and control.get(f"{axis}_swept", True)):
        return None
    return beyond(fix[axis], control[axis])


def _arm_numbers(group: Mapping[str, Any]) -> dict[str, Any]:
    best = (group.get("metrics") or {}).get("best_val_loss") or {}
    return {
        "arm": group["arm"],
        "n": group["n"],
        "failures": group["failures"],
        "failure_rate": group["failure_rate"],
        "failure_ci95": list(group["failure_ci95"]),
        "median_best_val_loss": best.get("median"),
        "n_ok": best.get("n", group["n"] - group["failures"]),
        "val_loss_names": list(group.get("val_loss_names") or []),
    }


def _describe(numbers: Mapping[str, Any]) -> str:
    lo, hi = numbers["failure_ci95"]
    return (
        f"{numbers['arm']} failed {numbers['failures']}/{numbers['n']} ({_pct(numbers['failure_rate'])}, "
        f"95% CI {_pct(lo)}–{_pct(hi)}), median best val loss {_loss(numbers['median_best_val_loss'])}"
    )


def stage_a_check(role: str, control: Mapping[str, Any], fix: Mapping[str, Any] | None) -> dict[str, Any]:
    """Stage A for ``role`` ("arch" or "opt") from the two arms' numbers (see :func:`_arm_numbers`)."""
    if fix is None:
        return {"present": False, "passes": None, "reasons": [f"no {role} arm among the runs"]}
    reasons: list[str] = []
    lower_rate: bool | None = fix["failure_rate"] < control["failure_rate"]
    if control["failures"] == 0:
        lower_rate = None
        reasons.append(
            f"control never failed ({control['failures']}/{control['n']}): a lower failure rate is impossible"
        )
    c_loss, f_loss = control["median_best_val_loss"], fix["median_best_val_loss"]
    c_names, f_names = control.get("val_loss_names") or [], fix.get("val_loss_names") or []
    if c_names and f_names and c_names != f_names:
        loss_ok: bool | None = None
        reasons.append(
            f"{role} validates with {'/'.join(f_names)} and the control with {'/'.join(c_names)}: "
            "their losses cannot be compared"
        )
    elif f_loss is None:
        loss_ok = False
        reasons.append(f"{role} has no successful run, so no median val loss")
    elif c_loss is None:
        loss_ok = True  # the control never succeeded: any successful fix run is better
        reasons.append("control has no successful run to compare the loss with")
    elif role == "arch":
        loss_ok = f_loss < c_loss
    else:
        loss_ok = f_loss <= (1 + OPT_LOSS_TOLERANCE) * c_loss
    if lower_rate is False:
        reasons.append(
            f"failure rate {_pct(fix['failure_rate'])} is not below the control's {_pct(control['failure_rate'])}"
        )
    if loss_ok is False and f_loss is not None and c_loss is not None:
        reasons.append(
            f"median best val loss {_loss(f_loss)} does not beat the control's {_loss(c_loss)}"
            if role == "arch"
            else f"median best val loss {_loss(f_loss)} is more than {OPT_LOSS_TOLERANCE:.0%} "
            f"above the control's {_loss(c_loss)}"
        )
    passes = False if (lower_rate is False or loss_ok is False) else (None if None in (lower_rate, loss_ok) else True)
    return {
        "present": True,
        "passes": passes,
        "checks": {
            "lower_failure_rate": lower_rate,
            ("beats_control_loss" if role == "arch" else "loss_within_10pct"): loss_ok,
        },
        "loss_ratio": (f_loss / c_loss) if (f_loss is not None and c_loss and loss_ok is not None) else None,
        "intervals_overlap": intervals_overlap(fix["failure_ci95"], control["failure_ci95"]),
        "numbers": dict(fix),
        "reasons": reasons,
    }


def _pool(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = sum(c["n"] for c in cells)
    failures = sum(c["failures"] for c in cells)
    return {
        "n": n,
        "failures": failures,
        "failure_rate": failures / n if n else None,
        "failure_ci95": list(wilson_interval(failures, n)),
    }


def _lr_sensitivity_check(fix: Mapping[str, Any] | None, control: Mapping[str, Any] | None) -> bool | None:
    """Is the fix less LR-sensitive than the control beyond seed noise, at a comparable best loss?

    True: its 95% interval lies below the control's and its best loss ℓ* is within the Stage A tolerance
    of the control's (sensitivity ignores the loss level: an arm that never learns scores 0). False: its
    mean is not below the control's, or it only looks stable because it learns less. None: lower but
    within seed noise (the intervals overlap, or one seed gives none) — more seeds would decide.
    """
    if not fix or not control or fix.get("mean") is None or control.get("mean") is None:
        return None
    if fix["mean"] >= control["mean"]:
        return False
    if (
        fix.get("best_loss") is not None
        and control.get("best_loss") is not None
        and fix["best_loss"] > (1 + OPT_LOSS_TOLERANCE) * control["best_loss"]
    ):
        return False
    return True if separated(fix, control) else None


def _sensitivity_at(sensitivities: Sequence[Mapping[str, Any]], arm: str, depth: Any) -> Mapping[str, Any] | None:
    return next((e for e in sensitivities if e["arm"] == arm and e["depth"] == depth), None)


def stage_b_check(
    role: str,
    cells: Sequence[Mapping[str, Any]],
    control_arm: str,
    fix_arm: str | None,
    sensitivities: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Stage B for ``role`` from grid cells ``{arm, depth, lr, n, failures, infeasible}`` and the
    LR-sensitivity entries ``{arm, depth, mean, ci95, best_loss, ...}`` of the summary."""
    if fix_arm is None or not any(c["arm"] == fix_arm for c in cells):
        return {"present": False, "passes": None, "reasons": [f"no stress runs of the {role} arm"]}
    cells = [c for c in cells if c["depth"] is not None and c["lr"] is not None]
    control_cells = [c for c in cells if c["arm"] == control_arm]
    fix_cells = [c for c in cells if c["arm"] == fix_arm]
    depths = sorted({c["depth"] for c in control_cells} & {c["depth"] for c in fix_cells})
    lrs = sorted({float(c["lr"]) for c in control_cells} & {float(c["lr"]) for c in fix_cells})
    if not depths or not lrs:
        return {
            "present": True,
            "passes": None,
            "reasons": [f"the {role} and control stress grids share no (depth, lr) setting"],
        }

    def on_grid(group: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return [c for c in group if c["depth"] in depths and float(c["lr"]) in lrs]

    control_grid, fix_grid = on_grid(control_cells), on_grid(fix_cells)
    control_bounds = stress_boundaries(control_grid)["boundary"]
    fix_bounds = stress_boundaries(fix_grid)["boundary"]
    feasible_both = [
        d
        for d in depths
        if any(c["n"] for c in control_grid if c["depth"] == d) and any(c["n"] for c in fix_grid if c["depth"] == d)
    ]
    deep = max(feasible_both) if feasible_both else None
    control_deep = _pool([c for c in control_grid if c["depth"] == deep]) if deep is not None else None
    fix_deep = _pool([c for c in fix_grid if c["depth"] == deep]) if deep is not None else None
    result: dict[str, Any] = {
        "present": True,
        "grid": {"depths": depths, "lrs": lrs},
        "deep_depth": deep,
        "control": {"boundary": control_bounds, "deep": control_deep},
        "fix": {"arm": fix_arm, "boundary": fix_bounds, "deep": fix_deep},
        "reasons": [],
    }
    if deep is None:
        result.update(passes=None, reasons=["no depth on the shared grid was feasible for both arms"])
        return result
    control_sens = _sensitivity_at(sensitivities, control_arm, deep)
    fix_sens = _sensitivity_at(sensitivities, fix_arm, deep)
    result["control"]["lr_sensitivity"] = control_sens
    result["fix"]["lr_sensitivity"] = fix_sens
    if sum(c["failures"] for c in control_grid) == 0:
        result.update(
            passes=None,
            control_never_failed=True,
            checks={
                "lr_beyond": None,
                "depth_beyond": None,
                "less_lr_sensitive": None,
                "lower_deep_failure_rate": None,
            },
            reasons=["the control never failed on the grid: it stops short of the control's stability boundary"],
        )
        return result
    # The failure rate "at the deep setting" means something only when depth was swept; on a pure
    # learning-rate grid it would pool every rate, and the boundary and sensitivity already say more.
    depth_swept = len(depths) > 1
    checks = {
        "lr_beyond": _beyond(fix_bounds, control_bounds, "lr"),
        "depth_beyond": _beyond(fix_bounds, control_bounds, "depth"),
        "less_lr_sensitive": _lr_sensitivity_check(fix_sens, control_sens),
        "lower_deep_failure_rate": fix_deep["failure_rate"] < control_deep["failure_rate"] if depth_swept else None,
    }
    result["checks"] = checks
    result["intervals_overlap"] = intervals_overlap(fix_deep["failure_ci95"], control_deep["failure_ci95"])
    sensitivity_undecided = (
        checks["less_lr_sensitive"] is None
        and fix_sens is not None
        and control_sens is not None
        and fix_sens.get("mean") is not None
        and control_sens.get("mean") is not None
    )
    if any(value is True for value in checks.values()):
        result["passes"] = True
    elif sensitivity_undecided:
        result["passes"] = None
        result["seeds_to_separate"] = seeds_to_separate(fix_sens, control_sens)
        result["reasons"].append(
            f"its LR sensitivity {_sensitivity(fix_sens)} is below the control's {_sensitivity(control_sens)} "
            "but within seed noise"
        )
    else:
        result["passes"] = False
        deep_text = (
            (
                f", and failure rate at depth {deep} {_pct(fix_deep['failure_rate'])} not below the control's "
                f"{_pct(control_deep['failure_rate'])}"
            )
            if depth_swept
            else ""
        )
        sens_text = (
            (
                f", LR sensitivity {_sensitivity(fix_sens)} not below the control's {_sensitivity(control_sens)} "
                "at a comparable best loss"
            )
            if fix_sens and control_sens
            else ""
        )
        result["reasons"].append(
            f"boundary lr {_bound(fix_bounds, 'lr')} / depth {_bound(fix_bounds, 'depth')} not beyond the control's "
            f"{_bound(control_bounds, 'lr')} / {_bound(control_bounds, 'depth')}{sens_text}{deep_text}"
        )
    return result


def _crashed_arms(
    groups: Sequence[Mapping[str, Any]], role_maps: Sequence[Mapping[str, str | None]]
) -> dict[str, str | None]:
    """{label: first error reason} for the groups of role arms with runs of status ``error``."""
    role_arms = {arm for roles in role_maps for arm in roles.values() if arm is not None}
    crashed: dict[str, str | None] = {}
    for group in groups:
        if group["arm"] in role_arms and (group.get("failures_by_status") or {}).get("error"):
            reasons = [
                (run.get("failure") or {}).get("reason")
                for run in group.get("runs", [])
                if run.get("status") == "error"
            ]
            crashed[group.get("label", group["arm"])] = next((r for r in reasons if r), None)
    return crashed


def _absent() -> dict[str, Any]:
    return {"present": False, "passes": None, "reasons": []}


def _stress_arms(cells: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str | None, str | None]]:
    return {c["arm"]: (c.get("arch"), c.get("clip")) for c in cells}


def _grid_arm_numbers(
    groups: Sequence[Mapping[str, Any]], arm: str, depth: Any, lrs: Sequence[float]
) -> dict[str, Any] | None:
    """Stage A numbers of ``arm`` pooled over its grid cells at ``depth`` and learning rates ``lrs``."""
    chosen = [g for g in groups if g.get("grid_cell") and g["arm"] == arm and g["depth"] == depth and g["lr"] in lrs]
    if not chosen:
        return None
    n = sum(g["n"] for g in chosen)
    failures = sum(g["failures"] for g in chosen)
    best = quartiles(run.get("best_val_loss") for g in chosen for run in g["runs"] if run["status"] == "ok")
    return {
        "arm": arm,
        "n": n,
        "failures": failures,
        "failure_rate": failures / n if n else None,
        "failure_ci95": list(wilson_interval(failures, n)),
        "median_best_val_loss": best["median"],
        "n_ok": best["n"],
        "val_loss_names": sorted({name for g in chosen for name in g.get("val_loss_names") or []}),
    }


def _grid_stage_a(groups: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Stage A taken on a learning-rate grid, at the rates where the control failed (at its smallest
    depth: the standard one); None when there is no grid with a control, or its control never failed."""
    grid = [g for g in groups if g.get("grid_cell") and g.get("lr") is not None]
    roles = resolve_roles({g["arm"]: (g.get("arch"), g.get("clip")) for g in grid})
    if roles["control"] is None:
        return None
    control_cells = [g for g in grid if g["arm"] == roles["control"]]
    depth = min((g["depth"] for g in control_cells if g["depth"] is not None), default=None)
    failing = sorted(g["lr"] for g in control_cells if g["depth"] == depth and g["failures"] > 0)
    if not failing:
        return None
    numbers = {role: _grid_arm_numbers(groups, arm, depth, failing) for role, arm in roles.items() if arm is not None}
    return {"roles": roles, "depth": depth, "lrs": failing, "numbers": numbers}


def decide(groups: Sequence[Mapping[str, Any]], stress: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The verdict of the decision rules (docs/method.md#decision-rules) with the numbers behind it.

    ``groups``: the summary's per-arm entries (``arm, kind, grid_cell, arch, clip, n, failures,
    failure_rate, failure_ci95, metrics.best_val_loss.median, runs``); Stage A uses those that are not
    grid cells, or the grid cells at the learning rates where the control failed (see the module doc).
    ``stress``: the summary's grid section (``cells``, ``lr_sensitivity``), or None without grid runs.
    """
    shootout = {g["arm"]: g for g in groups if not g.get("grid_cell")}
    roles = resolve_roles({arm: (g.get("arch"), g.get("clip")) for arm, g in shootout.items()})
    next_steps: list[str] = []
    notes: list[str] = []

    stage_a: dict[str, Any] = {"measured": bool(shootout), "roles": roles, "source": "shootout"}
    arch_a, opt_a = _absent(), _absent()
    plain_control = _arm_numbers(shootout[roles["control"]]) if roles["control"] is not None else None
    grid_a = _grid_stage_a(groups) if plain_control is None or plain_control["failures"] == 0 else None
    if grid_a is not None:
        roles = grid_a["roles"]
        stage_a.update(measured=True, roles=roles, source="lr_grid", depth=grid_a["depth"], lrs=grid_a["lrs"])
        control = grid_a["numbers"]["control"]
        stage_a["control"] = control
        arch_a = stage_a_check("arch", control, grid_a["numbers"].get("arch"))
        opt_a = stage_a_check("opt", control, grid_a["numbers"].get("opt"))
        if plain_control is not None:
            notes.append(
                f"the plain shootout's control never failed in {plain_control['n']} runs, so Stage A is taken at the "
                f"learning rates where it does fail ({', '.join(f'{lr:g}' for lr in grid_a['lrs'])})"
            )
    elif plain_control is not None:
        control = plain_control
        stage_a["control"] = control
        arch_a = stage_a_check("arch", control, _arm_numbers(shootout[roles["arch"]]) if roles["arch"] else None)
        opt_a = stage_a_check("opt", control, _arm_numbers(shootout[roles["opt"]]) if roles["opt"] else None)
        if control["failures"] == 0:
            grid_lrs = sorted({g["lr"] for g in groups if g.get("grid_cell") and g.get("lr") is not None})
            if grid_lrs:
                next_steps.append(
                    f"The control never failed, neither in the shootout nor on the learning-rate grid (up to "
                    f"{grid_lrs[-1]:g}): extend the grid upwards until it does, "
                    f"e.g. `{LR_GRID_HINT}` with larger rates."
                )
            else:
                next_steps.append(
                    f"The control never failed in {control['n']} run{'s' if control['n'] != 1 else ''}, "
                    f"so this shootout "
                    f"does not reproduce the instability: run it over a learning-rate grid that reaches the unstable "
                    f"band, `{LR_GRID_HINT}`, or add seeds or epochs."
                )
    elif shootout:
        notes.append("no control arm (named 'control', or hybrid without clipping) among the shootout runs")
        next_steps.append("Run a shootout with a control arm: `fnostab shootout --out DIR` (arms control, arch, opt).")
    else:
        notes.append("no shootout runs: Stage A was not measured")
        next_steps.append(f"Run Stage A over a learning-rate grid: `{LR_GRID_HINT}` (arms control, arch, opt).")
    for role, check in (("arch", arch_a), ("opt", opt_a)):
        if stage_a.get("control") is not None and not check["present"]:
            next_steps.append(f"Add the {role} arm to the shootout.")
    stage_a["arch"], stage_a["opt"] = arch_a, opt_a

    cells = list((stress or {}).get("cells") or [])
    stage_b: dict[str, Any] = {"measured": bool(cells)}
    arch_b, opt_b = _absent(), _absent()
    if cells:
        roles_b = resolve_roles(_stress_arms(cells))
        stage_b["roles"] = roles_b
        if roles_b["control"] is None:
            notes.append("no control arm among the stress runs: Stage B cannot compare")
            next_steps.append(f"Stress the control next to the fixes: `{STRESS_HINT}`.")
        else:
            sensitivities = list((stress or {}).get("lr_sensitivity") or [])
            arch_b = stage_b_check("arch", cells, roles_b["control"], roles_b["arch"], sensitivities)
            opt_b = stage_b_check("opt", cells, roles_b["control"], roles_b["opt"], sensitivities)
            if arch_b.get("control_never_failed") or opt_b.get("control_never_failed"):
                next_steps.append(
                    f"Raise the learning rates or depths until the control fails: `{STRESS_HINT}` with larger values."
                )
            for role, check in (("arch", arch_b), ("opt", opt_b)):
                if "seeds_to_separate" in check:
                    needed = check["seeds_to_separate"]
                    how_many = (
                        f"about {needed} seeds would separate them at the spread seen"
                        if needed
                        else "the spread seen is too large to separate them with a few more seeds"
                    )
                    next_steps.append(
                        f"{role} looks less LR-sensitive than the control but within seed noise: {how_many}; rerun "
                        f"the same command with --seeds {needed or 'N'} on the same --out (finished runs are kept)."
                    )
            for role, check in (("arch", arch_b), ("opt", opt_b)):
                if not check["present"] and stage_a.get(role, {}).get("passes") is not False:
                    next_steps.append(f"Stress the {role} arm on the control's grid: `{STRESS_HINT}`.")
    elif arch_a["passes"] is not False:
        next_steps.append(f"Stage B was not measured: run the arms over a learning-rate grid, `{LR_GRID_HINT}`.")
    stage_b["arch"], stage_b["opt"] = arch_b, opt_b

    arch_fails = arch_a["passes"] is False or arch_b["passes"] is False
    control_failed = stage_a.get("control", {}).get("failures", 0) > 0
    crashed = _crashed_arms(groups, [roles, stage_b.get("roles") or {}])
    if crashed:
        # A crash says nothing about stability, and it inflates a failure rate: decide nothing.
        outcome = "inconclusive"
        for label, reason in crashed.items():
            notes.append(f"runs of {label} ended in error (a crash, not a training instability)")
            next_steps.append(f"Fix the error of {label} and rerun its runs" + (f": {reason}" if reason else "."))
    elif arch_a["passes"] is True and arch_b["passes"] is True:
        outcome = "gold"
    elif arch_b["passes"] is False and opt_b["passes"] is False:
        outcome = "pivot"
    elif arch_fails and opt_a["passes"] is True and opt_b["passes"] is not False:
        outcome = "silver"
    elif control_failed and arch_a["passes"] is False and opt_a["passes"] is False:
        outcome = "pivot"  # both fixes lose to a control that does fail: Stage B cannot rescue them
    else:
        outcome = "inconclusive"

    overlaps = [
        f"{role} (Stage {stage})"
        for stage, pairs in (("A", (("arch", arch_a), ("opt", opt_a))), ("B", (("arch", arch_b), ("opt", opt_b))))
        for role, check in pairs
        if check.get("intervals_overlap")
    ]
    if overlaps:
        notes.append(
            f"the 95% failure-rate intervals of {', '.join(overlaps)} overlap the control's: "
            "the difference is within seed noise at this number of runs"
        )
        next_steps.append("Add seeds to separate the failure-rate intervals before acting on this verdict.")
    sensitivity_overlaps = [
        role
        for role, check in (("arch", arch_b), ("opt", opt_b))
        if (check.get("fix") or {}).get("lr_sensitivity") is not None
        and separated(check["fix"]["lr_sensitivity"], check["control"].get("lr_sensitivity")) is False
        and separated(check["control"].get("lr_sensitivity"), check["fix"]["lr_sensitivity"]) is False
    ]
    if sensitivity_overlaps:
        notes.append(
            f"the 95% LR-sensitivity intervals of {', '.join(sensitivity_overlaps)} overlap the control's: "
            "which arm is less sensitive is within seed noise"
        )
    if outcome == "inconclusive" and not next_steps:
        next_steps.append(
            "No decision rule applies to these results; add seeds, or stress the arms "
            f"(`{STRESS_HINT}`), until Stage A and Stage B give a pass or a fail."
        )
    return {
        "outcome": outcome,
        "decision": OUTCOMES[outcome],
        "explanation": _explain(outcome, stage_a, stage_b, notes),
        "stage_a": stage_a,
        "stage_b": stage_b,
        "notes": notes,
        "next_steps": list(dict.fromkeys(next_steps)),
    }


def _stage_a_sentence(role: str, check: Mapping[str, Any]) -> str:
    if not check["present"]:
        return f"No {role} arm was run."
    verdict = {True: "passes", False: "fails", None: "is undecided at"}[check["passes"]]
    why = f" ({'; '.join(check['reasons'])})" if check["reasons"] else ""
    return f"{_describe(check['numbers'])}: it {verdict} Stage A{why}."


def _stage_b_sentence(role: str, check: Mapping[str, Any]) -> str:
    if not check["present"]:
        return f"Stage B has no {role} runs."
    if "fix" not in check or check.get("deep_depth") is None:
        return f"Stage B for {role} is undecided ({'; '.join(check['reasons'])})."
    fix, control = check["fix"], check["control"]
    verdict = {True: "passes", False: "fails", None: "is undecided at"}[check["passes"]]
    why = f" ({'; '.join(check['reasons'])})" if check["reasons"] and check["passes"] is not False else ""
    sensitivity = ""
    if fix.get("lr_sensitivity") and control.get("lr_sensitivity"):
        sensitivity = (
            f", LR sensitivity {_sensitivity(fix['lr_sensitivity'])} "
            f"(control {_sensitivity(control['lr_sensitivity'])})"
        )
    return (
        f"On the grid {role} has stability boundary lr {_bound(fix['boundary'], 'lr')}, depth "
        f"{_bound(fix['boundary'], 'depth')} (control: lr {_bound(control['boundary'], 'lr')}, depth "
        f"{_bound(control['boundary'], 'depth')}){sensitivity} and fails "
        f"{fix['deep']['failures']}/{fix['deep']['n']} at depth {check['deep_depth']} "
        f"(control {control['deep']['failures']}/{control['deep']['n']}): it {verdict} Stage B{why}."
    )


def _sensitivity(entry: Mapping[str, Any]) -> str:
    """``0.21 [0.18–0.25]``: mean and 95% interval over seeds (per-arm ℓ*)."""
    if entry.get("mean") is None:
        return "n/a"
    interval = entry.get("ci95")
    return f"{entry['mean']:.3g}" + (f" [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else " (one seed)")


def _explain(outcome: str, stage_a: Mapping[str, Any], stage_b: Mapping[str, Any], notes: Sequence[str]) -> str:
    """One paragraph: the outcome, then the numbers of each stage that led to it."""
    parts = [f"Outcome {outcome}: {OUTCOMES[outcome]}"]
    if "control" in stage_a:
        where = (
            f" (at the learning rates where the control fails: {', '.join(f'{lr:g}' for lr in stage_a['lrs'])})"
            if stage_a.get("source") == "lr_grid"
            else ""
        )
        parts.append(f"Stage A{where}: {_describe(stage_a['control'])}.")
        parts.append(_stage_a_sentence("arch", stage_a["arch"]))
        parts.append(_stage_a_sentence("opt", stage_a["opt"]))
    if stage_b["measured"]:
        parts.append(_stage_b_sentence("arch", stage_b["arch"]))
        parts.append(_stage_b_sentence("opt", stage_b["opt"]))
    else:
        parts.append("Stage B (depth/LR stress) was not measured.")
    if notes:
        parts.append("Note: " + "; ".join(notes) + ".")
    return " ".join(parts)

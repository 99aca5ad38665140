"""Build the summary of a set of runs and write it: summary.json, summary.md and PNG plots.

:func:`summarize` is the one way in, used by ``fnostab summarize`` and at the end of a sweep.

Where the files go: ``out_dir`` when given; otherwise the single input path (a sweep dir, a run dir,
or the run dir of a result.json). Several input paths need an explicit ``out_dir``: no one of them
is the obvious home of a summary of all.

summary.json (schema ``fnostab.summary/2``; typed in :mod:`fnostab.report.document`)::

    {schema, created, inputs, out_dir, grad_norm_threshold,
     runs: {finished, unfinished: [dirs], outside_plan: [dirs]}, sweeps: [{path, kind, arms, seeds}],
     arms: [                                  # one entry per arm; per (arm, depth, lr) for grid runs
       {label, arm, kind, grid_cell, depth, lr, arch, clip, val_loss_names, noise_floor, seeds,
        n, n_infeasible, n_ok, failures, failure_rate, failure_ci95: [lo, hi], failures_by_status: {status: k},
        time_to_failure: {steps, epochs, step: {median, min, max}, epoch: {median, min, max}},
        metrics: {best_val_loss | final_val_loss | best_val_loss_over_floor | final_val_loss_over_floor
                  | amp_ssim | amp_ssim_gain | amp_mae | phase_ssim
                  | phase_aligned_ssim: {n, median, p25, p75, baseline_median}},   # successful runs only
        grad_norm: {threshold, runs_with_series, runs_without_series, logged_steps, nonfinite, max,
                    median, p99, above, frac_above, max_run, max_step},           # pooled metrics.csv
        runs: [{dir, seed, status, failure, initial_val_loss, best_val_loss, final_val_loss, noise_floor, metrics,
                grad_norm, first_block_to_blow_up, memory_plan, explanation}],
       failures_by_first_signal: {signal: k}}],   # diverged/collapsed runs by `fnostab explain`'s first signal
     stress: null | {                         # grid runs: stress sweeps and shootouts over --lrs
        cells: [{label, arm, depth, lr, arch, clip, n, n_infeasible, failures, statuses, stable, infeasible}],
        arms: [{arm, lr_by_depth: [{depth, lr, infeasible}], depth_by_lr: [{lr, depth}], boundary: {lr, depth},
                lr_sensitivity: LRS | null (at the arm's deepest depth), lr_sensitivity_by_depth: [LRS]}],
        lr_sensitivity: [LRS],                # LRS = {arm, depth, grid, n_seeds, excluded_seeds: [{seed, reasons}],
                                              #        definition: per_arm, best_loss (ℓ*), mean, ci95, per_seed:
                                              #        [{seed, value, scores, initial_val_loss}],
                                              #        common: {best_loss, mean, ci95, per_seed}}
        infeasible: [{arm, depth, lr, seeds, dirs, params, total_bytes, geometry_error, reason}]},
     seed_spread: [{label, control, metric, median, iqr, control_median, control_iqr, within_spread}],
     verdict: {outcome, decision, explanation, stage_a, stage_b, notes, next_steps, note_codes, next_step_codes},
     gates: [{gate, metric, arm, op, threshold, value, passed (null: skipped, nothing ran)}], gates_passed,
     plots: {written: [file names], skipped: {file name: reason}}, warnings: [...]}

``n`` counts the runs that started; a failure is a started run that did not end ok (diverged,
collapsed, oom or error; ``failures_by_status`` tells them apart). Infeasible runs (memory plan over
the limit) never started and are counted apart in ``n_infeasible``: a plan that did not fit says
nothing about stability, so a group of infeasible runs only has no failure rate.
Every number is JSON-safe (non-finite → null). Quality metrics are conditional on successful runs
and each comes with the median of the constant-prediction baseline next to it, because a phase SSIM
of 0.88 is what a constant scores here (docs/method.md#the-phase-ssim-trap). LR sensitivity is defined
in :mod:`fnostab.report.lr_sensitivity`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnostab.errors import InputError
from fnostab.io import check_out_dir, write_json_atomic, write_text_atomic
from fnostab.report.collect import Collection, RunRecord, collect, group_label, read_metric_columns
from fnostab.report.document import (
    SUMMARY_SCHEMA,
    ArmSummary,
    LrSensitivity,
    PlotsRecord,
    RunsCount,
    SeedSpread,
    StressArm,
    StressCell,
    StressSection,
    SummaryDocument,
    SweepEntry,
)
from fnostab.report.explain import count_first_signals, run_explanation
from fnostab.report.gates import Gate, evaluate_gates, parse_gate
from fnostab.report.lr_sensitivity import lr_sensitivities, points_from_runs
from fnostab.report.stats import (
    first_block_to_blow_up,
    intervals_overlap,
    pooled_series_stats,
    quartiles,
    series_stats,
    spread,
    stress_boundaries,
    wilson_interval,
)
from fnostab.report.verdict import decide
from fnostab.training.failure import FAILURE_STATUSES
from fnostab.training.result import now_iso

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"

# Quality metrics summarised per arm: from result.json's training block, and from its metrics block.
TRAINING_METRICS = ("best_val_loss", "final_val_loss", "best_val_loss_over_floor", "final_val_loss_over_floor")
EVAL_METRICS = ("amp_ssim", "amp_mae", "phase_ssim", "phase_aligned_ssim")
# amp_ssim minus the constant baseline's, per run: the quality check to read (docs/method.md#the-phase-ssim-trap).
DERIVED_METRICS = ("amp_ssim_gain",)
METRIC_NAMES = TRAINING_METRICS + EVAL_METRICS[:1] + DERIVED_METRICS + EVAL_METRICS[1:]

GRAD_COLUMNS = ("grad_norm_preclip", "grad_norm_preclip_step")  # ours; Lightning's on_step+on_epoch name
BLOCK_GRAD_PREFIX = "block_grad_norm/"
TRAIN_LOSS_SUFFIX = "_train_loss"


@dataclass
class Traces:
    """Per-run curves for the plots, kept out of summary.json (a grad-norm trace has one value per step)."""

    val_losses: dict[str, list[list[float]]] = field(default_factory=dict)
    grad_norms: dict[str, list[tuple[list[int], list[float]]]] = field(default_factory=dict)
    train_losses: dict[str, list[tuple[list[int], list[float]]]] = field(default_factory=dict)  # per logged step


def _run_grad_norm(
    record: RunRecord, columns: dict[str, tuple[list[int], list[float]]] | None, threshold: float
) -> tuple[dict[str, Any] | None, tuple[list[int], list[float]] | None]:
    """A run's pre-clip gradient-norm statistics: from its metrics.csv, else from result.json."""
    for name in GRAD_COLUMNS:
        if columns and columns.get(name) and columns[name][1]:
            steps, values = columns[name]
            return {"source": "metrics.csv", **series_stats(steps, values, threshold)}, (steps, values)
    stats = record.run_result.grad_norm
    if stats is not None and stats.max is not None:
        # result.json counts every step at a fixed threshold of 1.0; keep its fraction only if it matches.
        return {
            "source": "result.json",
            "logged_steps": stats.steps,
            "nonfinite": None,
            "max": stats.max,
            "median": stats.median,
            "p99": stats.p99,
            "frac_above": stats.frac_above_1 if threshold == 1.0 else None,
            "above": None,
            "max_step": stats.max_step,
        }, None
    return None, None


def _first_block(columns: dict[str, tuple[list[int], list[float]]] | None) -> dict[str, Any] | None:
    if not columns:
        return None
    blocks = {}
    for name, series in columns.items():
        if name.startswith(BLOCK_GRAD_PREFIX):
            try:
                blocks[int(name.removeprefix(BLOCK_GRAD_PREFIX))] = series
            except ValueError:
                continue
    return first_block_to_blow_up(blocks) if blocks else None


def _wanted_column(name: str) -> bool:
    return name in GRAD_COLUMNS or name.startswith(BLOCK_GRAD_PREFIX) or name.endswith(TRAIN_LOSS_SUFFIX)


def _train_loss_trace(columns: dict[str, tuple[list[int], list[float]]] | None) -> tuple[list[int], list[float]] | None:
    """The per-step training loss of a run (``mae_train_loss`` or ``poisson_train_loss``), if logged."""
    for name, series in sorted((columns or {}).items()):
        if name.endswith(TRAIN_LOSS_SUFFIX) and series[1]:
            return series
    return None


def _metric_values(record: RunRecord) -> dict[str, tuple[float | None, float | None]]:
    """(value, constant-baseline value) of each summarised metric for one run."""
    training = record.run_result.training
    metrics = record.run_result.metrics or {}  # metric name → value, and "baseline" → the constant's values
    baseline = metrics.get("baseline") or {}
    out: dict[str, tuple[float | None, float | None]] = {
        name: (getattr(training, name), None) for name in TRAINING_METRICS
    }
    for name in EVAL_METRICS:
        out[name] = (metrics.get(name), baseline.get(name))
    amp, base = metrics.get("amp_ssim"), baseline.get("amp_ssim")
    gain = amp - base if isinstance(amp, (int, float)) and isinstance(base, (int, float)) else None
    out["amp_ssim_gain"] = (gain, 0.0 if gain is not None else None)
    return out


def _group_summary(
    label: str, records: Sequence[RunRecord], threshold: float, traces: Traces, warnings: list[str]
) -> ArmSummary:
    first = records[0]
    n_infeasible = sum(1 for r in records if r.status == "infeasible")
    n = len(records) - n_infeasible
    failed = [r for r in records if r.status not in ("ok", "infeasible")]
    ok = [r for r in records if r.status == "ok"]
    by_status = {
        status: sum(1 for r in failed if r.status == status) for status in FAILURE_STATUSES if status != "infeasible"
    }
    timed = [r.run_result.failure for r in failed if r.run_result.failure is not None]
    steps = [failure.step for failure in timed]
    epochs = [failure.epoch for failure in timed]

    per_metric = {name: [] for name in METRIC_NAMES}
    per_baseline = {name: [] for name in METRIC_NAMES}
    for record in ok:
        for name, (value, base) in _metric_values(record).items():
            per_metric[name].append(value)
            per_baseline[name].append(base)
    metrics = {}
    for name in METRIC_NAMES:
        entry = quartiles(per_metric[name])
        entry["baseline_median"] = quartiles(per_baseline[name])["median"]
        metrics[name] = entry

    runs, series = [], {}
    traces.val_losses[label] = []
    traces.grad_norms[label] = []
    traces.train_losses[label] = []
    for record in records:
        columns = read_metric_columns(record.metrics_csv, _wanted_column)
        if columns is None and record.metrics_csv.exists():
            warnings.append(f"{record.metrics_csv}: unreadable, gradient norms taken from result.json")
        grad, trace = _run_grad_norm(record, columns, threshold)
        if trace is not None:
            series[str(record.dir)] = trace
            traces.grad_norms[label].append(trace)
        loss_trace = _train_loss_trace(columns)
        if loss_trace is not None:
            traces.train_losses[label].append(loss_trace)
        result = record.run_result
        training = result.training
        traces.val_losses[label].append([v if isinstance(v, (int, float)) else math.nan for v in training.val_losses])
        runs.append(
            {
                "dir": str(record.dir),
                "seed": record.seed,
                "status": record.status,
                "failure": result.failure.to_document() if result.failure is not None else None,
                "initial_val_loss": training.initial_val_loss,
                "best_val_loss": training.best_val_loss,
                "final_val_loss": training.final_val_loss,
                "noise_floor": training.noise_floor,
                "metrics": {name: result.metrics.get(name) for name in EVAL_METRICS} if result.metrics else None,
                "grad_norm": grad,
                "first_block_to_blow_up": _first_block(columns) if record.status not in ("ok", "infeasible") else None,
                "memory_plan": result.memory_plan,
                "explanation": run_explanation(record.dir) if record.status in ("diverged", "collapsed") else None,
            }
        )
    pooled = pooled_series_stats(series, threshold)
    pooled["threshold"] = threshold
    pooled["runs_without_series"] = n - pooled["runs_with_series"]
    val_names = sorted({r.run_result.training.val_loss_name for r in records} - {None})
    gridsizes = sorted({(r.run_result.data.gridsize if r.run_result.data else None) or 1 for r in records})
    return ArmSummary(
        label=label,
        arm=first.arm,
        kind=first.kind,
        grid_cell=first.is_grid_cell,
        depth=first.depth,
        lr=first.lr,
        arch=first.arch,
        clip=first.clip,
        val_loss_names=val_names,
        gridsizes=gridsizes,
        noise_floor=quartiles(r.run_result.training.noise_floor for r in records)["median"],
        seeds=[r.seed for r in records],
        n=n,
        n_infeasible=n_infeasible,
        n_ok=len(ok),
        failures=len(failed),
        failure_rate=len(failed) / n if n else None,
        failure_ci95=list(wilson_interval(len(failed), n)),
        failures_by_status=by_status,
        failures_by_first_signal=count_first_signals(runs),
        time_to_failure={"steps": steps, "epochs": epochs, "step": spread(steps), "epoch": spread(epochs)},
        metrics=metrics,
        grad_norm=pooled,
        runs=runs,
    )


def _lr_sensitivities(stress_groups: Sequence[ArmSummary]) -> list[LrSensitivity]:
    """One LR-sensitivity entry per (arm, depth) whose grid has at least two learning rates; the
    common ℓ* is shared by the arms at the same depth."""
    out = []
    for depth in dict.fromkeys(g.depth for g in stress_groups):
        points: dict[str, list[Any]] = {}
        for group in stress_groups:
            if group.depth == depth and group.lr is not None:
                points.setdefault(group.arm, []).extend(points_from_runs(group.runs, group.lr))
        out += [LrSensitivity(arm=arm, depth=depth, **entry) for arm, entry in lr_sensitivities(points).items()]
    return out


def _stress_section(groups: Sequence[ArmSummary], records: Sequence[RunRecord]) -> StressSection | None:
    """Grid cells (feasible runs only count toward n/failures), boundaries and LR sensitivity per arm,
    infeasible plans. Cells come from stress sweeps and from shootouts over a learning-rate grid."""
    stress_groups = [g for g in groups if g.grid_cell]
    if not stress_groups:
        return None
    cells = []
    for group in stress_groups:
        statuses = [run.status for run in group.runs]
        n, failures = group.n, group.failures
        cells.append(
            StressCell(
                label=group.label,
                arm=group.arm,
                depth=group.depth,
                lr=group.lr,
                arch=group.arch,
                clip=group.clip,
                n=n,
                n_infeasible=group.n_infeasible,
                failures=failures,
                statuses={s: statuses.count(s) for s in sorted(set(statuses))},
                stable=n > 0 and failures == 0,
                infeasible=n == 0 and group.n_infeasible > 0,
            )
        )
    sensitivities = _lr_sensitivities(stress_groups)
    arms = []
    for arm in dict.fromkeys(c.arm for c in cells):
        by_depth = [e for e in sensitivities if e.arm == arm]
        # The deepest depth stands for the arm, as in Stage B's comparison at the deep setting.
        deepest = max(by_depth, key=lambda e: e.depth if e.depth is not None else -1) if by_depth else None
        arms.append(
            StressArm(
                arm=arm,
                **stress_boundaries([c.model_dump() for c in cells if c.arm == arm]),
                lr_sensitivity=deepest,
                lr_sensitivity_by_depth=by_depth,
            )
        )
    # One entry per infeasible cell: the plan depends on the model, not on the seed.
    infeasible: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        if record.is_grid_cell and record.status == "infeasible":
            entry = infeasible.get(record.group_key)
            if entry is None:
                plan, failure = record.run_result.memory_plan or {}, record.run_result.failure
                entry = infeasible[record.group_key] = {
                    "arm": record.arm,
                    "depth": record.depth,
                    "lr": record.lr,
                    "seeds": [],
                    "dirs": [],
                    "params": plan.get("params", record.run_result.model.params),
                    "total_bytes": plan.get("total_bytes"),
                    "geometry_error": plan.get("geometry_error"),
                    "reason": failure.reason if failure is not None else None,
                }
            entry["seeds"].append(record.seed)
            entry["dirs"].append(str(record.dir))
    return StressSection(cells=cells, arms=arms, lr_sensitivity=sensitivities, infeasible=list(infeasible.values()))


# Quality figures whose seed spread is compared between each arm and the control.
SPREAD_METRICS = ("best_val_loss", "amp_ssim")


def seed_spread(groups: Sequence[ArmSummary]) -> list[SeedSpread]:
    """Per arm (and grid cell) against the control at the same depth and lr: do the seeds' interquartile
    ranges of each quality figure overlap? Where they do, the difference between the medians is within
    seed noise. Only groups with at least two successful runs on both sides are compared."""
    from fnostab.report.verdict import resolve_roles

    control = resolve_roles({g.arm: (g.arch, g.clip) for g in groups})["control"]
    if control is None:
        return []
    controls = {(g.depth, g.lr): g for g in groups if g.arm == control}
    out = []
    for group in groups:
        reference = controls.get((group.depth, group.lr))
        if group.arm == control or reference is None:
            continue
        for name in SPREAD_METRICS:
            mine, theirs = group.metrics.get(name), reference.metrics.get(name)
            if mine.n < 2 or theirs.n < 2:
                continue
            out.append(
                SeedSpread(
                    label=group.label,
                    control=reference.label,
                    metric=name,
                    median=mine.median,
                    iqr=[mine.p25, mine.p75],
                    control_median=theirs.median,
                    control_iqr=[theirs.p25, theirs.p75],
                    within_spread=intervals_overlap([mine.p25, mine.p75], [theirs.p25, theirs.p75]),
                )
            )
    return out


def build_summary(collection: Collection, threshold: float = 1.0) -> tuple[SummaryDocument, Traces]:
    """The summary document (without gates and plots) and the per-run curves for plotting."""
    grouped: dict[tuple[Any, ...], list[RunRecord]] = {}
    for record in collection.runs:  # already sorted by arm order, depth, lr, seed
        grouped.setdefault(record.group_key, []).append(record)
    traces = Traces()
    warnings: list[str] = []
    groups = [
        _group_summary(group_label(*key), records, threshold, traces, warnings) for key, records in grouped.items()
    ]
    for group in groups:
        if len(group.val_loss_names) > 1:
            warnings.append(
                f"arm {group.label} mixes validation losses {group.val_loss_names}: its loss medians are not comparable"
            )
    if len({name for g in groups for name in g.val_loss_names}) > 1:
        warnings.append("arms use different validation losses: loss comparisons between them are not meaningful")
    gridsizes = sorted({size for g in groups for size in g.gridsizes})
    if len(gridsizes) > 1:
        warnings.append(
            f"runs at different gridsizes ({', '.join(map(str, gridsizes))}) are summarised together: their losses and "
            "stitched regions differ (docs/gridsize.md), so compare each with its own constant baseline"
        )
    if collection.outside_plan:
        warnings.append(
            f"{len(collection.outside_plan)} finished run(s) under a sweep dir are not in its sweep.json plan "
            f"(left by an earlier command on the same dir) and are not summarised, e.g. {collection.outside_plan[0]}"
        )
    stress = _stress_section(groups, collection.runs)
    document = SummaryDocument(
        schema=SUMMARY_SCHEMA,
        created=now_iso(),
        inputs=[str(p) for p in collection.inputs],
        out_dir=None,
        grad_norm_threshold=threshold,
        gridsizes=gridsizes,
        runs=RunsCount(
            finished=len(collection.runs),
            unfinished=[str(p) for p in collection.unfinished],
            outside_plan=[str(p) for p in collection.outside_plan],
        ),
        sweeps=[SweepEntry(**{k: v for k, v in sweep.items() if k != "planned"}) for sweep in collection.sweeps],
        arms=groups,
        stress=stress,
        seed_spread=seed_spread(groups),
        verdict=decide(groups, stress),
        gates=[],
        gates_passed=True,
        plots=PlotsRecord(),
        warnings=warnings,
    )
    return document, traces


def default_out_dir(paths: Sequence[Path | str]) -> Path:
    """Where a summary goes without ``--out``: the single input path (see the module docstring)."""
    if len(paths) != 1:
        raise InputError(f"{len(paths)} paths given: pass --out DIR to say where the summary of all of them goes")
    path = Path(paths[0])
    return path.parent if path.is_file() else path


def write_summary(document: SummaryDocument, traces: Traces, out_dir: Path, *, plots: bool = True) -> None:
    """Plots first (the document records which were drawn), then summary.md, then summary.json."""
    from fnostab.report.markdown import render_markdown

    if plots:
        from fnostab.report.plots import write_plots  # matplotlib only when drawing

        document.plots = write_plots(out_dir, document, traces)
    write_text_atomic(out_dir / SUMMARY_MD, render_markdown(document))
    write_json_atomic(out_dir / SUMMARY_JSON, document.to_json())


def summarize(
    paths: Sequence[Path | str],
    *,
    out_dir: Path | str | None = None,
    threshold: float = 1.0,
    gates: Iterable[str | Gate] = (),
    plots: bool = True,
) -> SummaryDocument:
    """Summarise the runs under ``paths``; write summary.json, summary.md and plots; return the document.

    ``gates`` (texts in the grammar of :mod:`fnostab.report.gates`, or parsed Gates) are evaluated
    into ``document.gates`` and ``document.gates_passed``; a failed gate does not raise (the
    CLI turns it into exit 1). ``plots=False`` skips the PNGs (about a second of matplotlib).
    InputError — with nothing written — for a bad path, no finished runs,
    a corrupt result.json, a malformed gate, a gate on an unknown arm or a bad threshold.
    ``document.to_json()`` is summary.json's content.
    """
    parsed = [g if isinstance(g, Gate) else parse_gate(g) for g in gates]
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise InputError(f"--grad-norm-threshold must be a finite number >= 0, found {threshold!r}")
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    check_out_dir(out)  # a file, an unwritable or uncreatable dir: exit 2 before any work
    collection = collect(paths)
    document, traces = build_summary(collection, float(threshold))
    document.gates = evaluate_gates(parsed, document.arms)  # InputError for an unknown arm: nothing written yet
    document.gates_passed = all(entry.passed is not False for entry in document.gates)
    document.out_dir = str(out)
    write_summary(document, traces, out, plots=plots)
    return document

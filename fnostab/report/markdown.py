"""Text renderings of a summary document: summary.md and the compact terminal table.

Both read only the document (never the runs), so what a person reads is what summary.json says.
The verdict's sentences come from :mod:`fnostab.report.verdict_text`, as everywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fnostab.report import verdict_text
from fnostab.report.document import ArmSummary, Boundary, MetricStats, StressSection, SummaryDocument
from fnostab.training.failure import FAILURE_STATUSES


def _num(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return verdict_text.pct(value, missing="—")


def _ci(interval: Sequence[float]) -> str:
    return f"{_pct(interval[0])}–{_pct(interval[1])}"


def _runs(group: ArmSummary) -> str:
    infeasible = group.n_infeasible
    return f"{group.n} (+{infeasible} infeasible)" if infeasible else str(group.n)


def _gate_mark(passed: bool | None) -> str:
    return "skipped (no run started)" if passed is None else "yes" if passed else "**no**"


def _statuses(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{s} {counts[s]}" for s in FAILURE_STATUSES if counts.get(s)) or "—"


def _metric(entry: MetricStats, *, iqr: bool = True, baseline: bool = True) -> str:
    if entry.median is None:
        text = "—"
    elif iqr and entry.n > 1:
        text = f"{_num(entry.median)} [{_num(entry.p25)}–{_num(entry.p75)}]"
    else:
        text = _num(entry.median)
    if baseline and entry.baseline_median is not None:
        text += f" (const {_num(entry.baseline_median, 3)})"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


def _steps_list(values: Sequence[Any], limit: int = 12) -> str:
    shown = ", ".join("—" if v is None else str(v) for v in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


def _boundary(boundary: Boundary, axis: str) -> str:
    """One axis of a stress boundary in a table: its value, — (unstable already at the smallest), or not swept."""
    if not getattr(boundary, f"{axis}_swept"):
        return "not swept"
    return _num(getattr(boundary, axis))


def _interval(interval: Sequence[float] | None) -> str:
    return "one seed: no interval" if interval is None else f"[{_num(interval[0], 3)}, {_num(interval[1], 3)}]"


def _sensitivity_header() -> list[str]:
    return [
        "arm",
        "depth",
        "learning rates",
        "seeds",
        "stable-LR boundary",
        "LR sensitivity [95% CI]",
        "ℓ* (own)",
        "LR sensitivity, common ℓ* [95% CI]",
        "ℓ* (common)",
    ]


def _sensitivity_rows(stress: StressSection) -> list[list[str]]:
    """One row per arm and depth: its LR sensitivity (both ℓ*) beside its stable-LR boundary."""
    boundaries = {(a.arm, d.depth): d.lr for a in stress.arms for d in a.lr_by_depth}
    rows = []
    for entry in stress.lr_sensitivity:
        common, grid = entry.common, entry.grid
        rows.append(
            [
                entry.arm,
                str(entry.depth),
                f"{_num(grid[0])} … {_num(grid[-1])} ({len(grid)})",
                str(entry.n_seeds) + (f" (+{len(entry.excluded_seeds)} left out)" if entry.excluded_seeds else ""),
                _num(boundaries.get((entry.arm, entry.depth))),
                f"{_num(entry.mean, 3)} {_interval(entry.ci95)}",
                _num(entry.best_loss),
                f"{_num(common.mean, 3)} {_interval(common.ci95)}",
                _num(common.best_loss),
            ]
        )
    return rows


SENSITIVITY_NOTE = (
    "LR sensitivity = mean over the grid of min(final val loss, ℓ0) − ℓ*, per seed, then the mean over seeds "
    "(Wortsman et al. 2023): a run that diverged or collapsed scores ℓ0, its loss before training. Lower is more "
    "stable. ℓ* (own) is the arm's best score on the grid; ℓ* (common) the best of all arms, which puts the arms on "
    "one scale. Read it beside the loss-vs-LR curves (lr_curves.png): an arm that never learns also scores 0."
)


def _stress_lines(stress: StressSection) -> list[str]:
    lines = ["## Learning-rate and depth grid", ""]
    if stress.lr_sensitivity:
        lines += ["### LR sensitivity and stable-LR boundary", "", SENSITIVITY_NOTE, ""]
        lines += _table(_sensitivity_header(), _sensitivity_rows(stress))
        excluded = [(e.arm, x) for e in stress.lr_sensitivity for x in e.excluded_seeds]
        lines += [f"- {arm} seed {x.seed} left out: {'; '.join(x.reasons)}" for arm, x in excluded]
        lines += [""] if excluded else []
    lines += ["### Cells", ""]
    lines += _table(
        ["arm", "depth", "lr", "runs", "failed", "statuses", "stable"],
        [
            [
                c.arm,
                c.depth,
                _num(c.lr),
                c.n + c.n_infeasible,
                c.failures,
                ", ".join(f"{k} {v}" for k, v in c.statuses.items()),
                "infeasible" if c.infeasible else ("yes" if c.stable else "no"),
            ]
            for c in stress.cells
        ],
    )
    lines += [
        "Stability boundary: the largest value at which every seed is ok, and every smaller tested value too. "
        "The single number per axis is the smallest over the other axis (the LR that is safe at every depth tested; "
        "the depth reached at every LR). — means unstable already at the smallest value tested.",
        "",
    ]
    lines += _table(
        ["arm", "boundary lr", "boundary depth", "largest stable lr per depth", "largest stable depth per lr"],
        [
            [
                a.arm,
                _boundary(a.boundary, "lr"),
                _boundary(a.boundary, "depth"),
                "; ".join(f"d{e.depth}: {'infeasible' if e.infeasible else _num(e.lr)}" for e in a.lr_by_depth),
                "; ".join(f"lr {_num(e.lr)}: {_num(e.depth)}" for e in a.depth_by_lr),
            ]
            for a in stress.arms
        ],
    )
    if stress.infeasible:
        lines += ["Infeasible configurations (memory plan over the limit; nothing was allocated):", ""]
        lines += _table(
            ["arm", "depth", "lr", "seeds", "params", "total bytes", "geometry error", "reason"],
            [
                [
                    i.arm,
                    i.depth,
                    _num(i.lr),
                    len(i.seeds),
                    "—" if i.params is None else f"{i.params:,}",
                    "—" if i.total_bytes is None else f"{i.total_bytes:,}",
                    i.geometry_error or "—",
                    i.reason or "—",
                ]
                for i in stress.infeasible
            ],
        )
    return lines


def _first_signal_lines(groups: Sequence[ArmSummary]) -> list[str]:
    """Why runs failed: each arm's diverged/collapsed runs counted by first precursor signal, then one line per run."""
    failed = [g for g in groups if g.failures_by_first_signal]
    if not failed:
        return []
    lines = [
        "## Why runs failed (first precursor signal)",
        "",
        "`fnostab explain` per diverged or collapsed run: the earliest per-block signal that left its own recent "
        "range in the window before the failure (docs/diagnostics.md#explain); `none`: no signal moved, or the run "
        "was trained without --precursors-every.",
        "",
    ]
    lines += _table(
        ["arm", "failed runs", "by first signal"],
        [
            [
                g.label,
                sum(g.failures_by_first_signal.values()),
                ", ".join(f"{name} {count}" for name, count in g.failures_by_first_signal.items()),
            ]
            for g in failed
        ],
    )
    rows = [
        [
            g.label,
            f"`{r.dir}`",
            e["event"],
            e["event_step"],
            e["text"] or "—",
            "—" if e["steps_before_event"] is None else e["steps_before_event"],
        ]
        for g in failed
        for r in g.runs
        for e in [r.explanation]
        if e and e.get("event")
    ]
    if rows:
        lines += _table(["arm", "run", "failure", "step", "first signal", "steps before"], rows)
    return lines


def render_markdown(document: SummaryDocument) -> str:
    """summary.md: verdict first, then failures, time to failure, quality, gradients, stress, gates."""
    groups = document.arms
    threshold = document.grad_norm_threshold
    runs = document.runs
    lines = ["# fnostab summary", ""]
    gridsizes = document.gridsizes or [1]
    lines.append(
        f"Inputs: {', '.join(f'`{p}`' for p in document.inputs)}. "
        f"Gridsize {', '.join(map(str, gridsizes))}. {runs.finished} finished runs"
        + (f"; {len(runs.unfinished)} unfinished run dirs skipped (no result.json)." if runs.unfinished else ".")
    )
    lines += [""] + [f"- skipped, unfinished: `{p}`" for p in runs.unfinished] + ([""] if runs.unfinished else [])
    lines += verdict_text.markdown_lines(document.verdict)

    lines += ["## Failures", ""]
    lines += _table(
        ["arm", "runs", "failed", "failure rate", "95% Wilson CI", "by status"],
        [
            [
                g.label,
                _runs(g),
                g.failures,
                _pct(g.failure_rate),
                _ci(g.failure_ci95),
                _statuses(g.failures_by_status),
            ]
            for g in groups
        ],
    )
    lines += ["## Time to failure", ""]
    failed = [g for g in groups if g.time_to_failure.steps]
    if failed:
        lines += _table(
            ["arm", "failed runs", "steps", "step median (min–max)", "epoch median (min–max)"],
            [
                [
                    g.label,
                    len(t.steps),
                    _steps_list(t.steps),
                    f"{_num(t.step.median)} ({_num(t.step.min)}–{_num(t.step.max)})",
                    f"{_num(t.epoch.median)} ({_num(t.epoch.min)}–{_num(t.epoch.max)})",
                ]
                for g in failed
                for t in [g.time_to_failure]
            ],
        )
    else:
        lines += ["No run failed during training.", ""]

    lines += [
        "## Quality of successful runs vs the constant baseline",
        "",
        "Median [p25–p75] over runs with status ok; (const …) is the median score of a constant prediction "
        "on the same test data. Phase SSIM is close to its constant baseline by construction (small phase range, "
        "per-tile offsets at gridsize 1): read it only next to that baseline, never as a pass criterion. "
        "× floor is the best validation loss as a multiple of the noise floor, the loss of the true object "
        "on the same data (1 would be a perfect reconstruction).",
        "",
    ]
    lines += _table(
        [
            "arm",
            "ok runs",
            "best val loss",
            "× floor",
            "final val loss",
            "amp SSIM",
            "amp SSIM − const",
            "amp MAE",
            "phase SSIM",
            "phase SSIM (tile-aligned)",
        ],
        [
            [
                g.label,
                g.n_ok,
                _metric(g.metrics.best_val_loss),
                _metric(g.metrics.best_val_loss_over_floor, iqr=False),
            ]
            + [_metric(g.metrics.get(k)) for k in ("final_val_loss", "amp_ssim")]
            + [_metric(g.metrics.amp_ssim_gain, baseline=False)]
            + [_metric(g.metrics.get(k)) for k in ("amp_mae", "phase_ssim", "phase_aligned_ssim")]
            for g in groups
        ],
    )

    within = [e for e in document.seed_spread if e.within_spread]
    if within:
        lines += [
            "Differences within seed spread (the interquartile ranges over seeds overlap, so the medians do "
            "not separate the arms at this number of seeds):",
            "",
        ]
        lines += [
            f"- {e.metric}: {e.label} {_num(e.median)} [{_num(e.iqr[0])}–{_num(e.iqr[1])}] vs "
            f"{e.control} {_num(e.control_median)} [{_num(e.control_iqr[0])}–{_num(e.control_iqr[1])}]"
            for e in within
        ] + [""]
    lines += [f"## Gradient norms (pre-clip global L2, logged steps in metrics.csv; threshold {threshold:g})", ""]
    lines += _table(
        [
            "arm",
            "runs logged",
            "logged steps",
            "median",
            "p99",
            "max",
            "largest spike at",
            f"steps > {threshold:g}",
            "non-finite",
        ],
        [
            [
                g.label,
                f"{gn.runs_with_series}/{g.n}",
                gn.logged_steps,
                _num(gn.median),
                _num(gn.p99),
                _num(gn.max),
                "—" if gn.max_run is None else f"step {gn.max_step} of `{gn.max_run}`",
                _pct(gn.frac_above),
                gn.nonfinite,
            ]
            for g in groups
            for gn in [g.grad_norm]
        ],
    )
    blocks = [(g, r) for g in groups for r in g.runs if r.first_block_to_blow_up is not None]
    if blocks:
        lines += [
            "### First block to blow up (failed runs with per-block monitoring)",
            "",
            "The block whose gradient norm first exceeded the median of its own earlier steps by the "
            "threshold factor; among blocks crossing at that step, the largest factor. Without a crossing, "
            "the block with the largest excursion.",
            "",
        ]
        lines += _table(
            ["arm", "run", "status", "block", "step", "norm / own earlier median", "crossed factor"],
            [
                [
                    g.label,
                    f"`{r.dir}`",
                    r.status,
                    b.block,
                    b.step,
                    _num(b.factor, 3),
                    f"{'yes' if b.crossed else 'no'} ({b.threshold_factor:g}×)",
                ]
                for g, r in blocks
                for b in [r.first_block_to_blow_up]
            ],
        )
    lines += _first_signal_lines(groups)
    if document.stress is not None:
        lines += _stress_lines(document.stress)
    if document.gates:
        lines += ["## Gates", ""]
        lines += _table(
            ["gate", "arm", "value", "passed"],
            [[f"`{e.gate}`", e.arm, _num(e.value), _gate_mark(e.passed)] for e in document.gates],
        )
    plots = document.plots
    if plots.written or plots.skipped:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({name})" for name in plots.written]
        lines += [f"- {name} not drawn: {why}" for name, why in plots.skipped.items()] + [""]
    if document.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in document.warnings] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _loss_with_floor(group: ArmSummary) -> str:
    text = _num(group.metrics.best_val_loss.median)
    floor = group.metrics.best_val_loss_over_floor.median
    return text + (f" ({floor:.0f}×)" if floor is not None else "")


def format_summary_table(document: SummaryDocument) -> str:
    """The compact per-arm table for a terminal: failures with CI, loss, SSIM vs constant, grad norms."""
    threshold = document.grad_norm_threshold
    header = [
        "arm",
        "n",
        "failed",
        "rate [95% CI]",
        "statuses",
        "best val loss (× floor)",
        "amp SSIM (const)",
        "phase SSIM (const)",
        f"grad>{threshold:g}",
        "max grad",
    ]
    rows = []
    for g in document.arms:
        amp, phase, grads = g.metrics.amp_ssim, g.metrics.phase_ssim, g.grad_norm
        rows.append(
            [
                g.label,
                _runs(g),
                str(g.failures),
                f"{_pct(g.failure_rate)} [{_ci(g.failure_ci95)}]",
                _statuses(g.failures_by_status),
                _loss_with_floor(g),
                f"{_num(amp.median, 3)} ({_num(amp.baseline_median, 3)})",
                f"{_num(phase.median, 3)} ({_num(phase.baseline_median, 3)})",
                _pct(grads.frac_above),
                _num(grads.max, 3),
            ]
        )
    return _aligned(header, rows, left=(0, 3, 4))


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """A plain-text table: columns padded to their widest cell, numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def format_terminal(document: SummaryDocument) -> str:
    """Human output of ``fnostab summarize`` and the sweeps: table, verdict, next steps, failed gates, files."""
    lines = [format_summary_table(document)]
    gridsizes = document.gridsizes or [1]
    if gridsizes != [1]:
        lines.append(f"gridsize {', '.join(map(str, gridsizes))} (docs/gridsize.md)")
    stress = document.stress
    if stress is not None:
        lines.append("")
        for entry in stress.arms:
            infeasible = [str(e.depth) for e in entry.lr_by_depth if e.infeasible]
            lines.append(
                f"grid {entry.arm}: stable boundary lr {_boundary(entry.boundary, 'lr')}, "
                f"depth {_boundary(entry.boundary, 'depth')}"
                + (f"; infeasible at depth {', '.join(infeasible)}" if infeasible else "")
            )
        lines.append(
            "(boundary: largest value with every seed ok there and below, at every value of the other axis; "
            "— = unstable already at the smallest tested)"
        )
        if stress.lr_sensitivity:
            lines += [
                "",
                "LR sensitivity (mean over seeds [95% CI]; lower is more stable; failed runs score ℓ0):",
                _aligned(_sensitivity_header(), _sensitivity_rows(stress)),
            ]
    lines += [""] + verdict_text.terminal_lines(document.verdict)
    unfinished = document.runs.unfinished
    if unfinished:
        lines.append(f"skipped {len(unfinished)} unfinished run dir(s) without result.json")
    checked = [e for e in document.gates if e.passed is not None]
    if document.gates:
        passed = sum(1 for e in checked if e.passed)
        skipped = len(document.gates) - len(checked)
        lines.append(
            f"gates: {passed}/{len(checked)} passed" + (f" ({skipped} skipped: no run started)" if skipped else "")
        )
    if document.out_dir:
        lines.append(f"summary: {document.out_dir}/summary.md, summary.json")
        if document.plots.written:
            lines.append(f"plots in {document.out_dir}: {', '.join(document.plots.written)}")
    return "\n".join(lines)

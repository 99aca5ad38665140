"""Why a run failed: which precursor signal moved first, in which block, by how much, how long before.

Inputs are a run dir's own records: result.json (status, failure step), metrics.csv (signals logged every
K steps, the training loss every step) and precursors.csv (every step of every signal in the window
before each spike and the failure; :mod:`fnostab.training.precursors`).

The rule (docs/diagnostics.md#explain): each per-block signal at each step is compared with its own
recent past (the median of its last values: its own scale, as ``summarize``'s first-block rule does).
A signal *moves* when it leaves that median by ``MOVE_FACTOR`` and by ``NOISE_MADS`` median absolute
deviations, or turns non-finite. The search covers the window before the event (the failure, else the
first spike); the *first signal* is the earliest move there, ties going to the larger move. Curvature is
reported beside it: the step where the sharpness (and the batch sharpness) rose above 2/η and the
preconditioned sharpness above (2+2β1)/((1−β1)η) = 38/η at β1 = 0.9, when measured.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fnostab.errors import InputError
from fnostab.report.collect import read_metric_columns
from fnostab.report.stats import _RunningMedian  # the loss-spike rule uses the same median as summarize
from fnostab.rundir import METRICS_NAME, RESULT_NAME, read_run_result
from fnostab.training.precursor_record import (
    CURVATURE,
    CURVATURE_PREFIX,
    LOSS_SPIKE_FACTOR,
    PRECURSOR_PREFIX,
    PRECURSORS_NAME,
    SIGNALS,
    read_windows,
)

EXPLAIN_SCHEMA = "fnostab.explain/1"
EXPLAIN_PNG = "explain.png"

# A signal "moved" when it left the median of its own last HISTORY values by MOVE_FACTOR and by
# NOISE_MADS median absolute deviations of those values, in the direction that precedes trouble (a
# gradient or weight norm that falls is no warning; an update or second moment that collapses is). The
# first WARMUP_STEPS steps (the optimizer's own transient) are not searched unless the run fails inside
# them. In two healthy `cpu`-preset runs (lr 1e-3 and 3e-3, 2,660 steps each, every step recorded) the
# rule fired on no step of any block; with 6 MADs it fired on 11 and 2 block-steps
# (scripts/precursor_thresholds.py, docs/diagnostics.md#explain).
MOVE_FACTOR = 3.0
NOISE_MADS = 8.0
HISTORY = 50
WARMUP_STEPS = 20
# update_norm is left to update_ratio, its scale-free form (the weights move slowly: they rise together).
DIRECTIONS = {"grad_norm": "up", "weight_norm": "up", "update_ratio": "both", "adam_v_rms": "both"}
# The per-step update/gradient cosine is logged and shown but names no first signal: under Adam it
# swings by more than 0.5 from step to step, and in the same healthy runs it fell 0.5 and 8 MADs below
# its median on 162 and 334 block-steps.
# Adam's update collapses once the gradient RMS it sees falls to its ε (1e-8; Wortsman et al.,
# arXiv:2309.14322 §3.4): a block whose √mean v̂ drops below 10 ε is flagged.
EPSILON_RMS = 1e-7
# Each curvature measure against its reference line, and how the text names them.
CURVATURE_LINES = (("sharpness", "edge_gd"), ("sharpness_precond", "edge_adam"), ("batch_sharpness", "edge_gd"))
CURVATURE_LABELS = {
    "sharpness": ("sharpness", "2/η"),
    "sharpness_precond": ("preconditioned sharpness", "(2+2β1)/((1−β1)η)"),
    "batch_sharpness": ("batch sharpness", "2/η"),
}
SIGNAL_LABELS = {
    "grad_norm": "gradient norm",
    "weight_norm": "weight norm",
    "update_norm": "update norm",
    "update_ratio": "update/weight ratio",
    "update_grad_cos": "update/gradient cosine",
    "adam_v_rms": "Adam second-moment RMS",
}


def _split_column(name: str) -> tuple[str, str] | None:
    """``precursor/<block>/<signal>`` → (block, signal); None for the global columns."""
    rest = name.removeprefix(PRECURSOR_PREFIX)
    if "/" not in rest:
        return None
    block, signal = rest.rsplit("/", 1)
    return (block, signal) if signal in SIGNALS else None


def _merge(*series: tuple[Sequence[int], Sequence[float]]) -> tuple[list[int], list[float]]:
    """Union of (steps, values) series by step; later series win at equal steps."""
    merged: dict[int, float] = {}
    for steps, values in series:
        merged.update(zip((int(s) for s in steps), (float(v) for v in values)))
    ordered = sorted(merged)
    return ordered, [merged[s] for s in ordered]


def signal_moves(
    signal: str, steps: Sequence[int], values: Sequence[float], start: int, end: int
) -> Iterator[dict[str, Any]]:
    """Every step in [start, end] where the signal left the range of its own last HISTORY values.

    Compared on a log scale: d = ln(x / median of the history). A move needs d ≥ ln MOVE_FACTOR and
    d ≥ NOISE_MADS × the median absolute deviation of the history (a signal that swings by ×2 from
    step to step needs a larger jump to count); |d| for the signals whose fall matters too. A
    non-finite value after finite history is a move.
    """
    direction = DIRECTIONS.get(signal)
    if direction is None:
        return
    history: deque[float] = deque(maxlen=HISTORY)
    for step, value in zip(steps, values):
        if step > end:
            break
        if math.isnan(value) or (value == 0.0 and not history):
            continue  # not measured on that step (no update on a failed step, no Adam state yet)
        if step >= start and history and value >= 0:
            past = np.asarray(history)
            level = float(np.median(past))
            spread = float(np.median(np.abs(past - level)))
            if not math.isfinite(value):
                deviation = math.inf
            else:
                deviation = math.log(value) - level if value > 0 else -math.inf
            signed = deviation if direction == "up" else abs(deviation)
            threshold = max(math.log(MOVE_FACTOR), NOISE_MADS * spread)
            if signed >= threshold:
                baseline = math.exp(level)
                factor = value / baseline if math.isfinite(value) else math.inf
                yield {
                    "step": step,
                    "value": value,
                    "baseline": baseline,
                    "factor": factor,
                    "score": abs(deviation) / threshold,
                }
        if math.isfinite(value) and value > 0:
            history.append(math.log(value))


def _crossing(steps: Sequence[int], values: Sequence[float], lines: Sequence[float], end: int) -> dict[str, Any]:
    """Measurements up to ``end`` against their reference line: max ratio and the last upward crossing."""
    pairs = [(s, v, line) for s, v, line in zip(steps, values, lines) if s <= end and math.isfinite(v) and line > 0]
    if not pairs:
        return {"measured": 0, "crossed_step": None, "max_ratio": None, "last_value": None, "line": None}
    crossed = None
    for index, (step, value, line) in enumerate(pairs):
        if value >= line and (index == 0 or pairs[index - 1][1] < pairs[index - 1][2]):
            crossed = (step, value, line)
    step, value, line = pairs[-1]
    return {
        "measured": len(pairs),
        "max_ratio": max(v / line_ for _, v, line_ in pairs),
        "last_value": value,
        "line": line,
        "crossed_step": None if crossed is None else crossed[0],
        "crossed_value": None if crossed is None else crossed[1],
        "crossed_line": None if crossed is None else crossed[2],
    }


def _dead_since(steps: Sequence[int], values: Sequence[float], end: int) -> int | None:
    """First step from which a block's gradient norm stayed exactly 0 up to ``end`` (it had been non-zero)."""
    since, alive = None, False
    for step, value in zip(steps, values):
        if step > end:
            break
        if value == 0.0:
            if since is None and alive:
                since = step
        elif not math.isnan(value):
            alive, since = True, None
    return since


def _loss_spike(steps: Sequence[int], values: Sequence[float], start: int, end: int) -> int | None:
    """First step in [start, end] whose loss is non-finite or above LOSS_SPIKE_FACTOR × the median of its
    earlier losses.
    """
    history = _RunningMedian()
    for step, value in zip(steps, values):
        if step > end:
            break
        if step >= start and (
            not math.isfinite(value) or (len(history) and value > LOSS_SPIKE_FACTOR * history.median())
        ):
            return step
        if math.isfinite(value):
            history.push(value)
    return None


@dataclass
class ExplainTraces:
    """The curves behind an explanation, for its plot: {name: (steps, values)}."""

    loss: tuple[list[int], list[float]] = ((), ())  # type: ignore[assignment]
    grad_norm: tuple[list[int], list[float]] = ((), ())  # type: ignore[assignment]
    first_signal_by_block: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    curvature: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)


def explain_run(run_dir: Path | str) -> dict[str, Any]:
    """The explanation document of one run dir (schema ``fnostab.explain/1``); InputError if it is no run."""
    return analyse_run(run_dir)[0]


def analyse_run(run_dir: Path | str) -> tuple[dict[str, Any], ExplainTraces]:
    """:func:`explain_run`'s document and the curves behind it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a directory; expected a run dir written by fnostab train")
    if not (run_dir / RESULT_NAME).is_file():
        raise InputError(f"{run_dir}: no {RESULT_NAME}; expected a finished run dir written by fnostab train")
    result = read_run_result(run_dir)
    failure = result.failure
    columns = (
        read_metric_columns(
            run_dir / METRICS_NAME,
            lambda n: n.startswith((PRECURSOR_PREFIX, CURVATURE_PREFIX)) or n.endswith("_train_loss") or n == "lr",
        )
        or {}
    )
    train_key = next((n for n in columns if n.endswith("_train_loss")), "")
    windows = read_windows(run_dir / PRECURSORS_NAME) if (run_dir / PRECURSORS_NAME).is_file() else []
    document: dict[str, Any] = {
        "schema": EXPLAIN_SCHEMA,
        "run_dir": str(run_dir),
        "status": result.status,
        "failure": None if failure is None else failure.to_document(),
        "windows": [
            {
                "trigger": w["trigger"],
                "trigger_step": w["trigger_step"],
                "reason": w["reason"],
                "first_step": w["steps"][0] if w["steps"] else None,
                "steps": len(w["steps"]),
            }
            for w in windows
        ],
        "event": None,
        "loss_spike_step": None,
        "first_signal": None,
        "movers": [],
        "curvature": None,
        "dead_blocks": [],
        "near_epsilon": [],
        "searched": None,
        "note": None,
    }
    target = None
    if failure is not None and failure.status in ("diverged", "collapsed"):
        target = next((w for w in reversed(windows) if w["trigger"] == failure.status), None)
        event = {"kind": failure.status, "step": int(failure.step or 0), "reason": failure.reason}
        if failure.status == "collapsed":
            # A collapse is found at an epoch's validation, long after it began: the first spike before
            # it, when there is one, is where the run went wrong.
            target = next(
                (w for w in windows if w["trigger"] == "spike" and w["trigger_step"] <= event["step"]), target
            )
    else:
        target = next((w for w in windows if w["trigger"] == "spike"), None)
        event = (
            None if target is None else {"kind": "spike", "step": target["trigger_step"], "reason": target["reason"]}
        )
    document["event"] = event
    if event is None:
        document["note"] = (
            "the run did not fail and had no spike: nothing to explain"
            if failure is None
            else f"status {failure.status}: not a training instability, nothing to explain"
        )
        return document, ExplainTraces()
    if target is None and not any(_split_column(n) for n in columns):
        document["note"] = (
            "no precursor signals recorded: train with --precursors-every K to record them "
            "(and --curvature-every M for curvature)"
        )
    end = target["trigger_step"] if target else event["step"]
    start = target["steps"][0] if target and target["steps"] else max(0, end - 100)
    # The optimizer's transient is skipped, except in a run that failed (or first spiked) inside twice
    # that span: there the transient is the failure.
    start = max(start, WARMUP_STEPS if end >= 2 * WARMUP_STEPS else 1)
    start = min(start, end)
    document["searched"] = {
        "first_step": start,
        "last_step": end,
        "window": None if target is None else {"trigger": target["trigger"], "trigger_step": target["trigger_step"]},
    }
    window_columns = target["columns"] if target else {}
    window_steps = target["steps"] if target else []

    def series(name: str) -> tuple[list[int], list[float]]:
        parts = [columns.get(name, ([], []))]
        if name in window_columns:
            parts.append((window_steps, window_columns[name]))
        return _merge(*parts)

    loss_steps, loss_values = _merge(
        columns.get(train_key, ([], [])), (window_steps, window_columns.get(f"{PRECURSOR_PREFIX}loss", []))
    )
    document["loss_spike_step"] = _loss_spike(loss_steps, loss_values, start, end)

    names = sorted({n for n in [*columns, *window_columns] if _split_column(n)})
    movers = []
    for name in names:
        block, signal = _split_column(name)  # type: ignore[misc]
        steps, values = series(name)
        move = next(signal_moves(signal, steps, values, start, end), None)
        if move is not None:
            movers.append(
                {
                    "signal": signal,
                    "block": block,
                    "column": name,
                    **move,
                    "finite": math.isfinite(move["value"]),
                    "steps_before_event": event["step"] - move["step"],
                }
            )
        if signal == "grad_norm":
            since = _dead_since(steps, values, event["step"])
            if since is not None:
                document["dead_blocks"].append({"block": block, "since_step": since})
        if signal == "adam_v_rms":
            low = next(((s, v) for s, v in zip(steps, values) if s <= event["step"] and 0 < v < EPSILON_RMS), None)
            if low is not None:
                document["near_epsilon"].append({"block": block, "step": low[0], "value": low[1]})
    forward = [_split_column(n)[0] for n in [*window_columns, *columns] if _split_column(n)]  # type: ignore[index]
    order = {name: index for index, name in enumerate(dict.fromkeys(forward))}
    document["dead_blocks"].sort(key=lambda d: (d["since_step"], order.get(d["block"], 0)))
    movers.sort(key=lambda m: (m["step"], -m["score"]))
    document["movers"] = [{k: v for k, v in m.items() if k != "score"} for m in movers]
    if movers:
        document["first_signal"] = document["movers"][0]
    elif names and document["note"] is None:
        document["note"] = (
            f"no per-block signal left ×{MOVE_FACTOR:g} of its own median between step {start} and step {end}"
        )

    curvature = {}
    for name, line_name in CURVATURE_LINES:
        steps, values = series(f"{CURVATURE_PREFIX}{name}")
        line_steps, lines = series(f"{CURVATURE_PREFIX}{line_name}")
        by_step = dict(zip(line_steps, lines))
        curvature[name] = {
            "line_name": line_name,
            **_crossing(steps, values, [by_step.get(s, math.nan) for s in steps], event["step"]),
        }
    document["curvature"] = curvature if any(c["measured"] for c in curvature.values()) else None
    traces = ExplainTraces(loss=(loss_steps, loss_values), grad_norm=series(f"{PRECURSOR_PREFIX}grad_norm"))
    if document["first_signal"] is not None:
        kind = document["first_signal"]["signal"]
        traces.first_signal_by_block = {_split_column(n)[0]: series(n) for n in names if n.endswith(f"/{kind}")}  # type: ignore[index]
    for name in CURVATURE:
        traces.curvature[name] = series(f"{CURVATURE_PREFIX}{name}")
    # The reference lines at every step from the logged learning rate (it may change between
    # measurements): 2/η, and the Adam line as the same multiple (1 + β1)/(1 − β1) of it.
    lr_steps, lrs = _merge(columns.get("lr", ([], [])), (window_steps, window_columns.get(f"{PRECURSOR_PREFIX}lr", [])))
    if lr_steps and traces.curvature["edge_gd"][0]:
        gd = [2.0 / lr if lr > 0 else math.nan for lr in lrs]
        multiples = [
            a / g
            for a, g in zip(traces.curvature["edge_adam"][1], traces.curvature["edge_gd"][1])
            if math.isfinite(a) and math.isfinite(g) and g > 0
        ]
        traces.curvature["edge_gd"] = (lr_steps, gd)
        traces.curvature["edge_adam"] = (
            lr_steps,
            [multiples[0] * g for g in gd] if multiples else [math.nan] * len(gd),
        )
    return document, traces


def _steps(count: int) -> str:
    return f"{count} step" + ("" if count == 1 else "s")


def _lead(count: int, kind: str) -> str:
    return f"{_steps(count)} before the {kind} step" if count else f"at the {kind} step itself"


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


def describe_move(move: Mapping[str, Any]) -> str:
    """``encoder.1: update/weight ratio ×12 (0.0031 → 0.037) at step 840`` from a mover entry."""
    label = SIGNAL_LABELS.get(move["signal"], move["signal"])
    size = f"×{_fmt(move['factor'])}"
    return f"{move['block']}: {label} {size} ({_fmt(move['baseline'])} → {_fmt(move['value'])}) at step {move['step']}"


def format_explanation(document: Mapping[str, Any]) -> str:
    """The human text of :func:`explain_run`'s document; every number comes from the run."""
    lines = [f"run: {document['run_dir']}", f"status: {document['status']}"]
    event = document["event"]
    if event is None:
        lines.append(document["note"] or "nothing to explain")
        return "\n".join(lines)
    lines[-1] += f", {event['kind']} at step {event['step']}" + (f": {event['reason']}" if event.get("reason") else "")
    spike = document["loss_spike_step"]
    if spike is not None and spike != event["step"]:
        lines.append(
            f"loss spike (×{LOSS_SPIKE_FACTOR:g} its median, or non-finite) at step {spike}, "
            f"{_steps(event['step'] - spike)} before the {event['kind']} step"
        )
    first = document["first_signal"]
    if first is not None:
        lead = first["steps_before_event"]
        when = _lead(lead, event["kind"])
        if spike is not None and first["step"] < spike:
            when += f", {_steps(spike - first['step'])} before the loss spike"
        lines.append(f"first signal: {describe_move(first)}, {when}")
        others = document["movers"][1:4]
        if others:
            lines.append("then: " + "; ".join(describe_move(m) for m in others))
    for dead in document.get("dead_blocks") or []:
        lines.append(
            f"{dead['block']}: gradient exactly 0 from step {dead['since_step']} on (a dead block: it "
            f"no longer learns), {_lead(event['step'] - dead['since_step'], event['kind'])}"
        )
    for low in document.get("near_epsilon") or []:
        lines.append(
            f"{low['block']}: Adam second-moment RMS {_fmt(low['value'])} at step {low['step']}, below 10 ε "
            f"(the update collapses near Adam's ε = 1e-8)"
        )
    searched = document.get("searched")
    if searched and searched["window"] and searched["window"]["trigger"] == "spike" and event["kind"] != "spike":
        lines.append(f"(searched the window before the first spike, step {searched['window']['trigger_step']})")
    if document["note"]:
        lines.append(document["note"])
    curvature = document["curvature"]
    if curvature is None:
        lines.append("curvature: not measured (train with --curvature-every M)")
    else:
        for name, _ in CURVATURE_LINES:
            entry = curvature[name]
            label, line_label = CURVATURE_LABELS[name]
            if not entry["measured"]:
                continue
            if entry["crossed_step"] is not None:
                lines.append(
                    f"{label} crossed {line_label} = {_fmt(entry['crossed_line'])} at step {entry['crossed_step']} "
                    f"(λ = {_fmt(entry['crossed_value'])}), "
                    + _lead(event["step"] - entry["crossed_step"], event["kind"])
                )
            else:
                lines.append(
                    f"{label} stayed below {line_label}: at most {_fmt(entry['max_ratio'])} of it "
                    f"over {entry['measured']} measurements"
                )
        lines.append("(2/η and 38/η are reference lines, not laws, for the L1 loss: docs/diagnostics.md#curvature)")
    return "\n".join(lines)


def explanation_summary(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """The compact entry ``summarize`` keeps per failed run: event, first signal, lead, curvature crossings."""
    if document.get("event") is None:
        return None
    first = document.get("first_signal")
    curvature = document.get("curvature") or {}
    return {
        "event": document["event"]["kind"],
        "event_step": document["event"]["step"],
        "first_signal": None if first is None else first["signal"],
        "block": None if first is None else first["block"],
        "step": None if first is None else first["step"],
        "factor": None if first is None else first.get("factor"),
        "steps_before_event": None if first is None else first["steps_before_event"],
        "loss_spike_step": document.get("loss_spike_step"),
        "sharpness_crossed_step": (curvature.get("sharpness") or {}).get("crossed_step"),
        "sharpness_precond_crossed_step": (curvature.get("sharpness_precond") or {}).get("crossed_step"),
        "batch_sharpness_crossed_step": (curvature.get("batch_sharpness") or {}).get("crossed_step"),
        "dead_blocks": [d["block"] for d in document.get("dead_blocks") or []],
        "near_epsilon": [d["block"] for d in document.get("near_epsilon") or []],
        "text": None if first is None else describe_move(first),
        "note": document.get("note"),
    }


def plot_explanation(document: Mapping[str, Any], traces: ExplainTraces) -> Any:
    """Timeline: loss and gradient norm; the first signal's kind in every block (÷ its own starting
    median); curvature against its lines. Vertical lines at the first signal, loss spike and event."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    event, first = document["event"], document["first_signal"]
    measured = {
        name: traces.curvature[name]
        for name, _ in CURVATURE_LINES
        if name in traces.curvature and any(math.isfinite(x) for x in traces.curvature[name][1])
    }
    rows = 2 + (1 if measured else 0)
    figure = Figure(figsize=(8.0, 2.6 * rows + 0.6), dpi=100)
    figure.subplots_adjust(left=0.1, right=0.8, bottom=0.08, top=0.92, hspace=0.35)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    title = f"{document['status']}" + (f" at step {event['step']}" if event else "")
    if first is not None:
        title += f"; first signal: {describe_move(first)}"
    figure.suptitle(title, fontsize=9)

    def finite(steps: Sequence[int], values: Sequence[float]) -> tuple[Any, Any]:
        array = np.asarray(values, dtype=float)
        keep = np.isfinite(array) & (array > 0)
        return np.asarray(steps)[keep], array[keep]

    ax = axes[0]
    ax.plot(*finite(*traces.loss), color="black", lw=1, label="train loss")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    if traces.grad_norm[0]:
        twin = ax.twinx()
        twin.plot(*finite(*traces.grad_norm), color="tab:red", lw=0.8, alpha=0.7, label="grad norm (pre-clip)")
        twin.set_yscale("log")
        twin.set_ylabel("grad norm", color="tab:red")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper left", fontsize=7)
    else:
        ax.legend(loc="upper left", fontsize=7)

    ax = axes[1]
    if first is not None:
        ylabel = f"{SIGNAL_LABELS[first['signal']]} ÷ its median"
        for index, (block, (steps, values)) in enumerate(traces.first_signal_by_block.items()):
            steps_a, values_a = np.asarray(steps), np.asarray(values, dtype=float)
            positive = values_a[np.isfinite(values_a) & (values_a > 0)]
            shown = values_a / np.median(positive) if positive.size else values_a
            mask = np.isfinite(shown) & (shown > 0)
            winner = block == first["block"]
            ax.plot(
                steps_a[mask],
                shown[mask],
                marker="." if mask.sum() < 30 else None,
                lw=2.0 if winner else 0.8,
                alpha=1.0 if winner else 0.6,
                color=f"C{index % 10}",
                label=block + (" (first)" if winner else ""),
            )
        ax.set_yscale("log")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    else:
        ax.text(
            0.5,
            0.5,
            document.get("note") or "no precursor signal moved",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=8,
        )

    if measured:
        ax = axes[2]
        drawn_lines = set()
        for (name, line_name), colour in zip(CURVATURE_LINES, ("tab:blue", "tab:purple", "tab:green")):
            if name not in measured:
                continue
            ax.plot(*finite(*measured[name]), "o-", color=colour, ms=3, lw=1, label=name.replace("_", " "))
            line = traces.curvature.get(line_name)
            if line is not None and line_name not in drawn_lines:
                drawn_lines.add(line_name)
                ax.step(
                    *finite(*line),
                    "--",
                    where="post",
                    color=colour,
                    lw=0.8,
                    label="2/η" if line_name == "edge_gd" else "(2+2β1)/((1−β1)η)",
                )
        ax.set_yscale("log")
        ax.set_ylabel("λmax")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    for ax in axes:
        if first is not None:
            ax.axvline(first["step"], color="tab:orange", lw=1)
        if document.get("loss_spike_step") is not None:
            ax.axvline(document["loss_spike_step"], color="tab:red", ls="--", lw=0.8)
        if event is not None:
            ax.axvline(event["step"], color="black", ls="--", lw=1)
    axes[-1].set_xlabel("step (orange: first signal, red dashed: loss spike, black dashed: event)")
    return figure


def run_explanation(run_dir: Path | str) -> dict[str, Any] | None:
    """:func:`explanation_summary` of a failed run for ``summarize``; an unreadable record gives a note,
    never an error.
    """
    try:
        return explanation_summary(explain_run(run_dir))
    except (InputError, OSError, ValueError, KeyError) as error:
        return {"event": None, "first_signal": None, "note": f"no explanation: {error}"}


def count_first_signals(runs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Failed runs (diverged or collapsed) per first signal; ``none`` where no signal moved or none was recorded."""
    counts: dict[str, int] = {}
    for run in runs:
        explanation = run.get("explanation")
        if run.get("status") not in ("diverged", "collapsed"):
            continue
        key = (explanation or {}).get("first_signal") or "none"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

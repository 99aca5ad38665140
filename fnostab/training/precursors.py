"""Per-block precursor signals, cheap curvature and a window of every signal before each spike or failure.

``fnostab train --precursors-every K`` computes, on **every** step, for each block of the generator
(:func:`block_groups`: ``lifter``, ``encoder.i``, ``bottleneck``, ``decoder.i``, ``head``):

``grad_norm``        ‖g‖ of the block's raw (pre-clip) gradient
``weight_norm``      ‖W‖ before the step
``update_norm``      ‖ΔW‖ of the optimizer step
``update_ratio``     ‖ΔW‖/‖W‖ — uneven ratios across layers precede loss spikes (arXiv:2410.05052)
``update_grad_cos``  cos(−ΔW, g): 1 for plain SGD; near 0 when Adam's step no longer follows the
                     gradient, the state that precedes Adam divergence (Molybog et al., arXiv:2304.09871)
``adam_v_rms``       √(mean v̂) of Adam's bias-corrected second moment: the gradient RMS as Adam sees
                     it; at Adam's ε (1e-8) the update collapses (Wortsman et al., arXiv:2309.14322 §3.4)

All of them are reductions over one flat copy of the weights and gradients, kept on the device in a
ring buffer of the last ``precursor_window`` steps; every K-th step one row is copied to the host and
logged to metrics.csv as ``precursor/<block>/<signal>``. The loss and the pre-clip gradient norm are on
the host anyway (the failure detector reads them every step), so spikes are found there without any
extra sync: a step whose loss exceeds ``LOSS_SPIKE_FACTOR`` or whose gradient norm exceeds
``GRAD_SPIKE_FACTOR`` × its median over the previous ``SPIKE_HISTORY`` steps. At a spike, and when the run diverges or collapses, the whole window is
copied to the host once and appended to ``precursors.csv`` in the run dir (rewritten atomically).

``--curvature-every M`` measures, every M steps on the step's own batch, the sharpness λmax(H) and the
Adam-preconditioned sharpness λmax(P⁻¹H) (:func:`fnostab.hooks.hessian_max_eigenvalue`) and logs them
beside the reference lines 2/η and (2 + 2β1)/((1 − β1)η) (38/η at β1 = 0.9). With the L1 loss the
Gauss–Newton part of H vanishes almost everywhere, so those lines are landmarks, not laws
(docs/diagnostics.md#curvature).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fnostab.hooks.curvature import adam_preconditioner, hessian_max_eigenvalue
from fnostab.io import write_text_atomic

PRECURSORS_NAME = "precursors.csv"
SIGNALS: tuple[str, ...] = ("grad_norm", "weight_norm", "update_norm", "update_ratio", "update_grad_cos", "adam_v_rms")
GLOBALS: tuple[str, ...] = ("loss", "grad_norm", "lr")
CURVATURE: tuple[str, ...] = ("sharpness", "sharpness_precond", "edge_gd", "edge_adam")
PRECURSOR_PREFIX = "precursor/"
CURVATURE_PREFIX = "curvature/"
WINDOW_COLUMNS: tuple[str, ...] = ("window", "trigger", "trigger_step", "step")

# A spike: a step whose loss exceeds LOSS_SPIKE_FACTOR, or whose pre-clip gradient norm exceeds
# GRAD_SPIKE_FACTOR, × its median over the previous SPIKE_HISTORY steps. In a healthy `cpu`-preset run
# (Adam, lr 1e-3, 2,660 steps) the largest such ratio was 1.31 for the loss and 4.98 for the gradient
# norm (small last batches of an epoch); the factors sit 2× above those (docs/diagnostics.md#spikes).
# A blow-up is orders of magnitude larger.
LOSS_SPIKE_FACTOR = 3.0
GRAD_SPIKE_FACTOR = 10.0
SPIKE_HISTORY = 50
SPIKE_MIN_HISTORY = 10
# Spike windows kept per run: enough for a run that keeps spiking, a bounded file for one that never stops.
MAX_SPIKE_WINDOWS = 20
# Lanczos steps per curvature estimate in training: the top eigenvalue is within a few per cent after 10-20.
CURVATURE_ITERATIONS = 16


def block_groups(generator: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The generator's parameters grouped by block, in forward order.

    Hybrids: ``lifter``, ``encoder.i`` (spectral block i and the downsampling conv after it),
    ``bottleneck``, ``decoder.i`` (decoder stages, deepest first), ``head``. ``fno``: ``lifter``,
    ``fno.i``, ``refiner`` (the 1×1 and the 3×3 convs), ``head``. Any other module: its top-level
    children. A parameter in none of these is counted under ``other``.
    """
    groups: dict[str, list[nn.Parameter]] = {}

    def add(name: str, module: nn.Module | None) -> None:
        if module is not None:
            groups.setdefault(name, []).extend(module.parameters())

    blocks = getattr(generator, "blocks", None)
    if hasattr(generator, "lifter") and blocks is not None and hasattr(generator, "decoder"):
        add("lifter", generator.lifter)
        downs = list(getattr(generator, "down", []))
        for index, block in enumerate(blocks[:-1]):
            add(f"encoder.{index}", block)
            if index < len(downs):
                add(f"encoder.{index}", downs[index])
        add("bottleneck", blocks[-1])
        for index, stage in enumerate(generator.decoder):
            add(f"decoder.{index}", stage)
        add("head", generator.head)
    elif hasattr(generator, "lifter") and blocks is not None:
        add("lifter", generator.lifter)
        for index, block in enumerate(blocks):
            add(f"fno.{index}", block)
        add("refiner", getattr(generator, "intermediate", None))
        add("refiner", getattr(generator, "refiner", None))
        add("head", getattr(generator, "head", None))
    else:
        for name, child in generator.named_children():
            add(name, child)
    seen = {id(p) for params in groups.values() for p in params}
    rest = [p for p in generator.parameters() if id(p) not in seen]
    if rest:
        groups["other"] = rest
    return {name: params for name, params in groups.items() if params}


def _real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([_real(t).detach().reshape(-1).float() for t in tensors])


def edge_lines(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """(2/η, (2 + 2β1)/((1 − β1)η)) of the optimizer's first group; the second is NaN without Adam betas."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    betas = group.get("betas")
    adam = (2 + 2 * betas[0]) / ((1 - betas[0]) * lr) if betas else math.nan
    return 2.0 / lr, adam


class PrecursorRecorder:
    """Computes the signals each step, keeps the ring buffer, logs every K steps and writes windows.

    Call order per training step: :meth:`capture` after backward and before clipping, then
    :meth:`finish` after the optimizer step (or instead of it, when the step failed); for a failure
    found outside a step (collapse on validation) :meth:`record_failure`. ``out_dir`` (the run dir)
    receives precursors.csv; without it the windows stay in :attr:`windows`.
    """

    def __init__(self, generator: nn.Module, *, every: int, curvature_every: int = 0, window: int = 100,
                 out_dir: Path | None = None) -> None:
        self.every = every
        self.curvature_every = curvature_every
        self.window = window
        self.out_dir = out_dir
        self.groups = block_groups(generator)
        self.parameters = [p for params in self.groups.values() for p in params]
        self.blocks = list(self.groups)
        sizes = [sum(_real(p).numel() for p in params) for params in self.groups.values()]
        self._segments = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self._counts = torch.tensor(sizes, dtype=torch.float32)
        self.block_columns = [f"{PRECURSOR_PREFIX}{b}/{s}" for b in self.blocks for s in SIGNALS]
        self.global_columns = [f"{PRECURSOR_PREFIX}{g}" for g in GLOBALS] + [f"{CURVATURE_PREFIX}{c}" for c in CURVATURE]
        self.columns = self.global_columns + self.block_columns
        self._ring: Tensor | None = None  # (window, blocks × signals) on the device
        self._host_ring: deque[tuple[int, list[float]]] = deque(maxlen=window)  # (step, globals)
        self._filled = 0
        self._weights: Tensor | None = None
        self._grads: Tensor | None = None
        self._curvature = [math.nan] * len(CURVATURE)
        self._loss_history: deque[float] = deque(maxlen=SPIKE_HISTORY)
        self._grad_history: deque[float] = deque(maxlen=SPIKE_HISTORY)
        self._last_spike_window = -(10**9)
        self.windows: list[dict[str, Any]] = []
        self.spikes_seen = 0

    # ------------------------------------------------------------------------------ per step
    @property
    def signals_on(self) -> bool:
        return self.every > 0

    def capture(self, step: int, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], Tensor] | None = None) -> None:
        """Snapshot weights and raw gradients (device copies); measure curvature on the curvature steps."""
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper → the torch optimizer
        if self.signals_on:
            self._weights = _flat(self.parameters)
            self._grads = torch.cat([
                _real(p.grad).detach().reshape(-1).float() if p.grad is not None
                else torch.zeros(_real(p).numel(), device=p.device) for p in self.parameters
            ])
        self._curvature = [math.nan] * len(CURVATURE)
        if self.curvature_every and loss_fn is not None and step % self.curvature_every == 0:
            self._curvature = self.measure_curvature(loss_fn, optimizer)

    def measure_curvature(self, loss_fn: Callable[[], Tensor], optimizer: torch.optim.Optimizer) -> list[float]:
        """[λmax(H), λmax(P⁻¹H) (NaN without Adam state), 2/η, (2 + 2β1)/((1 − β1)η)] at the current weights."""
        params = [p for p in self.parameters if p.requires_grad]
        try:
            sharpness = hessian_max_eigenvalue(loss_fn, params, CURVATURE_ITERATIONS)
        except RuntimeError:  # a non-finite or broken graph: recorded as unknown, the run goes on
            sharpness = math.nan
        diagonal = adam_preconditioner(optimizer, params) if "betas" in optimizer.param_groups[0] else None
        precond = math.nan
        if diagonal is not None and all(bool(torch.isfinite(d).all()) for d in diagonal):
            try:
                precond = hessian_max_eigenvalue(loss_fn, params, CURVATURE_ITERATIONS, preconditioner=diagonal)
            except (RuntimeError, ValueError):
                precond = math.nan
        return [sharpness, precond, *edge_lines(optimizer)]

    def _block_signals(self, optimizer: torch.optim.Optimizer, stepped: bool) -> Tensor:
        """(blocks × signals) on the device; update signals NaN when no step was taken."""
        assert self._weights is not None and self._grads is not None
        device = self._weights.device
        segments, counts = self._segments.to(device), self._counts.to(device)
        nb = len(self.blocks)

        def per_block(values: Tensor) -> Tensor:
            return torch.zeros(nb, device=device).index_add_(0, segments, values)

        grad_sq = per_block(self._grads * self._grads)
        weight_sq = per_block(self._weights * self._weights)
        nan = torch.full((nb,), math.nan, device=device)
        if stepped:
            delta = _flat(self.parameters) - self._weights
            update = per_block(delta * delta).sqrt()
            descent = per_block(-delta * self._grads)
            cosine = descent / (update * grad_sq.sqrt()).clamp_min(1e-30)
        else:
            update, cosine = nan, nan
        v_rms = nan
        diagonal = _adam_v_hat(optimizer, self.parameters)
        if diagonal is not None:
            v_rms = (per_block(diagonal) / counts).sqrt()
        weight = weight_sq.sqrt()
        ratio = update / weight.clamp_min(1e-30)
        return torch.stack([grad_sq.sqrt(), weight, update, ratio, cosine, v_rms], dim=1).reshape(-1).double()

    def finish(self, step: int, loss: float, grad_norm: float, optimizer: torch.optim.Optimizer, *,
               stepped: bool, failure: Any = None) -> dict[str, float]:
        """Record the step; returns the metrics to log this step (empty on steps that do not log)."""
        optimizer = getattr(optimizer, "optimizer", optimizer)
        lr = float(optimizer.param_groups[0]["lr"])
        row_globals = [loss, grad_norm, lr, *self._curvature]
        logged: dict[str, float] = {}
        if self.signals_on:
            row = self._block_signals(optimizer, stepped)
            if self._ring is None:
                self._ring = torch.full((self.window, row.numel()), math.nan, dtype=torch.float64, device=row.device)
            self._ring[self._filled % self.window] = row
            self._filled += 1
            self._host_ring.append((step, row_globals))
            if step % self.every == 0:
                # The loss and lr have their own metrics.csv columns; the pre-clip norm is logged only with --log-grad-norm.
                logged[f"{PRECURSOR_PREFIX}grad_norm"] = grad_norm
                logged.update(zip(self.block_columns, row.tolist()))  # the one host copy of this step
        if not math.isnan(self._curvature[0]) or not math.isnan(self._curvature[1]):
            logged.update((f"{CURVATURE_PREFIX}{c}", v) for c, v in zip(CURVATURE, self._curvature))
        if failure is not None:
            self.record_failure(failure)
        elif self.signals_on:
            self._check_spike(step, loss, grad_norm)
        self._weights = self._grads = None
        return logged

    def _check_spike(self, step: int, loss: float, grad_norm: float) -> None:
        reasons = []
        for name, value, history, factor in (("loss", loss, self._loss_history, LOSS_SPIKE_FACTOR),
                                             ("grad_norm", grad_norm, self._grad_history, GRAD_SPIKE_FACTOR)):
            if len(history) >= SPIKE_MIN_HISTORY:
                median = statistics.median(history)
                if median > 0 and value > factor * median:
                    reasons.append(f"{name} spike ×{value / median:.3g}")
            if math.isfinite(value):
                history.append(value)
        if not reasons:
            return
        self.spikes_seen += 1
        # One window per run of spiking steps: a new one only when the previous is out of the buffer.
        if step - self._last_spike_window >= self.window and self._spike_windows() < MAX_SPIKE_WINDOWS:
            self._last_spike_window = step
            self._write_window("spike", step, "; ".join(reasons))

    def _spike_windows(self) -> int:
        return sum(1 for w in self.windows if w["trigger"] == "spike")

    def record_failure(self, failure: Any) -> None:
        """Write the window that ends at the failure (diverged or collapsed)."""
        trigger = (str(failure.status), int(failure.step))
        # The detector hands back the same failure to every later check (e.g. the validation after the failed step).
        if self.signals_on and self._filled and not any((w["trigger"], w["trigger_step"]) == trigger for w in self.windows):
            self._write_window(*trigger, str(failure.reason))

    # ------------------------------------------------------------------------------ windows
    def window_rows(self) -> tuple[list[int], list[list[float]]]:
        """The buffered steps (oldest first) and their rows in :attr:`columns` order (one host copy)."""
        if self._ring is None or not self._filled:
            return [], []
        count = min(self._filled, self.window)
        start = self._filled - count
        order = [(start + i) % self.window for i in range(count)]
        blocks = self._ring[order].tolist()
        host = list(self._host_ring)[-count:]
        return [s for s, _ in host], [g + b for (_, g), b in zip(host, blocks)]

    def _write_window(self, trigger: str, trigger_step: int, reason: str) -> None:
        steps, rows = self.window_rows()
        self.windows.append({"trigger": trigger, "trigger_step": trigger_step, "reason": reason, "steps": steps, "rows": rows})
        if self.out_dir is not None:
            write_text_atomic(self.out_dir / PRECURSORS_NAME, self.to_csv())

    def to_csv(self) -> str:
        """Every window so far: one row per buffered step, with the window's index and trigger."""
        handle = io.StringIO()
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*WINDOW_COLUMNS, "reason", *self.columns])
        for index, window in enumerate(self.windows):
            for step, row in zip(window["steps"], window["rows"]):
                writer.writerow([index, window["trigger"], window["trigger_step"], step, window["reason"],
                                 *(repr(float(v)) for v in row)])
        return handle.getvalue()


def _adam_v_hat(optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter]) -> Tensor | None:
    """Adam's bias-corrected second moment v / (1 − β2^t) as one flat device vector, or None (no Adam state)."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = []
    for parameter in parameters:
        state = optimizer.state.get(parameter, {})
        group = group_of.get(id(parameter))
        if "exp_avg_sq" not in state or group is None or "betas" not in group:
            return None
        step = float(state["step"])
        parts.append(_real(state["exp_avg_sq"]).detach().reshape(-1).float() / (1.0 - group["betas"][1] ** step))
    return torch.cat(parts)


def recorder_for(generator: nn.Module, config: Any) -> PrecursorRecorder | None:
    """The recorder a TrainConfig asks for (None when both --precursors-every and --curvature-every are 0)."""
    if not config.precursors_every and not config.curvature_every:
        return None
    return PrecursorRecorder(generator, every=config.precursors_every, curvature_every=config.curvature_every,
                             window=config.precursor_window)


def read_windows(path: Path) -> list[dict[str, Any]]:
    """precursors.csv back as windows: {trigger, trigger_step, reason, steps, columns: {name: [values]}}."""
    windows: dict[int, dict[str, Any]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        names = [n for n in (reader.fieldnames or []) if n not in (*WINDOW_COLUMNS, "reason")]
        for row in reader:
            index = int(row["window"])
            window = windows.setdefault(index, {"trigger": row["trigger"], "trigger_step": int(row["trigger_step"]),
                                                "reason": row["reason"], "steps": [], "columns": {n: [] for n in names}})
            window["steps"].append(int(row["step"]))
            for name in names:
                cell = row.get(name)
                window["columns"][name].append(float(cell) if cell not in (None, "") else math.nan)
    return [windows[i] for i in sorted(windows)]

"""Per-block precursor signals, cheap curvature and a window of every signal before each spike or failure.

``fnostab train --precursors-every K`` computes, on **every** step, for each block of the generator
(:func:`block_groups`: ``lifter``, ``encoder.i``, ``bottleneck``, ``decoder.i``, ``head``):

``grad_norm``        ‖g‖ of the block's raw (pre-clip) gradient
``weight_norm``      ‖W‖ before the step
``update_norm``      ‖ΔW‖ of the optimizer step
``update_ratio``     ‖ΔW‖/‖W‖ — uneven ratios across layers precede loss spikes (arXiv:2410.05052)
``update_grad_cos``  cos(−ΔW, g), g the gradient the optimizer used (after clipping): 1 for plain SGD;
                     near 0 when Adam's step no longer follows the gradient, the state that precedes
                     Adam divergence (Molybog et al., arXiv:2304.09871)
``adam_v_rms``       √(mean v̂) of Adam's bias-corrected second moment: the gradient RMS as Adam sees
                     it; at Adam's ε (1e-8) the update collapses (Wortsman et al., arXiv:2309.14322 §3.4)

All of them are per-parameter norms and dot products (fused ``_foreach_norm`` kernels) summed per
block, kept on the device in a ring buffer of the last ``precursor_window`` steps; every K-th step one
row is copied to the host and logged to metrics.csv as ``precursor/<block>/<signal>``. The loss and the
pre-clip gradient norm are on the host anyway (the failure detector reads them every step), so spikes
are found there without any extra sync: a step whose loss exceeds ``LOSS_SPIKE_FACTOR`` or whose
gradient norm exceeds ``GRAD_SPIKE_FACTOR`` × its median over the previous ``SPIKE_HISTORY`` steps. At a
spike, and when the run diverges or collapses, the whole window is copied to the host once and
appended to ``precursors.csv`` in the run dir (rewritten atomically).

``--curvature-every M`` measures, every M steps on the step's own batch, the sharpness λmax(H), the
Adam-preconditioned sharpness λmax(P⁻¹H) and the batch sharpness gᵀHg/‖g‖²
(:func:`fnostab.hooks.curvature.curvature_estimates`) and logs them beside the reference lines 2/η and
(2 + 2β1)/((1 − β1)η) (38/η at β1 = 0.9). With the L1 loss the
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

from fnostab.hooks.curvature import curvature_estimates
from fnostab.io import write_text_atomic
from fnostab.training.precursor_record import (
    CURVATURE,
    CURVATURE_PREFIX,
    GLOBALS,
    GRAD_SPIKE_FACTOR,
    LOSS_SPIKE_FACTOR,
    PRECURSOR_PREFIX,
    PRECURSORS_NAME,
    SIGNALS,
    SPIKE_HISTORY,
    SPIKE_MIN_HISTORY,
    WINDOW_COLUMNS,
)

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


def squares(tensors: list[Tensor]) -> Tensor:
    """Squared L2 norm of each tensor (one fused kernel), float32 on their device."""
    return torch.stack(torch._foreach_norm(tensors)).float().square()


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
    receives precursors.csv; without it the windows stay in :attr:`windows`. ``clipped=False`` promises
    that nothing changes ``.grad`` between the two calls (no clipping), which saves one pass.
    """

    def __init__(
        self,
        generator: nn.Module,
        *,
        every: int,
        curvature_every: int = 0,
        batch_sharpness_every: int = 0,
        window: int = 100,
        clipped: bool = True,
        out_dir: Path | None = None,
    ) -> None:
        self.every = every
        self.curvature_every = curvature_every
        self.batch_sharpness_every = batch_sharpness_every
        self.clipped = clipped  # False: .grad is not changed between capture and finish (no clipping)
        self.window = window
        self.out_dir = out_dir
        self.groups = block_groups(generator)
        self.parameters = [p for params in self.groups.values() for p in params]
        self.blocks = list(self.groups)
        sizes = [sum(_real(p).numel() for p in params) for params in self.groups.values()]
        # Block of each parameter: per-parameter sums become per-block sums with one index_add_ (unlike a
        # matmul with a 0/1 matrix, it keeps one block's NaN or inf out of the others: 0 × NaN = NaN).
        self._owner = torch.tensor([index for index, params in enumerate(self.groups.values()) for _ in params])
        self._moments: tuple[list[Tensor], list[Tensor], list[float]] | None = None
        self._counts = torch.tensor(sizes, dtype=torch.float32)
        self.block_columns = [f"{PRECURSOR_PREFIX}{b}/{s}" for b in self.blocks for s in SIGNALS]
        self.global_columns = [f"{PRECURSOR_PREFIX}{g}" for g in GLOBALS] + [
            f"{CURVATURE_PREFIX}{c}" for c in CURVATURE
        ]
        self.columns = self.global_columns + self.block_columns
        self._ring: Tensor | None = None  # (window, blocks × signals) on the device
        self._host_ring: deque[tuple[int, list[float]]] = deque(maxlen=window)  # (step, globals)
        self._filled = 0
        # Preallocated, in each parameter's own layout: a fresh 0.5 MB copy every step costs page faults
        # (and elementwise ops between tensors of different layouts are slow).
        self._snapshot: list[Tensor] | None = None
        self._products: list[Tensor] | None = None
        self._weight_squares: Tensor | None = None
        self._grad_squares: Tensor | None = None
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
            # A copy of the weights (for ΔW) and the raw gradient's per-parameter squared norms, taken
            # before clipping rescales .grad in place; complex tensors through their real views.
            weights = [_real(p.detach()) for p in self.parameters]
            if self._snapshot is None or self._snapshot[0].device != weights[0].device:
                self._snapshot = [torch.empty_like(w) for w in weights]
                self._products = [torch.empty_like(w) for w in weights]
            torch._foreach_copy_(self._snapshot, weights)
            self._weight_squares = squares(weights)
            self._grad_squares = squares(self._gradients())
        self._curvature = [math.nan] * len(CURVATURE)
        if loss_fn is not None and self.curvature_every and step % self.curvature_every == 0:
            self._curvature = self.measure_curvature(loss_fn, optimizer)
        elif loss_fn is not None and self.batch_sharpness_every and step % self.batch_sharpness_every == 0:
            self._curvature = self.measure_curvature(loss_fn, optimizer, iterations=0)

    def measure_curvature(
        self, loss_fn: Callable[[], Tensor], optimizer: torch.optim.Optimizer, iterations: int = CURVATURE_ITERATIONS
    ) -> list[float]:
        """The :data:`CURVATURE` row at the current weights: λmax(H), λmax(P⁻¹H) (NaN without Adam
        state), gᵀHg/‖g‖², 2/η and (2 + 2β1)/((1 − β1)η); ``iterations=0``: the batch sharpness only."""
        params = [p for p in self.parameters if p.requires_grad]
        try:
            values = curvature_estimates(loss_fn, params, iterations, optimizer)
        except (RuntimeError, ValueError):  # a broken graph or non-finite weights: unknown, the run goes on
            values = {}
        return [values.get(name, math.nan) for name in CURVATURE[:3]] + list(edge_lines(optimizer))

    def _block_signals(self, optimizer: torch.optim.Optimizer, stepped: bool) -> Tensor:
        """(blocks × signals) on the device; update signals NaN when no step was taken.

        Per-parameter squared norms and dot products (fused ``_foreach_norm`` kernels), summed per block:
        no host sync and no Python loop over elements.
        """
        assert self._snapshot is not None and self._products is not None
        assert self._weight_squares is not None and self._grad_squares is not None
        device = self._snapshot[0].device
        nan = torch.full((len(self.parameters),), math.nan, device=device)
        per_param = [self._grad_squares, self._weight_squares]
        if stepped:
            # In place: the snapshot W becomes W − W′ = −ΔW, the step's descent direction.
            torch._foreach_sub_(self._snapshot, [_real(p.detach()) for p in self.parameters])
            per_param.append(squares(self._snapshot))
            # The gradient the optimizer used (after clipping; .grad is zeroed only at the next step).
            used = self._gradients()
            for product, step, gradient in zip(self._products, self._snapshot, used):
                torch.mul(step, gradient, out=product)
            per_param.append(torch.stack([product.sum() for product in self._products]).float())
            per_param.append(squares(used) if self.clipped else self._grad_squares)
        else:
            per_param += [nan, nan, nan]
        v_sums = self._adam_v_sums(optimizer)
        per_param.append(nan if v_sums is None else v_sums)
        rows = torch.stack(per_param, dim=1)
        if self._owner.device != device:  # moved once, with the model
            self._owner, self._counts = self._owner.to(device), self._counts.to(device)
        blocks = torch.zeros(len(self.blocks), rows.shape[1], device=device).index_add_(0, self._owner, rows)
        grad, weight, update = blocks[:, 0].sqrt(), blocks[:, 1].sqrt(), blocks[:, 2].sqrt()
        cosine = blocks[:, 3] / (update * blocks[:, 4].sqrt()).clamp_min(1e-30)
        ratio = update / weight.clamp_min(1e-30)
        v_rms = (blocks[:, 5] / self._counts).sqrt()
        return torch.stack([grad, weight, update, ratio, cosine, v_rms], dim=1).reshape(-1).double()

    def _gradients(self) -> list[Tensor]:
        return [
            _real(p.grad.detach()) if p.grad is not None else torch.zeros_like(_real(p.detach()))
            for p in self.parameters
        ]

    def _adam_v_sums(self, optimizer: torch.optim.Optimizer) -> Tensor | None:
        """Σ v̂ per parameter (real coordinates) of Adam's bias-corrected second moment v / (1 − β2^t), or None.

        Adam updates its state tensors in place, so they are looked up once, on the first step that has them.
        """
        if self._moments is None:
            group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
            moments, steps, betas = [], [], []
            for parameter in self.parameters:
                state = optimizer.state.get(parameter, {})
                group = group_of.get(id(parameter))
                if "exp_avg_sq" not in state or group is None or "betas" not in group:
                    return None
                moments.append(_real(state["exp_avg_sq"].detach()))
                steps.append(state["step"])
                betas.append(group["betas"][1])
            self._moments = (moments, steps, betas)
        moments, steps, betas = self._moments
        # Every parameter gets a gradient each step, so Adam's step count is one number; it lives on the host.
        count = float(steps[0])
        sums = torch.stack([moment.sum() for moment in moments]).float()  # v ≥ 0 (faster than a fused L1 norm on CPU)
        return sums * torch.tensor([1.0 / (1.0 - beta**count) for beta in betas], device=sums.device)

    def finish(
        self,
        step: int,
        loss: float,
        grad_norm: float,
        optimizer: torch.optim.Optimizer,
        *,
        stepped: bool,
        failure: Any = None,
    ) -> dict[str, float]:
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
                # The loss and lr have their own metrics.csv columns;
                # the pre-clip norm is logged only with --log-grad-norm.
                logged[f"{PRECURSOR_PREFIX}grad_norm"] = grad_norm
                logged.update(zip(self.block_columns, row.tolist()))  # the one host copy of this step
        if any(not math.isnan(v) for v in self._curvature[:3]):
            logged.update((f"{CURVATURE_PREFIX}{c}", v) for c, v in zip(CURVATURE, self._curvature))
        if failure is not None:
            self.record_failure(failure)
        elif self.signals_on:
            self._check_spike(step, loss, grad_norm)
        self._weight_squares = self._grad_squares = None
        return logged

    def _check_spike(self, step: int, loss: float, grad_norm: float) -> None:
        reasons = []
        for name, value, history, factor in (
            ("loss", loss, self._loss_history, LOSS_SPIKE_FACTOR),
            ("grad_norm", grad_norm, self._grad_history, GRAD_SPIKE_FACTOR),
        ):
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
        if (
            self.signals_on
            and self._filled
            and not any((w["trigger"], w["trigger_step"]) == trigger for w in self.windows)
        ):
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
        self.windows.append(
            {"trigger": trigger, "trigger_step": trigger_step, "reason": reason, "steps": steps, "rows": rows}
        )
        if self.out_dir is not None:
            write_text_atomic(self.out_dir / PRECURSORS_NAME, self.to_csv())

    def to_csv(self) -> str:
        """Every window so far: one row per buffered step, with the window's index and trigger."""
        handle = io.StringIO()
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*WINDOW_COLUMNS, "reason", *self.columns])
        for index, window in enumerate(self.windows):
            for step, row in zip(window["steps"], window["rows"]):
                writer.writerow(
                    [
                        index,
                        window["trigger"],
                        window["trigger_step"],
                        step,
                        window["reason"],
                        *(repr(float(v)) for v in row),
                    ]
                )
        return handle.getvalue()


def recorder_for(generator: nn.Module, config: Any) -> PrecursorRecorder | None:
    """The recorder a TrainConfig asks for (None when --precursors-every, --curvature-every and
    --batch-sharpness-every are all 0)."""
    if not (config.precursors_every or config.curvature_every or config.batch_sharpness_every):
        return None
    return PrecursorRecorder(
        generator,
        every=config.precursors_every,
        curvature_every=config.curvature_every,
        batch_sharpness_every=config.batch_sharpness_every,
        clipped=config.clip != "none",
        window=config.precursor_window,
    )

"""Backward gradient gain between consecutive blocks: γ_i = ‖∂L/∂h_{i−1}‖ / ‖∂L/∂h_i‖.

``h_i`` is the output of block ``i`` and ``L`` the loss. γ > 1 means the gradient grows on its way
back from block ``i`` to block ``i−1``; a chain of γ ≫ 1 is how a deep FNO stack turns a small loss
gradient into a blow-up at the lifter, and γ ≪ 1 is the opposite (vanishing) failure.

Mechanism, and why:

* A forward hook on each block registers a *tensor* hook (``Tensor.register_hook``) on every output
  tensor that requires grad. ``register_full_backward_hook`` would be simpler but refuses blocks whose
  output is modified in place downstream (LayerScale ``mul_``, NFNet style), which tensor hooks
  handle: a hook registered before an in-place op receives the gradient w.r.t. the value the block
  returned.
* The hook reduces the detached gradient to a 0-dim tensor on the gradient's device. Nothing is
  copied to the host inside backward. Each call of :meth:`~GradientGainMonitor.norms`,
  :meth:`~GradientGainMonitor.gains`, :meth:`~GradientGainMonitor.log_gains`,
  :meth:`~GradientGainMonitor.summary_stats` or :meth:`~GradientGainMonitor.report` stacks the
  per-block norms and converts them with a single ``tolist()`` (one per device if the blocks are
  spread over several), and derives everything else from that one list of floats: one host sync
  per logging step, not one per block per quantity.
* Because the tensor hooks are attached during forward, a graph built before the monitor existed
  carries none, and its backward would leave every norm empty. Reading a monitor that saw no
  forward pass therefore raises :class:`NoForwardPassError` instead of returning all ``None``.

Only the gradient w.r.t. block *outputs* is measured; the gradient entering block 0 (its input) is
not, so ``n`` blocks give ``n − 1`` gains.

The gain arithmetic on plain floats — :func:`gain_ratio`, :func:`log_gain_ratio`, their chain
forms :func:`chain_gains` and :func:`chain_log_gains`, :func:`summarize_gains` and
:func:`gain_label` — is public so that code aggregating norms over several passes
(``fnostab.diagnostics.gradient_gain``) applies exactly the monitor's rules.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fnostab.errors import FnostabError

NormType = Literal["l2", "l1", "linf", "mean"]
VALID_NORM_TYPES: tuple[str, ...] = ("l2", "l1", "linf", "mean")

#: Heuristic label thresholds (the seed's values). They are rules of thumb for residual stacks, not
#: derived bounds: a plain residual block at initialisation sits near γ ≈ 1.
AMPLIFYING_THRESHOLD = 2.0
DAMPING_THRESHOLD = 0.5

# How report() shows the finite-gain labels of gain_label (the seed's spelling).
_REPORT_TAGS = {"amplifying": "[AMPLIFYING]", "damping": "[DAMPING]", "healthy": "[Healthy]"}


class RepeatedBackwardError(FnostabError, RuntimeError):
    """A block's gradient arrived a second time before :meth:`GradientGainMonitor.reset`."""


class NoForwardPassError(FnostabError, RuntimeError):
    """Norms or gains were read, but no monitored block ran a forward pass while the monitor was attached.

    A ``RuntimeError`` (like :class:`RepeatedBackwardError`) rather than an ``InputError``: it is a
    mistake in the order of calls in the calling code, not bad input from a user.
    """


@dataclass
class _BlockRecord:
    """Gradient measured for one block during one backward pass.

    ``partials`` maps the index of an output tensor leaf to its partial reduction (l2 → that leaf's
    2-norm, l1/mean → sum |g|, linf → max |g|); leaves combine when the norm is read, so a tuple
    output whose leaves receive their gradients at different times needs no bookkeeping of
    "all arrived".
    """

    call_id: int
    numel: int  # elements over all grad-requiring tensor leaves of that forward call (for 'mean')
    partials: dict[int, Tensor] = field(default_factory=dict)


def _tensor_leaves(output: Any) -> list[Tensor]:
    """Tensors in a block output: a tensor, or tuple/list/dict nested to any depth.

    The same tensor object listed twice (``return x, x``) is kept once, otherwise its gradient would
    be counted twice.
    """
    leaves: list[Tensor] = []
    seen: set[int] = set()
    stack = [output]
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            if id(item) not in seen:
                seen.add(id(item))
                leaves.append(item)
        elif isinstance(item, Mapping):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (tuple, list)):
            stack.extend(reversed(item))
    return leaves


def _reduction_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """Accumulate half-precision gradients in float32: a float16 2-norm overflows above 65504."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    return None


def gain_ratio(num: float | None, den: float | None, eps: float) -> float | None:
    """γ = num / den with the special values documented in :meth:`GradientGainMonitor.gains`.

    ``None`` when either norm is missing or both are ``≤ eps``; ``math.inf`` when only ``den`` is
    ``≤ eps``; ``math.nan`` when either norm is inf or nan; otherwise the plain ratio.
    """
    if num is None or den is None:
        return None
    if not (math.isfinite(num) and math.isfinite(den)):
        return math.nan  # the backward itself produced inf/nan: the ratio says nothing
    if den <= eps:
        return math.inf if num > eps else None
    return num / den


def log_gain_ratio(num: float | None, den: float | None, eps: float) -> float | None:
    """log γ as log(num) − log(den); ``None``/``inf``/``nan`` as :func:`gain_ratio`, num = 0 → ``-inf``.

    Subtracting logs keeps a ratio that would underflow to 0.0 finite in log space (1e-200 / 1e200
    gives −921, not −inf); a ratio that overflows is already ``inf`` in :func:`gain_ratio` and stays so.
    """
    gain = gain_ratio(num, den, eps)
    if gain is None or not math.isfinite(gain):
        return gain
    assert num is not None and den is not None  # a finite gain has both sides
    return (math.log(num) if num > 0 else -math.inf) - math.log(den)


def chain_gains(norms: Sequence[float | None], eps: float) -> list[float | None]:
    """γ_i = norms[i−1] / norms[i] for i = 1 … n−1, by :func:`gain_ratio`."""
    return [gain_ratio(norms[i - 1], norms[i], eps) for i in range(1, len(norms))]


def chain_log_gains(norms: Sequence[float | None], eps: float) -> list[float | None]:
    """log γ_i for i = 1 … n−1, by :func:`log_gain_ratio`."""
    return [log_gain_ratio(norms[i - 1], norms[i], eps) for i in range(1, len(norms))]


def gain_label(gain: float | None) -> str:
    """The heuristic class of one gain: ``missing`` (None), ``nonfinite`` (nan), ``vanishing`` (inf),
    ``amplifying`` (γ > :data:`AMPLIFYING_THRESHOLD`), ``damping`` (γ < :data:`DAMPING_THRESHOLD`)
    or ``healthy``."""
    if gain is None:
        return "missing"
    if math.isnan(gain):
        return "nonfinite"
    if gain == math.inf:
        return "vanishing"
    if gain > AMPLIFYING_THRESHOLD:
        return "amplifying"
    if gain < DAMPING_THRESHOLD:
        return "damping"
    return "healthy"


def summarize_gains(gains: Sequence[float | None], log_gains: Sequence[float | None]) -> dict[str, float | int | None]:
    """Summary of a list of gains and their log-gains, with the seed's keys (exactly).

    ``mean_gain``, ``min_gain``, ``max_gain`` and ``mean_log_gain`` are taken over the finite gains
    (``None`` when there are none); ``mean_log_gain`` is ``-inf`` if one of them is exactly 0.
    Counts (thresholds are heuristic): ``num_amplifying`` γ > 2, ``num_damping`` γ < 0.5,
    ``num_healthy`` 0.5 ≤ γ ≤ 2 (finite gains only), ``num_vanishing`` γ = inf, ``num_missing`` γ is
    ``None``. A nan gain is in no count.
    """
    pairs = [(g, lg) for g, lg in zip(gains, log_gains) if g is not None and lg is not None and math.isfinite(g)]
    values = [g for g, _ in pairs]
    logs = [lg for _, lg in pairs]
    return {
        "mean_gain": sum(values) / len(values) if values else None,
        "min_gain": min(values) if values else None,
        "max_gain": max(values) if values else None,
        "mean_log_gain": sum(logs) / len(logs) if logs else None,
        "num_amplifying": sum(1 for g in values if g > AMPLIFYING_THRESHOLD),
        "num_damping": sum(1 for g in values if g < DAMPING_THRESHOLD),
        "num_healthy": sum(1 for g in values if DAMPING_THRESHOLD <= g <= AMPLIFYING_THRESHOLD),
        "num_vanishing": sum(1 for g in gains if g is not None and g == math.inf),
        "num_missing": sum(1 for g in gains if g is None),
    }


class GradientGainMonitor:
    """Measure ‖∂L/∂h_i‖ at each block output and the backward gains between consecutive blocks.

    Parameters
    ----------
    blocks:
        The blocks in forward order (list, tuple, ``nn.ModuleList`` or ``nn.Sequential``); at least
        one, each a distinct ``nn.Module``. For fnostab generators pass ``generator.blocks``.
    norm_type:
        ``'l2'`` (Euclidean), ``'l1'`` (sum |g|), ``'linf'`` (max |g|, spots spikes) or ``'mean'``
        (mean |g|; not a norm, but independent of the output size, so blocks at different resolutions
        compare). For outputs with several tensors the norm is taken over all of them together:
        l2 = sqrt of the total sum of squares, l1 = total sum, linf = overall max, mean = total |g|
        sum / total element count. Complex gradients are measured through |z|.
    strict_single_backward:
        ``True``: raise :class:`RepeatedBackwardError` (a ``RuntimeError``) when a block's gradient
        arrives a second time before :meth:`reset` — a second ``backward()``, a new forward without
        ``reset()``, or a block called twice in one forward. ``False``: the latest gradient
        overwrites the earlier one. Use ``False`` for gradient accumulation loops and with gradient
        checkpointing: recomputation re-runs the blocks' forwards, so hooks are registered again on
        the recomputed tensors, and non-strict mode keeps only the latest arrival, so nothing is
        counted twice. (With ``torch.utils.checkpoint`` as of torch 2.13 each block's gradient in fact
        arrives once in both modes — non-reentrant recomputed tensors are never back-propagated, and
        the reentrant first forward runs without grad — but other recomputation schemes may differ.)
    eps:
        Norms ``≤ eps`` count as zero when forming gains (see :meth:`gains`).

    Hooks are registered on construction and removed by :meth:`close` or on leaving the ``with``
    block (also on an exception). A closed monitor cannot be re-opened; build a new one.

    **Run the forward pass inside the monitor.** Gradients are caught by hooks that the blocks'
    forward passes attach to their outputs, so a loss computed *before* the monitor was built has
    no hooks, and its ``backward()`` measures nothing. Reading such a monitor (:meth:`norms`,
    :meth:`gains`, :meth:`log_gains`, :meth:`summary_stats` or :meth:`report` while no monitored
    block has run forward since construction) raises :class:`NoForwardPassError` rather than
    returning all ``None``. Code that may read a monitor whose forward never happened (the forward
    raised early, or a step was skipped) can test :attr:`saw_forward` first. Once a forward has run,
    blocks without a gradient are reported as ``None`` as usual, also after :meth:`reset`.

    Example
    -------
    >>> with GradientGainMonitor(model.blocks) as mon:   # doctest: +SKIP
    ...     loss_fn(model(x)).backward()
    ...     print(mon.report())
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module] | nn.ModuleList | nn.Sequential,
        norm_type: NormType = "l2",
        strict_single_backward: bool = True,
        eps: float = 1e-30,
    ) -> None:
        self._blocks = self._validate_blocks(blocks)
        if norm_type not in VALID_NORM_TYPES:
            raise ValueError(
                f"norm_type must be one of {', '.join(repr(v) for v in VALID_NORM_TYPES)}; got {norm_type!r}"
            )
        if not (isinstance(eps, (int, float)) and eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
        self.norm_type: NormType = norm_type
        self.strict_single_backward = bool(strict_single_backward)
        self.eps = float(eps)

        self._records: list[_BlockRecord | None] = [None] * len(self._blocks)
        self._next_call_id = 0
        self._saw_forward = False
        # Backward can run hooks on autograd's device threads while the training thread reads norms.
        self._lock = threading.Lock()
        # Tensor hooks live on the output tensors, which may outlive close() (a graph kept for a later
        # backward). They cannot all be tracked without holding handles for every forward ever run,
        # so each one checks this flag and does nothing once the monitor is closed.
        self._active = True
        self._handles: list[RemovableHandle] = [
            block.register_forward_hook(self._make_forward_hook(i)) for i, block in enumerate(self._blocks)
        ]

    # ------------------------------------------------------------------ set-up and hooks

    @staticmethod
    def _validate_blocks(blocks: Any) -> list[nn.Module]:
        if isinstance(blocks, nn.Module) and not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            raise ValueError(
                f"blocks must be a list, tuple, nn.ModuleList or nn.Sequential of blocks, not a single "
                f"{type(blocks).__name__}; pass the block container (e.g. generator.blocks)"
            )
        if not isinstance(blocks, (list, tuple, nn.ModuleList, nn.Sequential)):
            raise ValueError(
                f"blocks must be a list, tuple, nn.ModuleList or nn.Sequential; got {type(blocks).__name__}"
            )
        block_list = list(blocks)
        if not block_list:
            raise ValueError("blocks is empty; pass at least one nn.Module to monitor")
        for i, block in enumerate(block_list):
            if not isinstance(block, nn.Module):
                raise ValueError(f"blocks[{i}] is a {type(block).__name__}, not an nn.Module")
        seen: dict[int, int] = {}
        for i, block in enumerate(block_list):
            if id(block) in seen:
                raise ValueError(
                    f"blocks[{i}] is the same module object as blocks[{seen[id(block)]}]; each block must be "
                    "a separate nn.Module instance (a shared module's gradients cannot be told apart)"
                )
            seen[id(block)] = i
        return block_list

    def _make_forward_hook(self, block_idx: int) -> Callable[[nn.Module, Any, Any], None]:
        def forward_hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._active:
                return
            # Set before the grad check: a forward of a frozen block, or under no_grad, is a real
            # pass whose blocks legitimately have no gradient, not the ordering mistake.
            self._saw_forward = True
            leaves = [t for t in _tensor_leaves(output) if t.requires_grad and t.numel() > 0]
            if not leaves:
                return  # frozen block or no-grad forward: reported as missing
            with self._lock:
                call_id = self._next_call_id
                self._next_call_id += 1
            numel = sum(t.numel() for t in leaves)
            for leaf_idx, leaf in enumerate(leaves):
                leaf.register_hook(self._make_tensor_hook(block_idx, call_id, leaf_idx, numel))

        return forward_hook

    def _make_tensor_hook(self, block_idx: int, call_id: int, leaf_idx: int, numel: int) -> Callable[[Tensor], None]:
        def tensor_hook(grad: Tensor) -> None:
            if self._active:
                self._record(block_idx, call_id, leaf_idx, numel, grad)
            # Returning None leaves the gradient unchanged.

        return tensor_hook

    def _partial(self, grad: Tensor) -> Tensor:
        """Reduce one leaf's gradient to a 0-dim tensor on its device (no host sync)."""
        g = grad.detach()
        dtype = _reduction_dtype(g.dtype)
        if self.norm_type == "l2":
            return torch.linalg.vector_norm(g, 2, dtype=dtype)
        if self.norm_type == "linf":
            return torch.linalg.vector_norm(g, math.inf, dtype=dtype)
        return torch.linalg.vector_norm(g, 1, dtype=dtype)  # l1 and mean: sum |g|

    def _record(self, block_idx: int, call_id: int, leaf_idx: int, numel: int, grad: Tensor) -> None:
        partial = self._partial(grad)
        with self._lock:
            rec = self._records[block_idx]
            if rec is not None and rec.call_id == call_id and leaf_idx not in rec.partials:
                rec.partials[leaf_idx] = partial  # another tensor of the same output, same backward
                return
            if rec is not None and self.strict_single_backward:
                raise RepeatedBackwardError(
                    f"GradientGainMonitor: the gradient of block {block_idx} "
                    f"({type(self._blocks[block_idx]).__name__}) arrived a second time before reset(). "
                    "Call monitor.reset() after reading the gains of each backward pass; or, for gradient "
                    "accumulation, gradient checkpointing, or a block called twice in one forward, build "
                    "the monitor with strict_single_backward=False (the latest gradient then overwrites)."
                )
            self._records[block_idx] = _BlockRecord(call_id=call_id, numel=numel, partials={leaf_idx: partial})

    # ------------------------------------------------------------------ reading

    def _combined(self, rec: _BlockRecord) -> Tensor:
        parts = list(rec.partials.values())
        dtype = parts[0].dtype
        for p in parts[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        stacked = torch.stack([p.to(dtype) for p in parts])
        if self.norm_type == "l2":
            return torch.linalg.vector_norm(stacked, 2)
        if self.norm_type == "linf":
            return stacked.max()
        if self.norm_type == "l1":
            return stacked.sum()
        # Leaves whose gradient never arrived had zero gradient, so their elements still count.
        return stacked.sum() / rec.numel

    @property
    def saw_forward(self) -> bool:
        """True once any monitored block has run a forward pass while this monitor was attached."""
        return self._saw_forward

    def _require_forward(self) -> None:
        if not self._saw_forward:
            raise NoForwardPassError(
                "GradientGainMonitor: none of the monitored blocks ran a forward pass while the monitor was "
                "attached, so no gradient can have been measured (the gradient hooks are attached to the block "
                "outputs during forward; a loss computed before the monitor existed has none). Run the forward "
                "pass inside the monitor: create the monitor, then compute the loss, then call backward()."
            )

    def norms(self) -> list[float | None]:
        """‖∂L/∂h_i‖ for each block, in block order; ``None`` where no gradient arrived.

        "No gradient" means the block's output did not require grad (frozen block fed by a tensor
        that does not require grad, or a forward under ``torch.no_grad``) or did not reach the loss.
        This is where the device → host transfer happens: one ``tolist()`` for all blocks (per
        device). Raises :class:`NoForwardPassError` if no monitored block has run forward yet.
        """
        self._require_forward()
        with self._lock:
            records = list(self._records)
        values: list[float | None] = [None] * len(records)
        # Stacking needs one device; a model split over devices gets one transfer per device.
        by_device: dict[torch.device, list[tuple[int, Tensor]]] = {}
        for i, rec in enumerate(records):
            if rec is not None:
                norm = self._combined(rec)
                by_device.setdefault(norm.device, []).append((i, norm))
        for entries in by_device.values():
            dtype = entries[0][1].dtype
            for _, norm in entries[1:]:
                dtype = torch.promote_types(dtype, norm.dtype)
            # Promotion only widens (float32 → float64), so every value converts exactly as .item() would.
            floats = torch.stack([norm.to(dtype) for _, norm in entries]).tolist()
            for (i, _), value in zip(entries, floats):
                values[i] = value
        return values

    def gains(self) -> list[float | None]:
        """Backward gains, length ``n − 1``: entry ``i − 1`` is γ_i = ‖∂L/∂h_{i−1}‖ / ‖∂L/∂h_i‖.

        Special values, exactly (see :func:`gain_ratio`):

        * ``None`` — either norm is missing (no gradient), or both norms are ``≤ eps`` (0/0: the
          ratio is undefined). Counted by ``num_missing``.
        * ``math.inf`` — the denominator is ``≤ eps`` and the numerator ``> eps``. Counted by
          ``num_vanishing`` (the seed's name: the gradient has vanished at block ``i``).
        * ``math.nan`` — either norm is itself inf or nan (a blown-up backward). Counted by none of
          the summary counts.
        * otherwise the plain ratio, which is 0.0 when the numerator is exactly zero.
        """
        return chain_gains(self.norms(), self.eps)

    def log_gains(self) -> list[float | None]:
        """Natural log of each gain, computed as log(numerator norm) − log(denominator norm).

        Subtracting logs keeps gains that underflow to 0.0 finite in log space. ``None``, ``inf``
        and ``nan`` follow :meth:`gains` (``inf`` → ``+inf``, also for a ratio that overflows); a
        numerator of exactly 0 gives ``-inf``.
        """
        return chain_log_gains(self.norms(), self.eps)

    def summary_stats(self) -> dict[str, float | int | None]:
        """Summary of :meth:`gains` (the seed's keys, exactly); the rules are :func:`summarize_gains`'."""
        norms = self.norms()
        return summarize_gains(chain_gains(norms, self.eps), chain_log_gains(norms, self.eps))

    def report(self) -> str:
        """Human-readable report: norms, gains with log-gain and heuristic label, summary."""
        norms = self.norms()
        gains = chain_gains(norms, self.eps)
        logs = chain_log_gains(norms, self.eps)
        stats = summarize_gains(gains, logs)
        lines = [f"Gradient gain report ({len(norms)} blocks, norm_type={self.norm_type!r})", "", "Gradient norms:"]
        for i, n in enumerate(norms):
            lines.append(f"  Block {i:2d}: " + ("no gradient" if n is None else f"{n:.4e}"))
        lines += [
            "",
            "Gradient gains (backward: gamma_i = norm[i-1] / norm[i]; labels use heuristic thresholds "
            f"{DAMPING_THRESHOLD} and {AMPLIFYING_THRESHOLD}):",
        ]
        if not gains:
            lines.append("  (one block: no transitions)")
        for i, (g, lg) in enumerate(zip(gains, logs), start=1):
            head = f"  Transition {i - 1:2d} to {i:2d}: "
            label = gain_label(g)
            if label == "missing":
                lines.append(head + "gamma=None [missing: no gradient, or both norms <= eps]")
            elif label == "nonfinite":
                lines.append(head + "gamma=nan [NON-FINITE norm]")
            elif label == "vanishing":
                lines.append(head + f"gamma=inf [VANISHING: norm[{i}] <= eps]")
            else:
                lines.append(head + f"gamma={g:.4f}, log_gamma={lg:.4f} {_REPORT_TAGS[label]}")

        def fmt(v: float | int | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        lines += [
            "",
            "Summary statistics (over finite gains; thresholds are heuristic):",
            f"  Mean gain: {fmt(stats['mean_gain'])}",
            f"  Min gain: {fmt(stats['min_gain'])}",
            f"  Max gain: {fmt(stats['max_gain'])}",
            f"  Mean log-gain: {fmt(stats['mean_log_gain'])}",
            f"  Amplifying (gamma > {AMPLIFYING_THRESHOLD}): {stats['num_amplifying']}",
            f"  Damping (gamma < {DAMPING_THRESHOLD}): {stats['num_damping']}",
            f"  Healthy ({DAMPING_THRESHOLD} <= gamma <= {AMPLIFYING_THRESHOLD}): {stats['num_healthy']}",
            f"  Vanishing (gamma = inf): {stats['num_vanishing']}",
            f"  Missing (no gradient): {stats['num_missing']}",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ life cycle

    def reset(self) -> None:
        """Forget all measured gradients, ready for the next backward pass."""
        with self._lock:
            self._records = [None] * len(self._blocks)

    def close(self) -> None:
        """Remove the forward hooks and disarm pending tensor hooks. Safe to call twice."""
        self._active = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> GradientGainMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._blocks)

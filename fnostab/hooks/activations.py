"""Forward activation statistics of a generator's lifter, residual blocks and their branches.

The question it answers (docs/probes.md): before a run blows up or collapses, do activations
grow with depth, does the spectral branch drown the local one, do the GELUs go dead, does the
representation lose its high frequencies? A forward hook on each selected module reduces its output
to running sums on the output's device; :meth:`ActivationMonitor.report` turns them into numbers.

Modules are chosen by type, never by name: ``SpatialLifter`` (the lifter), ``PtychoBlock`` and
``StablePtychoBlock`` (the residual blocks), and inside each block its ``SpectralConv2d`` child (the
spectral branch), its 3×3 ``nn.Conv2d`` child (the local branch) and its ``nn.GELU`` modules. Names
come from ``model.named_modules()`` only so that the report reads ``blocks.0.spectral``.

Statistics, per hooked module, pooled over every forward call (batch) since the last reset:

* ``mean_abs``, ``std_abs``: mean and standard deviation (unbiased, n − 1) of |x| over all elements,
  combined across batches exactly (Chan et al. pairwise update, float64).
* ``p50_abs``, ``p95_abs``, ``p99_abs``: quantiles of |x| (``torch.quantile``, linear
  interpolation). Exact while at most ``quantile_sample_size`` (default 2^20) elements have been seen;
  beyond that, quantiles of a uniform random sample of that many elements drawn without replacement
  from everything seen (fixed seed, priority sampling: each element gets a random key and the smallest
  keys are kept). ``quantiles_exact`` says which. The cap exists because ``torch.quantile`` refuses
  inputs above 2^24 elements and because the sample lives on the device.
* ``low_freq_ratio``: fraction of the spectral energy of each (H, W) map in the low band, pooled over
  batch, channels and batches: Σ_low |X|² / Σ_all |X|² with X = fft2(x, norm="ortho"). The low band is
  |k_y| < max(1, H // 8) and |k_x| < max(1, W // 8) in signed integer frequencies (cycles per map),
  i.e. below 1/8 cycle per pixel on both axes, *negative frequencies included*. It is computed on the
  rfft2 half-spectrum with the mirrored columns counted twice, so it equals the full-spectrum value,
  a constant or single low-frequency wave gives 1.0 and a checkerboard gives 0.0. (The seed script
  took ``power[:H/8, :W/8].mean() / power.mean()``: positive rows only, so it was not flip-invariant,
  and a ratio of means, so not bounded by 1.) ``None`` for outputs that are not 4-D (B, C, H, W).
* ``sparsity``: fraction of elements ≤ 0, for activation (GELU) modules only.
* ``n_nonfinite``: count of nan/inf elements (the blow-up signal itself).
* ``branch_ratio`` (block records): mean|spectral| / mean|local| of that block's two branches.

Summary: ``n_batches`` and ``n_samples`` (forward calls of the root model and the leading size of its
first tensor argument), and the depth trend of the block outputs: the least-squares slope of
``mean_abs`` against the block depth index, that slope divided by the mean of the block
``mean_abs`` values, and ``drift = |relative slope| > drift_threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fnostab.models.blocks import PtychoBlock, SpatialLifter, StablePtychoBlock
from fnostab.models.spectral import SpectralConv2d

Kind = Literal["lifter", "block", "spectral", "local", "activation"]

#: Default bound on the number of |x| values kept per module for quantiles (4 MiB of float32 values
#: plus 4 MiB of keys). torch.quantile accepts at most 2^24 elements.
QUANTILE_SAMPLE_SIZE = 2**20

#: The low band is |k| < side // LOW_BAND_DIVISOR per axis (the seed's H/8, W/8).
LOW_BAND_DIVISOR = 8

#: Default drift threshold on |relative depth slope| of block-output mean |x|: a fitted change of more
#: than half the average block level per block. Heuristic. Measured at initialisation (N=64, width 32,
#: modes 12, seeds 0–2, uniform input): fno with 4 and 8 blocks +0.05 … +0.11; hybrid (4 levels)
#: −0.15 … −0.19 (the strided downsampling shrinks |x| level by level); stable_hybrid with LayerScale
#: −0.21 … −0.26. A chain that doubles its activations at each of 4 blocks gives +0.61.
DRIFT_THRESHOLD = 0.5


def _in_backward() -> bool:
    """True while autograd runs a backward pass on this thread.

    A forward hook that fires then is a gradient-checkpointing recomputation of a batch already
    counted, so it must not be counted again. ``_current_graph_task_id`` is private API; if a future
    torch drops it, recomputations would be counted twice rather than anything failing.
    """
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        for item in output.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def low_band_energy(x: Tensor) -> tuple[Tensor, Tensor]:
    """(energy in the low band, total energy) of the (H, W) maps of ``x`` (…, H, W), as float64 sums.

    See the module docstring for the band. For real ``x`` the rfft2 half-spectrum is used and every
    column whose mirror image is not stored (0 < k_x < W/2) is weighted 2, which makes the total equal
    Σ|x|² (Parseval with ``norm="ortho"``).
    """
    H, W = x.shape[-2], x.shape[-1]
    h_lo, w_lo = max(1, H // LOW_BAND_DIVISOR), max(1, W // LOW_BAND_DIVISOR)
    rows = (torch.fft.fftfreq(H, device=x.device) * H).round().abs() < h_lo
    if x.is_complex():
        power = torch.fft.fft2(x, norm="ortho").abs().square()
        cols = (torch.fft.fftfreq(W, device=x.device) * W).round().abs() < w_lo
        col_weight = torch.ones(W, device=x.device)
    else:
        # FFTs need float32/64; half precision (autocast outputs) is upcast.
        real = x if x.dtype in (torch.float32, torch.float64) else x.float()
        power = torch.fft.rfft2(real, norm="ortho").abs().square()
        k = torch.arange(W // 2 + 1, device=x.device)
        cols = k < w_lo
        mirrored = (k > 0) & (2 * k != W)  # columns standing for both +k and −k
        col_weight = torch.where(mirrored, 2.0, 1.0)
    per_cell = power.sum(dim=tuple(range(power.ndim - 2)), dtype=torch.float64) * col_weight
    low = (per_cell * (rows[:, None] & cols[None, :])).sum()  # a mask product: indexing would sync
    return low, per_cell.sum()


@dataclass
class _Accumulator:
    """Running statistics of one module's output; every tensor stays on the output's device."""

    count: int = 0  # elements seen
    n_calls: int = 0
    mean: Tensor | None = None  # float64, mean |x|
    m2: Tensor | None = None  # float64, Σ (|x| − mean)²
    n_nonfinite: Tensor | None = None
    n_nonpositive: Tensor | None = None
    low_energy: Tensor | None = None
    total_energy: Tensor | None = None
    sample: Tensor | None = None  # float32 |x| values kept for quantiles
    keys: Tensor | None = None  # their random priorities
    generator: torch.Generator | None = None


def _add(acc: Tensor | None, value: Tensor) -> Tensor:
    return value if acc is None else acc + value.to(acc.device)


@dataclass
class _Hooked:
    name: str
    kind: Kind
    module: nn.Module
    depth: int | None  # block index (its own for blocks, its parent's for branches); None for the lifter
    acc: _Accumulator


class ActivationMonitor:
    """Forward-hook probe of activation statistics on a fnostab generator (see the module docstring).

    Parameters
    ----------
    model:
        The generator (or any module containing modules of the types below). The forward calls of
        ``model`` itself are counted as batches.
    lifter_types, block_types, spectral_types, activation_types:
        Which module types are the lifter, the residual blocks, the spectral branch (a direct child of
        a block) and the activations (anywhere inside a block). The local branch is the direct child
        of a block that is an ``nn.Conv2d`` with a 3×3 kernel. Override the types to probe other
        models; the defaults fit :func:`fnostab.models.build_generator`.
    quantile_sample_size:
        At most this many |x| values are kept per module for the quantiles (≤ 2^24).
    drift_threshold:
        ``drift`` is flagged when |relative depth slope| exceeds it (heuristic, default 0.5; see
        :data:`DRIFT_THRESHOLD` for the values measured at initialisation).
    seed:
        Seed of the quantile sampling, so a report is reproducible.

    Raises ``ValueError`` when ``model`` contains no module of a lifter or block type. Use as a context
    manager, or call :meth:`close`: hooks are removed on exit, also on an exception.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lifter_types: Sequence[type[nn.Module]] = (SpatialLifter,),
        block_types: Sequence[type[nn.Module]] = (PtychoBlock, StablePtychoBlock),
        spectral_types: Sequence[type[nn.Module]] = (SpectralConv2d,),
        activation_types: Sequence[type[nn.Module]] = (nn.GELU,),
        quantile_sample_size: int = QUANTILE_SAMPLE_SIZE,
        drift_threshold: float = DRIFT_THRESHOLD,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not 1 <= quantile_sample_size <= 2**24:
            raise ValueError(
                f"quantile_sample_size must be in [1, 2^24] (torch.quantile's limit), got {quantile_sample_size}"
            )
        if not drift_threshold > 0:
            raise ValueError(f"drift_threshold must be > 0, got {drift_threshold}")
        self.quantile_sample_size = int(quantile_sample_size)
        self.drift_threshold = float(drift_threshold)
        self.seed = int(seed)
        self._hooked = self._select(
            model, tuple(lifter_types), tuple(block_types), tuple(spectral_types), tuple(activation_types)
        )
        self._n_batches = 0
        self._n_samples = 0
        self._active = True
        self._handles: list[RemovableHandle] = [model.register_forward_hook(self._count_batch, with_kwargs=True)]
        for index, entry in enumerate(self._hooked):
            self._handles.append(entry.module.register_forward_hook(self._make_hook(index)))

    # ------------------------------------------------------------------ selection

    @staticmethod
    def _select(
        model: nn.Module,
        lifter_types: tuple[type[nn.Module], ...],
        block_types: tuple[type[nn.Module], ...],
        spectral_types: tuple[type[nn.Module], ...],
        activation_types: tuple[type[nn.Module], ...],
    ) -> list[_Hooked]:
        names = {id(m): (name or type(m).__name__) for name, m in model.named_modules()}
        lifters = [m for _, m in model.named_modules() if isinstance(m, lifter_types)] if lifter_types else []
        blocks = [m for _, m in model.named_modules() if isinstance(m, block_types)] if block_types else []
        if not lifters and not blocks:
            wanted = ", ".join(t.__name__ for t in (*lifter_types, *block_types))
            raise ValueError(
                f"{type(model).__name__} contains no module of type {wanted}; pass lifter_types= / block_types= "
                "naming the modules to probe"
            )
        # Depth = position in model.blocks when the model declares its forward order there (every
        # fnostab generator does), else the order of appearance.
        declared = getattr(model, "blocks", None)
        order = [id(b) for b in declared] if isinstance(declared, (nn.ModuleList, nn.Sequential)) else []
        if sorted(order) != sorted(id(b) for b in blocks):
            order = [id(b) for b in blocks]
        blocks.sort(key=lambda b: order.index(id(b)))

        def entry(module: nn.Module, kind: Kind, depth: int | None) -> _Hooked:
            return _Hooked(names[id(module)], kind, module, depth, _Accumulator())

        hooked = [entry(m, "lifter", None) for m in lifters]
        for depth, block in enumerate(blocks):
            hooked.append(entry(block, "block", depth))
            for child in block.children():
                if isinstance(child, spectral_types):
                    hooked.append(entry(child, "spectral", depth))
                elif isinstance(child, nn.Conv2d) and tuple(child.kernel_size) == (3, 3):
                    hooked.append(entry(child, "local", depth))
            for sub in block.modules():
                if sub is not block and isinstance(sub, activation_types):
                    hooked.append(entry(sub, "activation", depth))
        return hooked

    # ------------------------------------------------------------------ hooks

    def _count_batch(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if not self._active or _in_backward():
            return
        self._n_batches += 1
        first = _first_tensor(args) if args else None
        if first is None:
            first = _first_tensor(kwargs)
        if first is not None and first.ndim > 0:
            self._n_samples += int(first.shape[0])

    def _make_hook(self, index: int) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._active or _in_backward():
                return
            x = _first_tensor(output)
            if x is None or x.numel() == 0:
                return
            with torch.no_grad():
                self._update(index, x.detach())

        return hook

    def _update(self, index: int, x: Tensor) -> None:
        """Fold one output into module ``index``'s running statistics. Device ops only: no host sync."""
        entry = self._hooked[index]
        acc = entry.acc
        a = x.abs()  # real for complex x too
        n_b = a.numel()
        var_b, mean_b = torch.var_mean(a.double(), correction=0)
        m2_b = var_b * n_b
        if acc.mean is None or acc.m2 is None:
            acc.mean, acc.m2 = mean_b, m2_b
        else:
            # Chan, Golub & LeVeque (1979): exact merge of (count, mean, M2) of two disjoint sets.
            mean_b, m2_b = mean_b.to(acc.mean.device), m2_b.to(acc.mean.device)
            n = acc.count + n_b
            delta = mean_b - acc.mean
            acc.mean = acc.mean + delta * (n_b / n)
            acc.m2 = acc.m2 + m2_b + delta.square() * (acc.count * n_b / n)
        acc.count += n_b
        acc.n_calls += 1
        acc.n_nonfinite = _add(acc.n_nonfinite, (~torch.isfinite(x)).sum())
        if entry.kind == "activation" and not x.is_complex():
            acc.n_nonpositive = _add(acc.n_nonpositive, (x <= 0).sum())
        if x.ndim == 4:
            low, total = low_band_energy(x)
            acc.low_energy = _add(acc.low_energy, low)
            acc.total_energy = _add(acc.total_energy, total)
        self._sample(index, a.reshape(-1).float())

    def _sample(self, index: int, values: Tensor) -> None:
        """Keep a uniform random subset of at most ``quantile_sample_size`` of all values seen.

        Priority sampling: every value gets a uniform key and the values with the smallest keys are
        kept, so the kept set is a uniform sample without replacement of everything seen so far, and
        while fewer values than the cap have been seen it is all of them.
        """
        acc = self._hooked[index].acc
        if acc.generator is None:
            acc.generator = torch.Generator(device=values.device)
            acc.generator.manual_seed(self.seed + index)  # one stream per module, reproducible
        if acc.sample is not None and acc.sample.device != values.device:
            values = values.to(acc.sample.device)  # model moved between batches: keep one device
        keys = torch.rand(values.numel(), generator=acc.generator, device=acc.generator.device).to(values.device)
        if acc.sample is not None and acc.keys is not None:
            values = torch.cat([acc.sample, values])
            keys = torch.cat([acc.keys, keys])
        if values.numel() > self.quantile_sample_size:
            keep = torch.topk(keys, self.quantile_sample_size, largest=False, sorted=False).indices
            values, keys = values[keep], keys[keep]
        acc.sample, acc.keys = values, keys

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _float(t: Tensor | None) -> float | None:
        return None if t is None else float(t.item())

    def _layer_stats(self, entry: _Hooked) -> dict[str, Any]:
        acc = entry.acc
        record: dict[str, Any] = {
            "kind": entry.kind,
            "type": type(entry.module).__name__,
            "depth": entry.depth,
            "n_calls": acc.n_calls,
            "numel": acc.count,
        }
        if acc.count == 0 or acc.mean is None or acc.m2 is None or acc.sample is None:
            keys = ("mean_abs", "std_abs", "p50_abs", "p95_abs", "p99_abs", "low_freq_ratio", "n_nonfinite")
            record.update(dict.fromkeys(keys), quantiles_exact=None)
        else:
            q = torch.quantile(acc.sample, torch.tensor([0.5, 0.95, 0.99], device=acc.sample.device))
            p50, p95, p99 = (float(v) for v in q.tolist())
            std = math.sqrt(float(acc.m2.item()) / (acc.count - 1)) if acc.count > 1 else math.nan
            low, total = self._float(acc.low_energy), self._float(acc.total_energy)
            record.update(
                mean_abs=float(acc.mean.item()),
                std_abs=std,
                p50_abs=p50,
                p95_abs=p95,
                p99_abs=p99,
                quantiles_exact=acc.count <= self.quantile_sample_size,
                low_freq_ratio=None if low is None or total is None else (low / total if total > 0 else math.nan),
                n_nonfinite=int(acc.n_nonfinite.item()) if acc.n_nonfinite is not None else 0,
            )
        if entry.kind == "activation":
            nonpos = self._float(acc.n_nonpositive)
            record["sparsity"] = None if nonpos is None or acc.count == 0 else nonpos / acc.count
        return record

    def report(self) -> dict[str, Any]:
        """``{"layers": {name: stats}, "summary": {...}}``, plain Python values (JSON-serialisable).

        ``layers[name]``: ``kind`` ('lifter' | 'block' | 'spectral' | 'local' | 'activation'),
        ``type`` (class name), ``depth`` (block index; None for the lifter), ``n_calls``, ``numel``,
        ``mean_abs``, ``std_abs``, ``p50_abs``, ``p95_abs``, ``p99_abs``, ``quantiles_exact``,
        ``low_freq_ratio``, ``n_nonfinite``; plus ``sparsity`` for activations and ``branch_ratio``
        for blocks. Statistics are None for a module that has not run.

        ``summary``: ``n_batches``, ``n_samples``, ``n_blocks``, ``block_mean_abs`` (list by depth),
        ``depth_slope`` (least-squares slope of block ``mean_abs`` per depth step), ``depth_relative_slope``
        (slope / mean of ``block_mean_abs``), ``drift_threshold`` and ``drift`` (bool). Slopes are None
        with fewer than two blocks measured.
        """
        layers = {entry.name: self._layer_stats(entry) for entry in self._hooked}
        by_depth: dict[int, dict[str, str]] = {}
        for entry in self._hooked:
            if entry.depth is not None and entry.kind in ("block", "spectral", "local"):
                by_depth.setdefault(entry.depth, {}).setdefault(entry.kind, entry.name)
        for names in by_depth.values():
            if "block" not in names:
                continue
            spectral = layers[names["spectral"]]["mean_abs"] if "spectral" in names else None
            local = layers[names["local"]]["mean_abs"] if "local" in names else None
            ratio = None
            if spectral is not None and local is not None:
                ratio = spectral / local if local > 0 else math.inf if spectral > 0 else math.nan
            layers[names["block"]]["branch_ratio"] = ratio

        points = [
            (layers[e.name]["depth"], layers[e.name]["mean_abs"])
            for e in self._hooked
            if e.kind == "block" and layers[e.name]["mean_abs"] is not None
        ]
        slope = relative = None
        if len(points) >= 2:
            xs = [float(d) for d, _ in points]
            ys = [float(y) for _, y in points]
            x_bar, y_bar = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - x_bar) * (y - y_bar) for x, y in zip(xs, ys)) / sum((x - x_bar) ** 2 for x in xs)
            relative = slope / y_bar if y_bar != 0 else (math.inf if slope else 0.0)
        summary = {
            "n_batches": self._n_batches,
            "n_samples": self._n_samples,
            "n_blocks": sum(1 for e in self._hooked if e.kind == "block"),
            "block_mean_abs": [y for _, y in points],
            "depth_slope": slope,
            "depth_relative_slope": relative,
            "drift_threshold": self.drift_threshold,
            # nan (a blown-up block) compares False, so check it explicitly: non-finite is drift.
            "drift": relative is not None and not (abs(relative) <= self.drift_threshold),
        }
        return {"layers": layers, "summary": summary}

    @property
    def names(self) -> list[str]:
        """Names of the hooked modules, in hook order (lifter, then each block and its branches)."""
        return [entry.name for entry in self._hooked]

    # ------------------------------------------------------------------ life cycle

    def reset(self) -> None:
        """Forget every statistic and the batch counts; hooks stay in place."""
        for entry in self._hooked:
            entry.acc = _Accumulator()
        self._n_batches = 0
        self._n_samples = 0

    def close(self) -> None:
        """Remove every hook. Safe to call twice; statistics stay readable."""
        self._active = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> ActivationMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

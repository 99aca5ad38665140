"""Parameters and training memory of a generator, computed without allocating it.

The model is built on PyTorch's ``meta`` device (shapes and dtypes, no storage), so planning the
4.4-billion-parameter 8-level ``hybrid`` of the Stage-B OOM (docs/generators.md, Parameter counts)
takes about a second and no memory. Activation memory is measured, not estimated: one training step
(forward, a scalar loss, backward) runs on the meta model while an allocation tracker records every
storage an op creates and the moment autograd frees it.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode  # the supported hook for observing every op

from fnostab.config import ModelConfig
from fnostab.errors import ConfigError
from fnostab.models.registry import GENERATORS, geometry_error, model_config

OPTIMIZERS = ("adam", "adamw", "sgd")


def optimizer_buffers(optimizer: str, *, weight_decay: float = 0.0, momentum: float = 0.9) -> tuple[int, int]:
    """(state, step temporaries): weight-sized buffers an optimizer keeps per parameter, and those
    its foreach ``step()`` allocates on top of the gradients (torch 2.x).

    Adam and AdamW keep exp_avg and exp_avg_sq and allocate sqrt(exp_avg_sq); Adam's L2 weight
    decay allocates grad + wd·param (AdamW decays the weights in place). SGD keeps a momentum
    buffer only when momentum > 0, updates in place (Nesterov too), and allocates grad + wd·param
    with weight decay.
    """
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    decays = weight_decay > 0
    if optimizer == "adam":
        return 2, 1 + decays
    if optimizer == "adamw":
        return 2, 1
    return int(momentum > 0), int(decays)


@dataclass(frozen=True)
class StepMemory:
    """Memory of one training step's forward and backward pass, in bytes (see :func:`measure_step`)."""

    saved: int  # alive at the end of the forward pass: what autograd keeps for backward, and the output
    activation_peak: int  # peak over forward + backward of everything except parameters and gradients
    peak: int  # peak of the same plus the gradients, which appear one by one during backward
    grads: int  # the gradients alive after backward


@dataclass(frozen=True)
class ModelPlan:
    """Parameters and memory of one training step of a generator (all sizes in bytes).

    * ``params`` counts a complex entry once (what ``numel`` gives, and what the PtychoPINN documents
      report); ``params_real`` counts it twice; ``complex_params`` is the number of complex entries.
    * ``weight_bytes``: the real dtypes, complex64 8 B and float32 4 B. ``grad_bytes`` is the same;
      ``optimizer_bytes`` holds the state buffers of :func:`optimizer_buffers`.
    * ``activation_bytes``: the peak, over forward and backward of one step at ``batch_size`` N×N
      inputs, of every tensor other than parameters and gradients, measured on the meta device (with
      checkpointing when ``gradient_checkpointing``: the recomputation in backward is measured too).
      It splits into ``saved_bytes``, what autograd holds between forward and backward, and
      ``transient_bytes``, the allowance for the transient peak above that: intermediates of an op in
      flight and the gradients of activations during backward, measured as the rest of the peak.
      Generator only, float32 (no autocast); the physics loss adds its own. Backend workspaces (cuDNN,
      cuFFT) and allocator fragmentation are not included.
    * ``total_bytes``: weights + optimizer state + the larger of the two phases of a step: forward and
      backward (activations and the gradients as they appear, the measured joint peak, as with
      ``zero_grad(set_to_none=True)``), and the optimizer step (all gradients plus
      step temporaries of :func:`optimizer_buffers`). It is at most
      weight + grad + optimizer + activation + the step temporaries.
    * ``geometry_error``: why the architecture cannot run at N, or None. Then the activation figures
      are 0 and ``total_bytes`` covers the optimizer step only; the parameter figures stand, as the
      weights do not depend on N.
    """

    name: str
    N: int
    batch_size: int
    optimizer: str
    gradient_checkpointing: bool
    params: int
    params_real: int
    complex_params: int
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    total_bytes: int
    geometry_error: str | None
    saved_bytes: int = 0
    transient_bytes: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


def plan(
    config: ModelConfig | str,
    *,
    batch_size: int,
    N: int,
    channels: int = 1,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    **options: Any,
) -> ModelPlan:
    """Plan generator ``config`` (as :func:`~fnostab.models.build_generator` takes it: a ModelConfig, or
    a name with ModelConfig fields as ``options``) without allocating it: parameter counts and the
    memory of one training step at ``batch_size`` samples of C = ``channels`` N×N patterns.

    Raises:
        ConfigError: an invalid option, batch size or optimizer. A geometry that does not fit N is
            not an error here: the plan carries it in ``geometry_error`` (so a depth sweep can record
            the configuration as infeasible with its parameter counts).
    """
    config = model_config(config, options)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer ≥ 1, found {batch_size!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"channels must be an integer ≥ 1, found {channels!r}")
    states, temporaries = optimizer_buffers(optimizer, weight_decay=weight_decay, momentum=momentum)
    problem = geometry_error(config, N)

    with torch.device("meta"):
        model = GENERATORS[config.arch](config, in_channels=channels, out_channels=channels)
    params = sum(p.numel() for p in model.parameters())
    complex_params = sum(p.numel() for p in model.parameters() if p.is_complex())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = weight_bytes
    optimizer_bytes = states * weight_bytes
    step_phase = grad_bytes + temporaries * weight_bytes

    memory = StepMemory(0, 0, 0, 0)
    if problem is None:
        memory = measure_step(model, torch.empty(batch_size, channels, N, N, device="meta"))
    return ModelPlan(
        name=config.arch,
        N=N,
        batch_size=batch_size,
        optimizer=optimizer,
        gradient_checkpointing=config.checkpointing,
        params=params,
        params_real=params + complex_params,
        complex_params=complex_params,
        weight_bytes=weight_bytes,
        grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_bytes,
        activation_bytes=memory.activation_peak,
        total_bytes=weight_bytes + optimizer_bytes + max(memory.peak, step_phase),
        geometry_error=problem,
        saved_bytes=memory.saved,
        transient_bytes=memory.activation_peak - memory.saved,
        options=plan_options(config, channels),
    )


def plan_options(config: ModelConfig, channels: int) -> dict[str, Any]:
    """The ``options`` a plan records: every model option but the name, then the channels and checkpointing
    (spelt as in plans written before generators took a ModelConfig, so plan files keep their content)."""
    fields = config.model_dump(mode="json", exclude={"arch", "checkpointing"})
    return {**fields, "in_channels": channels, "out_channels": channels, "gradient_checkpointing": config.checkpointing}


def measure_step(model: nn.Module, x: Tensor) -> StepMemory:
    """Run one training-mode forward and backward pass of ``model`` on ``x`` and measure its memory.

    Works on any device; on ``meta`` it allocates nothing, and the figures equal those of the same step
    on CPU tensors (``tests/test_models_plan.py``). The loss is Σ|model(x)|², a stand-in whose own
    memory is a few scalars. Parameters, buffers and ``x`` exist before the step and are not counted.
    Parameter gradients are separated from activations by identity: the storages still held in
    ``.grad`` after backward. Gradients must start as None (a fresh model, or after
    ``zero_grad(set_to_none=True)``).
    """
    if any(p.grad is not None for p in model.parameters()):
        raise ValueError("measure_step needs a model whose gradients are None: call zero_grad(set_to_none=True)")
    tracker = _AllocationTracker([*model.parameters(), *model.buffers(), x])
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad(), tracker:
            out = model(x)
            n_forward = len(tracker.events)
            loss = (torch.view_as_real(out) if out.is_complex() else out).square().sum()
            loss.backward()
            del out, loss
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_allocations = {tracker.allocation(g) for g in grads}
        grad_bytes = sum(g.untyped_storage().nbytes() for g in grads)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)

    saved = activations = activation_peak = both = peak = 0
    for i, (allocation, delta) in enumerate(tracker.events):
        both += delta
        peak = max(peak, both)
        if allocation not in grad_allocations:
            activations += delta
            activation_peak = max(activation_peak, activations)
        if i + 1 == n_forward:
            saved = activations
    return StepMemory(saved=saved, activation_peak=activation_peak, peak=peak, grads=grad_bytes)


def _storage_key(t: Tensor) -> int:
    # Views share one storage: key on the StorageImpl so each buffer is counted once. Unique among the
    # storages alive at one time, which is all the tracker compares.
    return t.untyped_storage()._cdata


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


class _AllocationTracker(TorchDispatchMode):
    """Records each new storage an op returns and when it is freed, as (allocation id, ±bytes) events.

    A storage is "new" when no tensor seen so far holds it; views of a known storage are not counted
    again. The free is observed with a weakref finalizer on the storage: PyTorch keeps a storage's
    Python object alive as long as the storage itself, so it fires exactly when autograd (or anything
    else) drops the last reference.
    """

    def __init__(self, preexisting: Iterable[Tensor]) -> None:
        super().__init__()
        self._preexisting = {_storage_key(t) for t in preexisting}
        self._live: dict[int, tuple[int, int]] = {}  # storage key -> (allocation id, bytes)
        self._ids = itertools.count()
        self.events: list[tuple[int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self._live and key not in self._preexisting:
                allocation, nbytes = next(self._ids), storage.nbytes()
                self._live[key] = (allocation, nbytes)
                self.events.append((allocation, nbytes))
                weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        allocation, nbytes = self._live.pop(key)
        self.events.append((allocation, -nbytes))

    def allocation(self, t: Tensor) -> int | None:
        """The allocation id of the live storage under ``t``, or None if it was not created here."""
        entry = self._live.get(_storage_key(t))
        return entry[0] if entry else None

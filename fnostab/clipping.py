"""Gradient clipping that works on complex spectral weights and never syncs with the host.

One entry point, :func:`clip_gradients_`, applies a :class:`ClipSpec` written on the command line as
``ALGO[:VALUE]``:

``none``
    Nothing is clipped.
``norm:v`` (default v = 1.0)
    One global L2 norm over every gradient, a complex entry counting |z|²; all gradients are scaled
    by ``min(v / (norm + 1e-6), 1)``, the coefficient of ``torch.nn.utils.clip_grad_norm_``.
``value:v`` (default v = 1.0)
    Every entry clamped to [-v, v]. Complex entries have their real and imaginary parts clamped
    separately: ``torch.nn.utils.clip_grad_value_`` raises on complex tensors because PyTorch
    disabled complex ``clamp`` (pytorch/pytorch#36373).
``agc:λ`` (default λ = 0.01)
    Unit-wise Adaptive Gradient Clipping, Brock, De, Smith and Simonyan, "High-Performance
    Large-Scale Image Recognition Without Normalization", ICML 2021, arXiv:2102.06171, Sec. 4 and
    Algorithm 2, with the semantics of DeepMind's ``nfnets/optim.py``: for each unit i, if
    ‖G_i‖ > λ·max(‖W_i‖, 1e-3) then G_i ← λ·max(‖W_i‖, 1e-3)·G_i / max(‖G_i‖, 1e-6). A unit is
    one output channel (see :func:`agc_output_dim`); the final ``head`` is not clipped, as the
    paper recommends.
``agc_tensor:λ`` (default λ = 0.01)
    The same rule with the whole tensor as the unit and nothing excluded: what PtychoPINN's
    ``adaptive_gradient_clip_`` actually does, kept for parity with its runs.

λ = 0.01 is the NFNet value (batch 4096) and the one PtychoPINN's Stage A used; the paper says the
best λ depends on optimiser, learning rate and batch size, so treat it as a hyperparameter.

Norms stay on the gradients' device as 0-d tensors: there is no ``.item()`` here, so a trainer can
log them every N steps and pay one host sync then, not one per parameter per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from fnostab.errors import InputError

__all__ = [
    "AGC_GRAD_FLOOR",
    "AGC_WEIGHT_EPS",
    "CLIP_ALGOS",
    "DEFAULT_CLIP_VALUES",
    "NORM_CLIP_EPS",
    "ClipAlgo",
    "ClipSpec",
    "agc_output_dim",
    "clip_gradients_",
    "grad_norm",
    "parse_clip_spec",
    "unit_norms",
]

ClipAlgo = Literal["none", "norm", "value", "agc", "agc_tensor"]
CLIP_ALGOS: tuple[str, ...] = get_args(ClipAlgo)

DEFAULT_CLIP_VALUES: dict[str, float] = {"norm": 1.0, "value": 1.0, "agc": 0.01, "agc_tensor": 0.01}
"""The VALUE used when a spec gives only ALGO."""

AGC_WEIGHT_EPS = 1e-3
"""Floor on ‖W_i‖ (the paper's ε): a zero-initialised unit may still move, by at most λ·1e-3."""

AGC_GRAD_FLOOR = 1e-6
"""Floor on ‖G_i‖ in the division (DeepMind's code); only guards the branch that is not taken."""

NORM_CLIP_EPS = 1e-6
"""Added to the global norm in the ``norm`` coefficient, as ``clip_grad_norm_`` does."""

VALID_CLIP_FORMS = (
    "none | norm[:MAX_NORM] | value[:MAX_ABS] | agc[:LAMBDA] | agc_tensor[:LAMBDA], "
    "VALUE a finite number > 0 (defaults: norm 1.0, value 1.0, agc 0.01, agc_tensor 0.01)"
)

_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _bad_spec(shown: str, problem: str) -> InputError:
    return InputError(f"invalid clip spec {shown!r}: {problem}. Valid forms: {VALID_CLIP_FORMS}")


def _checked_value(algo: str, value: object, shown: str) -> float | None:
    """The VALUE of ``algo`` with its default filled in, or an InputError naming ``shown``."""
    if algo not in CLIP_ALGOS:
        raise _bad_spec(shown, f"unknown algorithm {algo!r}")
    if algo == "none":
        if value is not None:
            raise _bad_spec(shown, f"'none' takes no value, found {value!r}")
        return None
    if value is None:
        return DEFAULT_CLIP_VALUES[algo]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_spec(shown, f"the value must be a number, found {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise _bad_spec(shown, f"the value must be finite and > 0, found {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ClipSpec:
    """A validated ``ALGO[:VALUE]`` clipping spec; ``value`` is None only for ``none``.

    ``ClipSpec("agc")`` fills in the default λ, so it equals ``parse_clip_spec("agc")``, and
    ``parse_clip_spec(str(spec)) == spec`` for every spec.
    """

    algo: ClipAlgo = "none"
    value: float | None = None

    def __post_init__(self) -> None:
        shown = self.algo if self.value is None else f"{self.algo}:{self.value!r}"
        # Frozen dataclass: filling in the default is the one write __post_init__ must force.
        object.__setattr__(self, "value", _checked_value(self.algo, self.value, shown))

    def __str__(self) -> str:
        # repr(float) is the shortest text that parses back to the same float.
        return self.algo if self.value is None else f"{self.algo}:{self.value!r}"


def parse_clip_spec(text: str) -> ClipSpec:
    """Parse the CLI form ``ALGO[:VALUE]`` (see the module docstring) into a :class:`ClipSpec`.

    Raises :class:`~fnostab.errors.InputError` naming the spec, what is wrong with it and the valid
    forms: unknown algorithm, a value given to ``none``, a missing or non-numeric value after ``:``,
    or a value that is not finite and > 0.
    """
    if not isinstance(text, str):
        raise _bad_spec(repr(text), f"expected a string, found {type(text).__name__}")
    algo, colon, raw = text.strip().partition(":")
    algo, raw = algo.strip(), raw.strip()
    if not algo:
        raise _bad_spec(text, "no algorithm given")
    if algo not in CLIP_ALGOS:
        raise _bad_spec(text, f"unknown algorithm {algo!r}")
    if not colon:
        return ClipSpec(algo)  # type: ignore[arg-type]  # checked against CLIP_ALGOS above
    if algo == "none":
        raise _bad_spec(text, f"'none' takes no value, found {raw!r}")
    if not raw:
        raise _bad_spec(text, "nothing after ':'")
    try:
        value = float(raw)
    except ValueError:
        raise _bad_spec(text, f"the value must be a number, found {raw!r}") from None
    return ClipSpec(algo, _checked_value(algo, value, text))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Norms


def _real_view(t: Tensor) -> Tensor:
    """``t`` itself, or for a complex tensor the (..., 2) real view of it: same L2 norm, same
    storage, and every real-only kernel (foreach norm, clamp) accepts it."""
    return torch.view_as_real(t) if t.is_complex() else t


def _accum_dtype(tensors: Iterable[Tensor]) -> torch.dtype:
    """float64 if any tensor is double precision, else float32 (fp16 norms overflow at 65504)."""
    wide = (torch.float64, torch.complex128)
    return torch.float64 if any(t.dtype in wide for t in tensors) else torch.float32


def _group_by_device_and_dtype(tensors: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def _tensor_norms(tensors: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """The L2 norm of each tensor as a 0-d ``dtype`` tensor on its device, complex entries as |z|.

    One ``torch._foreach_norm`` launch per (device, dtype) group instead of one kernel per tensor.
    """
    reals = [_real_view(t) for t in tensors]
    out: list[Tensor] = [torch.empty(0)] * len(reals)
    for (_, group_dtype), idx in _group_by_device_and_dtype(reals).items():
        group = [reals[i] for i in idx]
        if group_dtype.itemsize < 4:  # fp16 / bf16: accumulate in float32
            norms = torch._foreach_norm(group, 2, dtype=torch.float32)
        else:
            norms = torch._foreach_norm(group, 2)
        for i, n in zip(idx, norms, strict=True):
            out[i] = n.to(dtype)
    return out


@torch.no_grad()
def grad_norm(parameters: Iterable[Tensor]) -> Tensor:
    """Global L2 norm of all gradients, sqrt(Σ_p Σ |g|²), as a 0-d tensor on the first gradient's device.

    Parameters without a gradient are skipped; complex gradients count |z|². The result is float32
    (float64 if any gradient is double) and is never moved to the host, so calling this costs no
    sync. NaN or inf gradients give a non-finite result and no error: detecting them is the
    trainer's job. With no gradients at all the result is 0 (on the first parameter's device).
    """
    params = list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        device = params[0].device if params else torch.device("cpu")
        return torch.zeros((), device=device)
    dtype = _accum_dtype(grads)
    device = grads[0].device
    norms = [n.to(device) for n in _tensor_norms(grads, dtype)]
    return torch.linalg.vector_norm(torch.stack(norms))


def unit_norms(param: Tensor, output_dim: int | None) -> Tensor:
    """L2 norms of the units of ``param`` for AGC, complex entries as |z|.

    ``output_dim=None``: one unit, a 0-d tensor. Otherwise one norm per index along
    ``output_dim``, taken over all the other dims and kept with size-1 dims so it broadcasts
    against ``param`` (a Conv2d weight (out, in, k, k) with dim 0 gives (out, 1, 1, 1)). The result
    is float32 (float64 for double inputs) on ``param``'s device.
    """
    x = param.detach()
    dtype = _accum_dtype([x])
    # Norms of complex tensors go through the real view: the same sqrt(Σ re² + im²), but on CPU the
    # complex reduction kernels are 10-100x slower than the real ones (torch 2.13, measured).
    real = _real_view(x)
    # fp16 / bf16 are summed in float32: a half-precision norm overflows at 65504.
    wide = {"dtype": torch.float32} if real.dtype.itemsize < 4 else {}
    if output_dim is None:
        return torch.linalg.vector_norm(real, **wide).to(dtype)
    if not -x.ndim <= output_dim < x.ndim:
        raise ValueError(f"output_dim {output_dim} is out of range for a tensor of shape {tuple(x.shape)}")
    output_dim %= x.ndim
    reduce = tuple(d for d in range(real.ndim) if d != output_dim)
    if not reduce:
        return x.abs().to(dtype)  # a real vector: each entry is its own unit
    norms = torch.linalg.vector_norm(real, dim=reduce, keepdim=True, **wide).to(dtype)
    return norms.squeeze(-1) if x.is_complex() else norms  # drop the (re, im) axis


# ---------------------------------------------------------------------------------------------
# Which dim of a parameter is its output unit


def _is_vector_like(param: Tensor) -> bool:
    """True when the squeezed shape has at most one dim: biases, gains, (C,1,1) biases, scalars."""
    return sum(size != 1 for size in param.shape) <= 1


def agc_output_dim(module: nn.Module, name: str, param: Tensor) -> int | None:
    """The dim of ``module``'s own parameter ``name`` that indexes output units, or None for one unit.

    The rules, first match wins:

    1. squeezed shape with ≤ 1 dims (biases, gains, LayerScale vectors, (C,1,1) biases): one unit,
       DeepMind's ``unitwise_norm`` (timm, which does not squeeze, would clip a (C,1,1) bias per
       element);
    2. ``module.agc_output_dims[name]`` when the module declares that dict; fnostab's
       ``SpectralConv2d`` declares dim 1 for its (in, out, m, m) complex weights;
    3. the ``weight`` of ``nn.ConvTranspose1d/2d/3d``, stored (in, out, ...): dim 1;
    4. everything else, ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (out, in, ...) included: dim 0.
    """
    if _is_vector_like(param):
        return None
    declared = getattr(module, "agc_output_dims", None)
    if declared is not None:
        unknown = sorted(set(declared) - set(module._parameters))
        if unknown:
            raise ValueError(
                f"{type(module).__name__}.agc_output_dims names {unknown}, which are not parameters of "
                f"that module (it has {sorted(module._parameters)})"
            )
        if name in declared:
            dim = declared[name]
            if not isinstance(dim, int) or not -param.ndim <= dim < param.ndim:
                raise ValueError(
                    f"{type(module).__name__}.agc_output_dims[{name!r}] = {dim!r} is not a dim of a "
                    f"parameter of shape {tuple(param.shape)}"
                )
            return dim % param.ndim
    if isinstance(module, _TRANSPOSED_CONVS) and name == "weight":
        return 1
    return 0


def _output_dims(model: nn.Module) -> dict[int, int | None]:
    """``id(param) -> output dim`` for every parameter of ``model``, decided by its owning module."""
    dims: dict[int, int | None] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            dims.setdefault(id(param), agc_output_dim(module, name, param))  # a shared param: first owner
    return dims


# ---------------------------------------------------------------------------------------------
# The clipping algorithms


def _clip_norm_(grads: list[Tensor], max_norm: float, total: Tensor) -> None:
    # No `if coef < 1` branch: that would read the norm back to the host.
    coef = torch.clamp(max_norm / (total + NORM_CLIP_EPS), max=1.0)
    for (device, _), idx in _group_by_device_and_dtype(grads).items():
        torch._foreach_mul_([grads[i] for i in idx], coef.to(device))


def _clip_value_(grads: list[Tensor], clip_value: float) -> None:
    # Clamping the real view clamps real and imaginary parts separately, in place.
    reals = [_real_view(g) for g in grads]
    for _, idx in _group_by_device_and_dtype(reals).items():
        group = [reals[i] for i in idx]
        torch._foreach_clamp_min_(group, -clip_value)
        torch._foreach_clamp_max_(group, clip_value)


def _agc_(params: list[Tensor], output_dims: list[int | None], clip_factor: float) -> None:
    """Brock et al. 2021, Algorithm 2, on each unit of each parameter, in place on ``.grad``.

    Per parameter this launches two norms (one for whole-tensor units: a foreach norm covers all of
    them) and one multiply; the clip decision for every unit of every parameter on a device is made
    by a handful of ops on one concatenated vector of unit norms. No gradient is copied or stacked,
    so clipping needs no memory beyond the unit norms.
    """
    grads = [p.grad for p in params]
    dtype = _accum_dtype(grads + params)
    w_norms: list[Tensor] = [torch.empty(0)] * len(params)
    g_norms: list[Tensor] = [torch.empty(0)] * len(params)
    whole = [i for i, d in enumerate(output_dims) if d is None]
    for i, w, g in zip(
        whole,
        _tensor_norms([params[i].detach() for i in whole], dtype),
        _tensor_norms([grads[i] for i in whole], dtype),
        strict=True,
    ):
        w_norms[i], g_norms[i] = w, g
    for i, d in enumerate(output_dims):
        if d is not None:
            w_norms[i] = unit_norms(params[i], d).to(dtype)
            g_norms[i] = unit_norms(grads[i], d).to(dtype)

    by_device: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_device.setdefault(g.device, []).append(i)
    for idx in by_device.values():
        w = torch.cat([w_norms[i].reshape(-1) for i in idx])
        g = torch.cat([g_norms[i].reshape(-1) for i in idx])
        max_norm = clip_factor * w.clamp_min(AGC_WEIGHT_EPS)
        # where(), not an `if`: the decision stays on the device. A NaN ‖G‖ fails the test and is
        # left for the trainer to see; multiplying by exactly 1 leaves unclipped units bit-identical.
        scale = torch.where(g > max_norm, max_norm / g.clamp_min(AGC_GRAD_FLOOR), 1.0)
        pieces = scale.split([g_norms[i].numel() for i in idx])
        scales = [s.reshape(g_norms[i].shape) for i, s in zip(idx, pieces, strict=True)]
        torch._foreach_mul_([grads[i] for i in idx], scales)


@torch.no_grad()
def clip_gradients_(
    model: nn.Module,
    spec: ClipSpec | str,
    *,
    exclude: Iterable[nn.Parameter] | None = None,
    post_norm: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Clip the gradients of ``model`` in place by ``spec``; return (pre, post) global L2 norms.

    ``pre`` and ``post`` are :func:`grad_norm` over every parameter with a gradient, excluded ones
    included, before and after clipping: 0-d tensors on the gradients' device (``post is pre`` for
    ``none``). Non-finite gradients never raise; they show up as a non-finite ``pre``.
    ``post_norm=False`` skips the second pass over the gradients and returns ``post`` as None (a
    training step that does not log it).

    ``exclude`` is for the AGC algorithms only: the parameters whose gradients AGC leaves alone.
    For ``agc`` it defaults to the parameters of ``model.head`` when ``model`` has an ``nn.Module``
    attribute ``head`` (the paper does not clip the final layer) and to nothing otherwise; pass
    ``exclude=[]`` to clip the head too. For ``agc_tensor`` it defaults to nothing, as in
    PtychoPINN. ``norm`` and ``value`` clip every gradient (torch semantics) and ``none`` clips
    nothing, so giving ``exclude`` (even an empty one) with any of the three is an
    :class:`~fnostab.errors.InputError` rather than an argument silently ignored.
    """
    if isinstance(spec, str):
        spec = parse_clip_spec(spec)
    if exclude is not None and spec.algo in ("none", "norm", "value"):
        raise InputError(
            f"clip spec {str(spec)!r}: 'exclude' applies only to agc and agc_tensor; "
            "norm and value clip every gradient and none clips nothing. Drop 'exclude' or use an agc spec."
        )
    params = [p for p in model.parameters() if p.grad is not None]
    pre = grad_norm(model.parameters())
    if spec.algo == "none" or not params:
        return pre, pre
    assert spec.value is not None  # every algorithm but none carries a value
    grads = [p.grad for p in params]

    if spec.algo == "norm":
        _clip_norm_(grads, spec.value, pre)
    elif spec.algo == "value":
        _clip_value_(grads, spec.value)
    else:
        if exclude is not None:
            skipped = {id(p) for p in exclude}
        elif spec.algo == "agc" and isinstance(getattr(model, "head", None), nn.Module):
            skipped = {id(p) for p in model.head.parameters()}
        else:
            skipped = set()
        clipped = [p for p in params if id(p) not in skipped]
        if spec.algo == "agc":
            dims = _output_dims(model)
            output_dims = [dims[id(p)] for p in clipped]
        else:
            output_dims = [None] * len(clipped)
        if clipped:
            _agc_(clipped, output_dims, spec.value)

    return pre, grad_norm(params) if post_norm else None

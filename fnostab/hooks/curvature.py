"""Largest eigenvalue of the loss Hessian (sharpness) from Hessian-vector products, optionally preconditioned.

Why it matters: under gradient descent the sharpness λmax(H) rises until it reaches 2/η and then hovers
there (edge of stability, Cohen et al. 2021, arXiv:2103.00065); under Adam it is the *preconditioned*
sharpness λmax(P⁻¹H) that settles at (2 + 2β1)/((1 − β1)η), i.e. 38/η for β1 = 0.9 (Cohen et al. 2022,
arXiv:2207.14484). A run that crosses its line is unstable along the top eigendirection.

How: Hessian-vector products by double backward (one forward, one backward with ``create_graph``, then
one backward per product), fed to a Krylov power iteration (Lanczos with full re-orthogonalisation).
Lanczos sees every iterate of the power iteration at once, so with the same number of products it
returns the *algebraically* largest eigenvalue: a plain power iteration converges to the eigenvalue of
largest magnitude, which for the indefinite Hessian of an L1 loss is often a negative one.

Complex parameters (the spectral weights) are handled through their real view: a complex weight
``z = x + iy`` is the pair of real coordinates (x, y) and every inner product is the real one,
``Σ x·x' + y·y'``. PyTorch's gradient of a real loss w.r.t. ``z`` is ``∂L/∂x + i ∂L/∂y``, so its real
view is exactly the real gradient, and the same holds for the product ``∇(gᵀv)``.

The preconditioned form is λmax(P^{-1/2} H P^{-1/2}), which has the spectrum of P⁻¹H but is symmetric.
For Adam, P = (1 − β1^t)·(√v̂ + ε) with v̂ = v / (1 − β2^t): with that P Adam's step is exactly
θ ← θ − η P⁻¹ m, the form under which the 38/η threshold holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

Preconditioner = torch.optim.Optimizer | Sequence[Tensor]


def _real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def adam_preconditioner(optimizer: torch.optim.Optimizer, parameters: Sequence[Tensor]) -> list[Tensor] | None:
    """The diagonal P of Adam/AdamW for ``parameters`` (real views), or None before the first step.

    P = (1 − β1^t)·(√(v / (1 − β2^t)) + ε) per coordinate, from ``optimizer.state``; a parameter with
    no state yet makes the whole preconditioner unavailable (None).
    """
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    diagonal = []
    for parameter in parameters:
        state = optimizer.state.get(parameter, {})
        if "exp_avg_sq" not in state or id(parameter) not in group_of:
            return None
        group = group_of[id(parameter)]
        beta1, beta2 = group["betas"]
        step = float(state["step"])
        if step < 1:
            return None
        v_hat = _real(state["exp_avg_sq"]).detach() / (1.0 - beta2**step)
        diagonal.append((1.0 - beta1**step) * (v_hat.sqrt() + group["eps"]))
    return diagonal


def _diagonal(preconditioner: Preconditioner, parameters: Sequence[Tensor]) -> Tensor:
    if isinstance(preconditioner, torch.optim.Optimizer):
        diagonal = adam_preconditioner(preconditioner, parameters)
        if diagonal is None:
            raise ValueError("the optimizer holds no Adam second moment (exp_avg_sq) for every parameter yet")
    else:
        diagonal = [_real(d) for d in preconditioner]
        if len(diagonal) != len(parameters):
            raise ValueError(f"preconditioner has {len(diagonal)} tensors for {len(parameters)} parameters")
    flat = torch.cat([d.detach().reshape(-1).to(torch.float64) for d in diagonal])
    if not bool((flat > 0).all()):
        raise ValueError("preconditioner diagonal must be positive")
    return flat


def hessian_vector_product(loss_fn: Callable[[], Tensor], parameters: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """``v ↦ Hv`` on the real view of ``parameters`` (flat float64 vectors) at the current weights.

    One forward and backward with ``create_graph`` now; each call is then one more backward. ``.grad``
    of the parameters is not touched. The gradient itself (flat, float64) is the product's ``gradient``.
    """
    with torch.enable_grad():
        loss = loss_fn()
        gradients = torch.autograd.grad(loss, parameters, create_graph=True, allow_unused=True)
    live = [(p, g) for p, g in zip(parameters, gradients) if g is not None and g.requires_grad]
    sizes = [_real(p).numel() for p in parameters]
    present = [g is not None and g.requires_grad for g in gradients]

    def product(vector: Tensor) -> Tensor:
        if not live:
            return torch.zeros_like(vector)
        dot, start = 0.0, 0
        for gradient, size, keep in zip(gradients, sizes, present):
            if keep:
                real = _real(gradient)
                dot = dot + (real * vector[start : start + size].reshape(real.shape).to(real.dtype)).sum()
            start += size
        with torch.enable_grad():
            hv = iter(torch.autograd.grad(dot, [p for p, _ in live], retain_graph=True, allow_unused=True))
        parts = []
        for size, keep in zip(sizes, present):
            h = next(hv) if keep else None
            parts.append(
                torch.zeros(size, dtype=torch.float64, device=vector.device)
                if h is None
                else _real(h).reshape(-1).to(torch.float64)
            )
        return torch.cat(parts)

    product.gradient = torch.cat(
        [  # type: ignore[attr-defined]
            torch.zeros(size, dtype=torch.float64, device=parameters[0].device)
            if not keep
            else _real(g).detach().reshape(-1).to(torch.float64)
            for g, size, keep in zip(gradients, sizes, present)
        ]
    )
    return product


def lanczos_max_eigenvalue(
    matvec: Callable[[Tensor], Tensor],
    dimension: int,
    iterations: int,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> float:
    """Largest eigenvalue of the symmetric operator ``matvec`` after ``iterations`` products (Lanczos)."""
    start = torch.randn(dimension, dtype=torch.float64, generator=generator).to(device)
    basis = [start / start.norm()]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    for k in range(min(iterations, dimension)):
        w = matvec(basis[k])
        alpha = torch.dot(w, basis[k])
        alphas.append(alpha)
        # Full re-orthogonalisation (twice is enough): the basis is small, and without it Lanczos
        # produces spurious copies of the top eigenvalue.
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        beta = w.norm()
        if k + 1 == min(iterations, dimension) or not bool(beta > 1e-12 * max(1.0, float(alpha.abs()))):
            break
        betas.append(beta)
        basis.append(w / beta)
    size = len(alphas)
    tridiagonal = torch.diag(torch.stack(alphas).cpu())
    if size > 1:
        off = torch.stack(betas[: size - 1]).cpu()
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(tridiagonal)[-1])


def hessian_max_eigenvalue(
    loss_fn: Callable[[], Tensor],
    parameters: Iterable[Tensor],
    iterations: int = 20,
    preconditioner: Preconditioner | None = None,
    *,
    seed: int = 0,
) -> float:
    """λmax of the Hessian of ``loss_fn()`` w.r.t. ``parameters``; with ``preconditioner``, λmax(P^{-1/2} H P^{-1/2}).

    Args:
        loss_fn: returns the scalar loss at the current weights (called once, with grad enabled).
        parameters: the tensors to differentiate by (complex ones through their real view).
        iterations: Hessian-vector products (Lanczos steps); 10–20 suffice for the top eigenvalue.
        preconditioner: an Adam/AdamW optimizer that has stepped (its ``exp_avg_sq``, ``eps`` and
            ``step`` give P, see :func:`adam_preconditioner`), or one positive diagonal tensor per
            parameter (same shape; for a complex parameter, a complex tensor whose real and imaginary
            parts are the diagonal of the real and imaginary coordinates).
        seed: seed of the start vector (fixed, so that the same weights give the same number).

    Raises ValueError on an empty parameter list, a non-positive preconditioner or an optimizer
    without second moments yet.
    """
    params = [p for p in parameters]
    if not params:
        raise ValueError("no parameters")
    if iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, found {iterations}")
    product = hessian_vector_product(loss_fn, params)
    diagonal = None if preconditioner is None else _diagonal(preconditioner, params)
    return _max_eigenvalue(product, params, iterations, diagonal, seed)


def _max_eigenvalue(
    product: Callable[[Tensor], Tensor], params: Sequence[Tensor], iterations: int, diagonal: Tensor | None, seed: int
) -> float:
    dimension = sum(_real(p).numel() for p in params)
    device = params[0].device
    matvec = product
    if diagonal is not None:
        scale = diagonal.to(device).rsqrt()

        def matvec(vector: Tensor) -> Tensor:
            return scale * product(scale * vector)

    generator = torch.Generator().manual_seed(seed)
    return lanczos_max_eigenvalue(matvec, dimension, iterations, device=device, generator=generator)


def curvature_estimates(
    loss_fn: Callable[[], Tensor],
    parameters: Iterable[Tensor],
    iterations: int = 20,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Sharpness, Adam-preconditioned sharpness and batch sharpness from one double-backward graph.

    ``sharpness`` = λmax(H) and ``sharpness_precond`` = λmax(P^{-1/2} H P^{-1/2}) (NaN when
    ``optimizer`` holds no Adam second moment) as in :func:`hessian_max_eigenvalue`;
    ``batch_sharpness`` = gᵀHg / ‖g‖², the curvature along this batch's own gradient (one product;
    Andreyev & Beneventano, arXiv:2412.20553, find that this, not λmax, settles at 2/η under minibatch
    SGD). Costs one forward/backward with ``create_graph`` plus 2·iterations + 1 products;
    ``iterations=0`` gives the batch sharpness alone (the two λmax are NaN).
    """
    params = [p for p in parameters]
    product = hessian_vector_product(loss_fn, params)
    gradient = product.gradient  # type: ignore[attr-defined]
    squared = float(torch.dot(gradient, gradient))
    finite = math.isfinite(squared)
    out = {
        "sharpness": _max_eigenvalue(product, params, iterations, None, seed) if finite and iterations else math.nan,
        "batch_sharpness": float(torch.dot(gradient, product(gradient))) / squared
        if finite and squared > 0
        else math.nan,
        "sharpness_precond": math.nan,
    }
    diagonal = None
    if optimizer is not None and finite and iterations:
        moments = adam_preconditioner(optimizer, params) if "betas" in optimizer.param_groups[0] else None
        if moments is not None:
            diagonal = torch.cat([d.reshape(-1).to(torch.float64) for d in moments])
    if diagonal is not None and bool(torch.isfinite(diagonal).all()) and bool((diagonal > 0).all()):
        out["sharpness_precond"] = _max_eigenvalue(product, params, iterations, diagonal, seed)
    return out

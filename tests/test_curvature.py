"""hessian_max_eigenvalue against the dense Hessian of a model small enough to build it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fnostab.hooks import hessian_max_eigenvalue
from fnostab.hooks.curvature import adam_preconditioner
from fnostab.models.spectral import SpectralConv2d


class TinyFNO(nn.Module):
    """Lifter conv → GELU(spectral + local) residual → 1×1 head: 386 real parameters (6 + 288 + 84 + 8),
    144 complex weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lift = nn.Conv2d(1, 3, 1)
        self.spectral = SpectralConv2d(3, 3, modes=4)
        self.local = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lift(x)
        h = h + nn.functional.gelu(self.spectral(h) + self.local(h))
        return self.head(h)


@pytest.fixture(scope="module")
def problem() -> tuple[TinyFNO, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    model = TinyFNO()
    x = torch.randn(4, 1, 8, 8)
    y = torch.randn(4, 2, 8, 8)
    return model, x, y


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    out = model(x) if params is None else functional_call(model, params, (x,))
    return ((out - y) ** 2).mean()


def _dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian over the real coordinates (complex weights as (re, im) pairs), by autograd.functional."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    flat = torch.cat([(torch.view_as_real(p) if p.is_complex() else p).reshape(-1) for p in params])

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        rebuilt, start = {}, 0
        for name, p in zip(names, params):
            real_shape = torch.view_as_real(p).shape if p.is_complex() else p.shape
            piece = vector[start : start + real_shape.numel()].reshape(real_shape)
            start += real_shape.numel()
            rebuilt[name] = torch.view_as_complex(piece.contiguous()) if p.is_complex() else piece
        return _loss(model, x, y, rebuilt)

    return torch.autograd.functional.hessian(loss_of, flat)


def test_the_tiny_model_has_a_few_hundred_real_parameters_with_a_complex_spectral_weight(problem) -> None:
    model, _, _ = problem
    real = sum((torch.view_as_real(p) if p.is_complex() else p).numel() for p in model.parameters())
    assert real == 386
    assert any(p.is_complex() for p in model.parameters())


def test_hessian_max_eigenvalue_equals_the_top_eigenvalue_of_the_dense_hessian(problem) -> None:
    model, x, y = problem
    dense = _dense_hessian(model, x, y)
    assert torch.allclose(dense, dense.T, atol=1e-5)
    expected = float(torch.linalg.eigvalsh(dense.double())[-1])
    estimate = hessian_max_eigenvalue(lambda: _loss(model, x, y), model.parameters(), iterations=40)
    assert estimate == pytest.approx(expected, rel=0.01)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


def test_preconditioned_sharpness_equals_the_dense_p_half_h_p_half_with_adams_own_state(problem) -> None:
    model, x, y = problem
    trained = TinyFNO()
    trained.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        _loss(trained, x, y).backward()
        optimizer.step()
    dense = _dense_hessian(trained, x, y).double()
    # P by hand from the state: (1 − β1^t)(√(v / (1 − β2^t)) + ε), real coordinates in parameter order.
    t, (beta1, beta2), eps = 3, (0.9, 0.999), 1e-8
    v = torch.cat(
        [
            (
                torch.view_as_real(optimizer.state[p]["exp_avg_sq"])
                if p.is_complex()
                else optimizer.state[p]["exp_avg_sq"]
            ).reshape(-1)
            for p in trained.parameters()
        ]
    ).double()
    p_diag = (1 - beta1**t) * ((v / (1 - beta2**t)).sqrt() + eps)
    scale = p_diag.rsqrt()
    expected = float(torch.linalg.eigvalsh(scale[:, None] * dense * scale[None, :])[-1])
    plain = float(torch.linalg.eigvalsh(dense)[-1])
    estimate = hessian_max_eigenvalue(
        lambda: _loss(trained, x, y), trained.parameters(), iterations=60, preconditioner=optimizer
    )
    assert estimate == pytest.approx(expected, rel=0.01)
    assert expected > 10 * plain  # the preconditioner matters here: the test could tell them apart
    from_tensors = hessian_max_eigenvalue(
        lambda: _loss(trained, x, y),
        trained.parameters(),
        iterations=60,
        preconditioner=adam_preconditioner(optimizer, list(trained.parameters())),
    )
    assert from_tensors == pytest.approx(estimate, rel=1e-6)


def test_an_indefinite_hessian_gives_its_largest_not_its_largest_magnitude_eigenvalue() -> None:
    # L(a, b) = a² − 3 b²: eigenvalues 2 and −6; power iteration alone would return −6.
    w = nn.Parameter(torch.tensor([0.3, -0.2]))
    estimate = hessian_max_eigenvalue(lambda: w[0] ** 2 - 3 * w[1] ** 2, [w], iterations=5)
    assert estimate == pytest.approx(2.0, rel=1e-6)


def test_an_adam_optimizer_that_never_stepped_is_rejected(problem) -> None:
    model, x, y = problem
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="exp_avg_sq"):
        hessian_max_eigenvalue(lambda: _loss(model, x, y), model.parameters(), preconditioner=optimizer)


def test_curvature_estimates_share_one_graph_and_batch_sharpness_is_g_h_g_over_g_squared(problem) -> None:
    from fnostab.hooks.curvature import curvature_estimates

    model, x, y = problem
    dense = _dense_hessian(model, x, y).double()
    loss = _loss(model, x, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    g = torch.cat([(torch.view_as_real(t) if t.is_complex() else t).reshape(-1) for t in grads]).double()
    values = curvature_estimates(lambda: _loss(model, x, y), model.parameters(), iterations=40)
    assert values["batch_sharpness"] == pytest.approx(float(g @ dense @ g / (g @ g)), rel=1e-4)
    assert values["sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=0.01)
    assert values["batch_sharpness"] < values["sharpness"]  # a Rayleigh quotient never exceeds λmax
    assert math.isnan(values["sharpness_precond"])  # no optimizer given

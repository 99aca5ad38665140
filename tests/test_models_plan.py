"""Memory plan: exact parameter counts without allocating, byte accounting, measured activations."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fnostab.config import ModelConfig, TrainConfig
from fnostab.errors import ConfigError
from fnostab.models import build_generator, measure_step, plan
from fnostab.models.plan import optimizer_buffers
from fnostab.training.schedules import build_optimizer


@pytest.mark.parametrize(
    ("fno_blocks", "N", "cap", "params"),
    [
        (4, 64, None, 17_202_402),
        (6, 64, None, 276_075_746),
        (6, 64, 512, 118_263_522),
        (8, 256, None, 4_417_975_522),  # the Stage-B OOM: 33 GiB of complex64 weights alone
        (8, 256, 512, 216_834_786),
    ],
)
def test_plan_counts_hybrid_parameters_exactly_without_allocating(
    fno_blocks: int, N: int, cap: int | None, params: int
) -> None:
    p = plan("hybrid", batch_size=16, N=N, width=32, modes=12, fno_blocks=fno_blocks, max_hidden_channels=cap)
    assert p.params == params
    assert p.geometry_error is None and p.activation_bytes > 0
    if cap is None:  # about 86.6 % of the parameters are spectral at every depth (docs/generators.md, Parameter counts)
        assert 0.86 < p.complex_params / p.params < 0.87
    assert p.params_real == p.params + p.complex_params
    assert p.weight_bytes == 8 * p.complex_params + 4 * (p.params - p.complex_params)


def test_plan_keeps_parameter_figures_when_the_geometry_does_not_fit() -> None:
    p = plan("hybrid", batch_size=16, N=64, fno_blocks=8)
    assert p.params == 4_417_975_522
    assert p.weight_bytes == 8 * p.complex_params + 4 * (p.params - p.complex_params)
    assert p.weight_bytes > 30 * 2**30
    assert p.activation_bytes == 0 and p.saved_bytes == 0 and p.transient_bytes == 0
    assert p.geometry_error is not None and "0.5 px a side" in p.geometry_error
    # weights, Adam's two states, then at the step the gradients and the foreach sqrt(exp_avg_sq)
    assert p.total_bytes == p.weight_bytes + p.optimizer_bytes + p.grad_bytes + p.weight_bytes
    # ...whereas building it is refused
    with pytest.raises(ConfigError, match="0.5 px a side"):
        build_generator("hybrid", N=64, fno_blocks=8)


@pytest.mark.parametrize("name", ["fno", "hybrid", "stable_hybrid"])
def test_plan_weight_bytes_equal_the_real_nbytes_of_the_built_model(name: str) -> None:
    options = dict(N=32, width=8, modes=4, fno_blocks=3, bands="both", block_init="layerscale")
    model = build_generator(name, **options)
    p = plan(name, batch_size=4, **options)
    assert p.params == sum(q.numel() for q in model.parameters())
    real_view = [torch.view_as_real(q) if q.is_complex() else q for q in model.parameters()]
    assert p.params_real == sum(q.numel() for q in real_view)
    assert p.weight_bytes == sum(q.numel() * q.element_size() for q in model.parameters())
    assert p.grad_bytes == p.weight_bytes
    assert p.optimizer_bytes == 2 * p.weight_bytes  # adam: exp_avg and exp_avg_sq
    assert p.saved_bytes + p.transient_bytes == p.activation_bytes
    assert p.weight_bytes + p.optimizer_bytes + p.activation_bytes <= p.total_bytes
    assert p.total_bytes <= p.weight_bytes + p.grad_bytes + p.optimizer_bytes + p.activation_bytes + p.weight_bytes


def test_fno_plan_matches_the_ptychopinn_default_count() -> None:
    assert plan("fno", batch_size=16, N=64).params == 656_002


@pytest.mark.parametrize(
    ("optimizer", "weight_decay", "momentum"),
    [
        ("adam", 0.0, 0.9),
        ("adam", 1e-4, 0.9),
        ("adamw", 1e-2, 0.9),
        ("sgd", 0.0, 0.9),
        ("sgd", 1e-4, 0.0),
    ],
)
def test_planned_optimizer_state_is_what_torch_keeps_after_a_step(optimizer, weight_decay, momentum) -> None:
    options = dict(batch_size=2, N=32, width=8, modes=4, fno_blocks=2)
    p = plan("hybrid", optimizer=optimizer, weight_decay=weight_decay, momentum=momentum, **options)
    model = build_generator("hybrid", N=32, width=8, modes=4, fno_blocks=2)
    config = TrainConfig(optimizer=optimizer, weight_decay=weight_decay, momentum=momentum)
    torch_optimizer = build_optimizer(model.parameters(), config)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    torch_optimizer.step()
    kept = sum(
        v.numel() * v.element_size()
        for state in torch_optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    )  # not Adam's scalar step count
    assert p.optimizer_bytes == kept
    # The step's temporaries: sqrt(exp_avg_sq) for Adam(W), and grad + wd·param for L2 decay (Adam, SGD).
    expected = {("adam", 0.0): 1, ("adam", 1e-4): 2, ("adamw", 1e-2): 1, ("sgd", 0.0): 0, ("sgd", 1e-4): 1}
    assert (
        optimizer_buffers(optimizer, weight_decay=weight_decay, momentum=momentum)[1]
        == expected[(optimizer, weight_decay)]
    )


def test_measured_step_memory_of_a_hand_countable_model() -> None:
    # Forward: the conv output (saved by GELU) and the GELU output, S bytes each; the parameters and
    # the input are not counted. Backward: the gradients of the conv weight and bias are gradients,
    # not activations.
    B, N = 3, 10
    S = 4 * B * 4 * N * N  # float32, 4 channels
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GELU())
    memory = measure_step(model, torch.empty(B, 1, N, N, device="meta"))
    assert memory.saved == 2 * S
    # Backward needs the gradient of the GELU output and of its input while both activations are still
    # held: at least 4 S. The square in the stand-in loss adds at most one temporary of S (its exact
    # count is up to PyTorch's pow backward), and the loss a few scalars.
    assert 4 * S <= memory.activation_peak <= 5 * S + 64
    assert memory.grads == 4 * (4 * 9 + 4)
    assert memory.peak <= memory.activation_peak + memory.grads


def test_meta_measurement_equals_the_same_measurement_on_real_tensors() -> None:
    torch.manual_seed(0)
    options = dict(width=8, modes=4, fno_blocks=3, bands="both")
    for checkpointing in (False, True):
        real_model = build_generator("stable_hybrid", N=32, checkpointing=checkpointing, **options)
        real = measure_step(real_model, torch.rand(2, 1, 32, 32))
        p = plan("stable_hybrid", batch_size=2, N=32, checkpointing=checkpointing, **options)
        assert (p.saved_bytes, p.activation_bytes) == (real.saved, real.activation_peak)
        assert real.grads == p.grad_bytes
        assert p.total_bytes == p.weight_bytes + p.optimizer_bytes + max(real.peak, p.grad_bytes + p.weight_bytes)


@pytest.mark.parametrize("name", ["fno", "hybrid", "stable_hybrid"])
def test_checkpointing_plans_fewer_activation_bytes(name: str) -> None:
    options = dict(batch_size=16, N=64, width=16, modes=8, fno_blocks=4)
    plain = plan(name, **options)
    ckpt = plan(name, checkpointing=True, **options)
    assert ckpt.activation_bytes < plain.activation_bytes
    assert ckpt.params == plain.params and ckpt.weight_bytes == plain.weight_bytes


def test_activation_bytes_scale_linearly_with_batch_size() -> None:
    one = plan("hybrid", batch_size=1, N=32, width=8, modes=4, fno_blocks=3)
    eight = plan("hybrid", batch_size=8, N=32, width=8, modes=4, fno_blocks=3)
    # Everything saved is per-sample, except weight slices copied on maps smaller than m × m.
    assert eight.activation_bytes == pytest.approx(8 * one.activation_bytes, rel=0.01)


def test_plan_to_dict_is_json_ready_and_carries_its_context() -> None:
    d = plan("hybrid", batch_size=2, N=32, width=8, modes=4, fno_blocks=2).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert {"params", "params_real", "complex_params", "weight_bytes", "grad_bytes", "optimizer_bytes",
            "activation_bytes", "total_bytes", "geometry_error"} <= d.keys()  # fmt: skip
    assert d["name"] == "hybrid" and d["N"] == 32 and d["batch_size"] == 2 and d["options"]["width"] == 8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(optimizer="lamb"), r"unknown optimizer 'lamb': expected one of adam, adamw, sgd"),
        (dict(batch_size=0), r"batch_size must be an integer ≥ 1, found 0"),
        (dict(width=0), r"invalid width: Input should be greater than or equal to 1 \(got 0\)"),
    ],
)
def test_plan_rejects_invalid_options(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan("hybrid", **{"batch_size": 2, "N": 32, **options})


def test_plan_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="expected one of fno, hybrid, stable_hybrid"):
        plan("unet", batch_size=2, N=32)


@pytest.mark.cuda
@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_bounds_the_real_cuda_peak_of_one_adam_step(checkpointing: bool) -> None:
    options = dict(N=64, width=16, modes=8, fno_blocks=3, checkpointing=checkpointing)
    model_plan = plan("hybrid", batch_size=8, **options)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    model = build_generator("hybrid", **options).cuda()
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.rand(8, 1, 64, 64, device="cuda")
    for _ in range(2):  # the second step has Adam state allocated
        optimizer.zero_grad(set_to_none=True)
        model(x).abs().square().sum().backward()
        optimizer.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    # cuFFT/cuDNN workspaces are outside the plan, the allocator rounds up: allow 50% either way.
    assert 0.5 * model_plan.total_bytes <= peak <= 1.5 * model_plan.total_bytes, (peak, model_plan.total_bytes)


def test_a_plan_from_a_config_records_its_options_as_plan_files_always_did() -> None:
    config = ModelConfig(width=8, modes=4, fno_blocks=2, checkpointing=True)
    d = plan(config, batch_size=2, N=32, channels=4).to_dict()
    assert d["options"] == {
        "width": 8, "modes": 4, "fno_blocks": 2, "max_hidden_channels": None, "bands": "positive",
        "head": "real_imag", "block_init": "zero_gamma", "layerscale_init": 0.001, "cnn_blocks": 2,
        "in_channels": 4, "out_channels": 4, "gradient_checkpointing": True,
    }  # fmt: skip
    assert d["name"] == "hybrid" and d["gradient_checkpointing"] is True
    shorthand = plan("hybrid", batch_size=2, N=32, channels=4, width=8, modes=4, fno_blocks=2, checkpointing=True)
    assert d == shorthand.to_dict()

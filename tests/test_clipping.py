"""Gradient clipping: every expected number below is worked out by hand in the comments."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from fnostab.clipping import (
    ClipSpec,
    clip_gradients_,
    grad_norm,
    parse_clip_spec,
    unit_norms,
)
from fnostab.errors import InputError


class Params(nn.Module):
    """A module whose parameters are exactly the given tensors, each with the given gradient."""

    def __init__(self, **weights_and_grads: tuple[list | torch.Tensor, list | torch.Tensor]) -> None:
        super().__init__()
        for name, (weight, grad) in weights_and_grads.items():
            w = torch.as_tensor(weight)
            w = w.to(torch.complex64 if w.is_complex() else torch.float32)
            param = nn.Parameter(w)
            param.grad = torch.as_tensor(grad, dtype=w.dtype).reshape(w.shape).clone()
            self.register_parameter(name, param)


class TinySpectral(nn.Module):
    """Stands in for fnostab's SpectralConv2d: a complex (in, out, m, m) weight whose unit is dim 1."""

    agc_output_dims = {"weight": 1}

    def __init__(self, weight: torch.Tensor, grad: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.weight.grad = grad.clone()


def random_mixed_model(seed: int) -> nn.Module:
    """Conv2d, ConvTranspose2d, Linear and a complex spectral weight, all with random gradients."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 2, 2), nn.Linear(5, 3))
    model.append(TinySpectral(torch.randn(2, 3, 4, 4, dtype=torch.complex64), torch.randn(2, 3, 4, 4) * 1j))
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.randn_like(p) * 5
    return model


def with_grad(module: nn.Module, **values: list) -> nn.Module:
    """Set the named parameters of ``module`` and their gradients: name=(weight, grad)."""
    for name, (weight, grad) in values.items():
        param = getattr(module, name)
        with torch.no_grad():
            param.copy_(torch.tensor(weight, dtype=param.dtype).reshape(param.shape))
        param.grad = torch.tensor(grad, dtype=param.dtype).reshape(param.shape)
    return module


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype).reshape(actual.shape)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# parse_clip_spec and ClipSpec


@pytest.mark.parametrize(
    ("text", "algo", "value"),
    [
        ("none", "none", None),
        ("norm:2.5", "norm", 2.5),
        ("value:0.1", "value", 0.1),
        ("agc:0.02", "agc", 0.02),
        ("agc_tensor:1e-3", "agc_tensor", 1e-3),
        (" norm : 3 ", "norm", 3.0),
    ],
)
def test_parse_clip_spec_reads_algorithm_and_value(text: str, algo: str, value: float | None) -> None:
    assert parse_clip_spec(text) == ClipSpec(algo, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "default"), [("norm", 1.0), ("value", 1.0), ("agc", 0.01), ("agc_tensor", 0.01)])
def test_parse_clip_spec_fills_in_the_documented_default(text: str, default: float) -> None:
    spec = parse_clip_spec(text)
    assert spec.value == default
    assert spec == ClipSpec(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["none", "norm", "norm:1", "value:0.25", "agc", "agc:1e-05", "agc_tensor:0.3"])
def test_clip_spec_text_round_trips(text: str) -> None:
    spec = parse_clip_spec(text)
    assert parse_clip_spec(str(spec)) == spec


def test_clip_spec_prints_as_algo_colon_value() -> None:
    assert str(parse_clip_spec("none")) == "none"
    assert str(parse_clip_spec("norm:1")) == "norm:1.0"
    assert str(parse_clip_spec("agc")) == "agc:0.01"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("none:3", "'none' takes no value, found '3'"),
        ("clip:1", "unknown algorithm 'clip'"),
        ("AGC:0.01", "unknown algorithm 'AGC'"),
        ("norm:abc", "must be a number, found 'abc'"),
        ("norm:1:2", "must be a number, found '1:2'"),
        ("norm:0", "finite and > 0, found 0.0"),
        ("agc:-0.01", "finite and > 0, found -0.01"),
        ("value:nan", "finite and > 0, found nan"),
        ("agc:inf", "finite and > 0, found inf"),
        ("norm:", "nothing after ':'"),
        ("", "no algorithm given"),
    ],
)
def test_bad_clip_spec_raises_input_error_naming_spec_problem_and_valid_forms(text: str, problem: str) -> None:
    with pytest.raises(InputError) as info:
        parse_clip_spec(text)
    message = str(info.value)
    assert repr(text) in message
    assert problem in message
    assert "none | norm[:MAX_NORM] | value[:MAX_ABS] | agc[:LAMBDA] | agc_tensor[:LAMBDA]" in message
    assert isinstance(info.value, ValueError)


def test_clip_spec_built_directly_is_validated_too() -> None:
    with pytest.raises(InputError, match="finite and > 0"):
        ClipSpec("norm", -1.0)
    with pytest.raises(InputError, match="unknown algorithm 'clip'"):
        ClipSpec("clip", 1.0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="takes no value"):
        ClipSpec("none", 1.0)


# ---------------------------------------------------------------------------------------------
# grad_norm and the returned norms


def test_grad_norm_is_global_l2_norm_of_all_gradients() -> None:
    # sqrt(3² + 4² + 12²) = 13
    model = Params(a=([1.0, 1.0], [3.0, 4.0]), b=([1.0], [12.0]))
    norm = grad_norm(model.parameters())
    assert norm.ndim == 0
    close(norm, 13.0)


def test_grad_norm_counts_complex_gradients_as_squared_modulus() -> None:
    # |3+4j|² + 12² = 25 + 144 = 169
    model = Params(z=([1 + 1j], [3 + 4j]), b=([1.0], [12.0]))
    close(grad_norm(model.parameters()), 13.0)


def test_grad_norm_skips_parameters_without_gradient_and_is_zero_without_any() -> None:
    model = Params(a=([1.0, 1.0], [3.0, 4.0]), b=([1.0], [12.0]))
    model.b.grad = None
    close(grad_norm(model.parameters()), 5.0)
    model.a.grad = None
    norm = grad_norm(model.parameters())
    assert isinstance(norm, torch.Tensor) and norm.ndim == 0 and norm.item() == 0.0


@pytest.mark.parametrize("spec", ["none", "norm:1", "value:0.5", "agc:0.01", "agc_tensor:0.01"])
def test_pre_norm_matches_an_independent_computation_and_norms_are_device_tensors(spec: str) -> None:
    model = random_mixed_model(0)
    expected = torch.cat([p.grad.abs().double().flatten() ** 2 for p in model.parameters()]).sum().sqrt()

    pre, post = clip_gradients_(model, spec)

    close(pre, expected.float().item())
    after = torch.cat([p.grad.abs().double().flatten() ** 2 for p in model.parameters()]).sum().sqrt()
    close(post, after.float().item())
    for norm in (pre, post):
        assert isinstance(norm, torch.Tensor) and norm.ndim == 0
        assert norm.device == model[0].weight.grad.device


# ---------------------------------------------------------------------------------------------
# norm


def test_norm_clip_scales_global_norm_to_max_and_keeps_direction() -> None:
    model = Params(a=([1.0, 1.0], [3.0, 4.0]), b=([1.0], [12.0]))
    pre, post = clip_gradients_(model, "norm:1")
    close(pre, 13.0)
    close(post, 1.0, atol=1e-5)
    # coefficient 1 / (13 + 1e-6): every entry divided by 13
    close(model.a.grad, [3 / 13, 4 / 13], atol=1e-6)
    close(model.b.grad, [12 / 13], atol=1e-6)


def test_norm_clip_leaves_gradients_below_max_untouched() -> None:
    model = Params(a=([1.0, 1.0], [3.0, 4.0]), b=([1.0], [12.0]))
    pre, post = clip_gradients_(model, "norm:100")
    assert torch.equal(model.a.grad, torch.tensor([3.0, 4.0]))
    assert torch.equal(model.b.grad, torch.tensor([12.0]))
    close(pre, 13.0)
    close(post, 13.0)


def test_norm_clip_counts_complex_gradients_as_squared_modulus() -> None:
    # global norm sqrt(|3+4j|² + 12²) = 13; norm:6.5 halves everything
    model = Params(z=([1 + 1j], [3 + 4j]), b=([1.0], [12.0]))
    pre, post = clip_gradients_(model, "norm:6.5")
    close(pre, 13.0)
    close(post, 6.5, atol=1e-5)
    close(model.z.grad, [1.5 + 2j], atol=1e-6)
    close(model.b.grad, [6.0], atol=1e-6)


def test_norm_clip_post_never_exceeds_max() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 100
    pre, post = clip_gradients_(model, "norm:0.5")
    assert pre > 0.5
    assert post <= 0.5


# ---------------------------------------------------------------------------------------------
# value


def test_value_clip_clamps_each_real_entry() -> None:
    model = Params(a=([1.0, 1.0, 1.0], [-3.0, 0.5, 2.0]))
    pre, post = clip_gradients_(model, "value:1")
    assert torch.equal(model.a.grad, torch.tensor([-1.0, 0.5, 1.0]))
    close(pre, math.sqrt(9 + 0.25 + 4))
    close(post, math.sqrt(1 + 0.25 + 1))


def test_value_clip_clamps_real_and_imaginary_parts_separately() -> None:
    # 3+4j -> 1+1j (modulus √2 > 1: the parts are clamped, not the modulus); the others are partly
    # or wholly inside [-1, 1].
    model = Params(z=([1j, 1j, 1j], [3 + 4j, -0.5 - 2j, 0.2 + 0.1j]))
    pre, post = clip_gradients_(model, "value:1")
    assert torch.equal(model.z.grad, torch.tensor([1 + 1j, -0.5 - 1j, 0.2 + 0.1j], dtype=torch.complex64))
    close(pre, math.sqrt(25 + 0.25 + 4 + 0.04 + 0.01))
    close(post, math.sqrt(2 + 0.25 + 1 + 0.04 + 0.01))


# ---------------------------------------------------------------------------------------------
# agc (unit-wise, Brock et al. 2021)

# The shared example, λ = 0.1, two units:
#   W_0 = (3, 4), ‖W_0‖ = 5,  limit 0.5;  G_0 = (0.6, 0.8), ‖G_0‖ = 1   > 0.5 -> G_0 · 0.5 = (0.3, 0.4)
#   W_1 = (6, 8), ‖W_1‖ = 10, limit 1.0;  G_1 = (0, 0.5),   ‖G_1‖ = 0.5 < 1   -> untouched
# Taking the other dim as the unit gives different numbers: (3, 6) and (4, 8), ‖G‖ 0.6 and 0.94,
# limits 0.67 and 0.89 -> only the second would be clipped.
PRE = math.sqrt(1 + 0.25)
POST = math.sqrt(0.25 + 0.25)


def test_agc_clips_each_output_channel_of_a_conv2d_weight() -> None:
    conv = nn.Conv2d(2, 2, kernel_size=1, bias=False)  # weight (out, in, 1, 1): unit = dim 0
    with_grad(conv, weight=([[3.0, 4.0], [6.0, 8.0]], [[0.6, 0.8], [0.0, 0.5]]))
    pre, post = clip_gradients_(conv, "agc:0.1")
    close(conv.weight.grad.flatten(), [0.3, 0.4, 0.0, 0.5])
    assert torch.equal(conv.weight.grad[1].flatten(), torch.tensor([0.0, 0.5]))  # bit-identical
    close(torch.linalg.vector_norm(conv.weight.grad[0]), 0.1 * 5.0)  # exactly λ‖W_0‖
    close(pre, PRE)
    close(post, POST)


def test_agc_clips_each_output_row_of_a_linear_weight() -> None:
    linear = nn.Linear(2, 2, bias=False)  # weight (out, in)
    with_grad(linear, weight=([[3.0, 4.0], [6.0, 8.0]], [[0.6, 0.8], [0.0, 0.5]]))
    clip_gradients_(linear, "agc:0.1")
    close(linear.weight.grad, [[0.3, 0.4], [0.0, 0.5]])


def test_agc_unit_of_a_transposed_conv_weight_is_dim_1() -> None:
    deconv = nn.ConvTranspose2d(2, 2, kernel_size=1, bias=False)  # weight (in, out, 1, 1)
    # output channel j is the column W[:, j]: the shared example, transposed
    with_grad(deconv, weight=([[3.0, 6.0], [4.0, 8.0]], [[0.6, 0.0], [0.8, 0.5]]))
    clip_gradients_(deconv, "agc:0.1")
    close(deconv.weight.grad.reshape(2, 2), [[0.3, 0.0], [0.4, 0.5]])


def test_agc_clips_each_output_channel_of_a_complex_spectral_weight() -> None:
    # (in, out, 1, 1) complex, declared unit dim 1. Column 0: W = (3+4j, 0), ‖W‖ = 5;
    # G = (0.6j, 0.8), ‖G‖ = 1 > 0.5 -> halved. Column 1: W = (6j, 8), ‖W‖ = 10; G = (0.3+0.4j, 0),
    # ‖G‖ = 0.5 < 1 -> untouched. (Squaring instead of |z|² would give ‖W_0‖² = -7+24j: wrong.)
    weight = torch.tensor([[3 + 4j, 6j], [0, 8]], dtype=torch.complex64).reshape(2, 2, 1, 1)
    grad = torch.tensor([[0.6j, 0.3 + 0.4j], [0.8, 0]], dtype=torch.complex64).reshape(2, 2, 1, 1)
    spectral = TinySpectral(weight, grad)
    pre, post = clip_gradients_(spectral, "agc:0.1")
    expected = torch.tensor([[0.3j, 0.3 + 0.4j], [0.4, 0]], dtype=torch.complex64).reshape(2, 2, 1, 1)
    close(spectral.weight.grad, expected)
    close(pre, PRE)
    close(post, POST)


def test_agc_output_dims_naming_a_missing_parameter_is_an_error() -> None:
    class Typo(nn.Module):
        agc_output_dims = {"wieght": 1}

        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2, 2))
            self.weight.grad = torch.ones(2, 2)

    with pytest.raises(ValueError, match="wieght"):
        clip_gradients_(Typo(), "agc")


def test_agc_treats_a_c11_bias_as_one_unit() -> None:
    # W = (1, 2, 2), ‖W‖ = 3, limit 0.3; G = (2, 0, 0), ‖G‖ = 2 -> G · 0.3/2 = (0.3, 0, 0).
    # Per element (timm, no squeeze) it would be (0.1, 0, 0).
    model = Params(bias=(torch.tensor([1.0, 2.0, 2.0]).reshape(3, 1, 1), [2.0, 0.0, 0.0]))
    clip_gradients_(model, "agc:0.1")
    close(model.bias.grad.flatten(), [0.3, 0.0, 0.0])


def test_agc_floors_the_norm_of_a_zero_initialised_weight_at_1e_3() -> None:
    # ‖W_i‖ = 0 -> max(0, 1e-3) = 1e-3, limit λ·1e-3 = 1e-4.
    # G_0 = (3, 4), ‖G_0‖ = 5 -> G_0 · 1e-4/5 = (6e-5, 8e-5); G_1 = (0, 5e-5) < 1e-4 -> untouched.
    conv = nn.Conv2d(2, 2, kernel_size=1, bias=False)
    with_grad(conv, weight=([[0.0, 0.0], [0.0, 0.0]], [[3.0, 4.0], [0.0, 5e-5]]))
    clip_gradients_(conv, "agc:0.1")
    close(conv.weight.grad.flatten(), [6e-5, 8e-5, 0.0, 5e-5], atol=1e-10)


class BodyAndHead(nn.Module):
    """body: the shared example; head: W = (0.003, 0.004), ‖W‖ = 0.005, G = (30, 40), ‖G‖ = 50."""

    def __init__(self) -> None:
        super().__init__()
        self.body = with_grad(nn.Linear(2, 2, bias=False), weight=([[3.0, 4.0], [6.0, 8.0]], [[0.6, 0.8], [0.0, 0.5]]))
        self.head = with_grad(nn.Linear(2, 1, bias=False), weight=([[0.003, 0.004]], [[30.0, 40.0]]))


def test_agc_leaves_the_head_alone_but_counts_it_in_the_norms() -> None:
    model = BodyAndHead()
    pre, post = clip_gradients_(model, "agc:0.1")
    close(model.body.weight.grad, [[0.3, 0.4], [0.0, 0.5]])
    assert torch.equal(model.head.weight.grad, torch.tensor([[30.0, 40.0]]))
    close(pre, math.sqrt(1.25 + 2500))
    close(post, math.sqrt(0.5 + 2500))


def test_agc_with_empty_exclude_clips_the_head_too() -> None:
    # head: one unit (squeezed shape (2,)), limit 0.1 · 0.005 = 5e-4 -> (30, 40) · 5e-4/50 = (3e-4, 4e-4)
    model = BodyAndHead()
    clip_gradients_(model, "agc:0.1", exclude=[])
    close(model.head.weight.grad, [[3e-4, 4e-4]], atol=1e-9)
    close(model.body.weight.grad, [[0.3, 0.4], [0.0, 0.5]])


def test_agc_honours_exclude_in_place_of_the_head_default() -> None:
    model = BodyAndHead()
    clip_gradients_(model, "agc:0.1", exclude=[model.body.weight])
    assert torch.equal(model.body.weight.grad, torch.tensor([[0.6, 0.8], [0.0, 0.5]]))
    close(model.head.weight.grad, [[3e-4, 4e-4]], atol=1e-9)


def test_unit_norms_are_per_output_channel_and_broadcast() -> None:
    weight = torch.tensor([[3.0, 4.0], [6.0, 8.0]]).reshape(2, 2, 1, 1)
    norms = unit_norms(weight, 0)
    assert norms.shape == (2, 1, 1, 1)
    close(norms.flatten(), [5.0, 10.0])
    close(unit_norms(weight, 1).flatten(), [math.sqrt(45), math.sqrt(80)])
    close(unit_norms(weight, None), math.sqrt(125))


# ---------------------------------------------------------------------------------------------
# agc_tensor (PtychoPINN parity)


def test_agc_tensor_uses_the_whole_tensor_as_one_unit_and_clips_the_head() -> None:
    # body W = ((3, 4), (0, 0)), ‖W‖ = 5, limit 0.5; G = ((0, 0), (6, 8)), ‖G‖ = 10 -> G · 0.05.
    #   Unit-wise AGC would instead floor ‖W_1‖ at 1e-3 and scale G_1 to norm 1e-4.
    # head W = (3, 4), ‖W‖ = 5, limit 0.5; G = (6, 8) -> (0.3, 0.4): the head is clipped (parity).
    model = BodyAndHead()
    with_grad(model.body, weight=([[3.0, 4.0], [0.0, 0.0]], [[0.0, 0.0], [6.0, 8.0]]))
    with_grad(model.head, weight=([[3.0, 4.0]], [[6.0, 8.0]]))
    pre, post = clip_gradients_(model, "agc_tensor:0.1")
    close(model.body.weight.grad, [[0.0, 0.0], [0.3, 0.4]])
    close(model.head.weight.grad, [[0.3, 0.4]])
    close(pre, math.sqrt(100 + 100))
    close(post, math.sqrt(0.25 + 0.25))


def test_agc_tensor_leaves_small_gradients_and_excluded_parameters_alone() -> None:
    # body: ‖G‖ = √1.25 ≈ 1.12 < limit 1 · ‖W‖ = √125 ≈ 11.2 -> untouched; head excluded.
    model = BodyAndHead()
    clip_gradients_(model, "agc_tensor:1", exclude=model.head.parameters())
    assert torch.equal(model.body.weight.grad, torch.tensor([[0.6, 0.8], [0.0, 0.5]]))
    assert torch.equal(model.head.weight.grad, torch.tensor([[30.0, 40.0]]))


# ---------------------------------------------------------------------------------------------
# the edges


@pytest.mark.parametrize("spec", ["none", "norm:1", "value:1", "agc:0.01", "agc_tensor:0.01"])
def test_nan_gradients_do_not_raise_and_give_a_non_finite_pre_norm(spec: str) -> None:
    model = BodyAndHead()
    model.body.weight.grad[0, 0] = float("nan")
    pre, _ = clip_gradients_(model, spec)
    assert not torch.isfinite(pre)


def test_clip_gradients_accepts_a_clip_spec_object() -> None:
    model = Params(a=([1.0, 1.0], [3.0, 4.0]))
    pre, post = clip_gradients_(model, ClipSpec("norm", 1.0))
    close(pre, 5.0)
    close(post, 1.0, atol=1e-5)


def test_none_returns_pre_as_post_and_changes_nothing() -> None:
    model = Params(a=([1.0, 1.0], [3.0, 4.0]))
    pre, post = clip_gradients_(model, "none")
    assert post is pre
    assert torch.equal(model.a.grad, torch.tensor([3.0, 4.0]))


@pytest.mark.parametrize("spec", ["none", "norm:1", "value:1"])
def test_exclude_with_none_norm_or_value_is_an_input_error(spec: str) -> None:
    model = BodyAndHead()
    with pytest.raises(InputError, match="'exclude' applies only to agc"):
        clip_gradients_(model, spec, exclude=model.head.parameters())
    with pytest.raises(InputError, match="'exclude' applies only to agc"):
        clip_gradients_(model, spec, exclude=[])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("spec", ["norm:1", "value:0.5", "agc:0.01", "agc_tensor:0.01"])
def test_clipping_on_cuda_matches_cpu_and_keeps_norms_on_the_device(spec: str) -> None:
    model = random_mixed_model(2)
    cuda_model = copy.deepcopy(model).cuda()  # deepcopy drops .grad: copy them over
    for p_cuda, p in zip(cuda_model.parameters(), model.parameters(), strict=True):
        p_cuda.grad = p.grad.cuda()
    pre_cpu, post_cpu = clip_gradients_(model, spec)
    pre, post = clip_gradients_(cuda_model, spec)
    assert pre.is_cuda and post.is_cuda
    torch.testing.assert_close(pre.cpu(), pre_cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(post.cpu(), post_cpu, rtol=1e-5, atol=1e-5)
    for p_cuda, p in zip(cuda_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p_cuda.grad.cpu(), p.grad, rtol=1e-4, atol=1e-6)


def test_unit_norms_of_complex_tensors_are_modulus_norms() -> None:
    # columns (dim 1) of ((3+4j, 6j), (0, 8)): ‖(3+4j, 0)‖ = 5, ‖(6j, 8)‖ = 10; whole: √125
    weight = torch.tensor([[3 + 4j, 6j], [0, 8]], dtype=torch.complex64)
    norms = unit_norms(weight, 1)
    assert norms.shape == (1, 2) and norms.dtype == torch.float32
    close(norms.flatten(), [5.0, 10.0])
    close(unit_norms(weight, None), math.sqrt(125))
    close(unit_norms(torch.tensor([3 + 4j, 1j]), 0), [5.0, 1.0])


def agc_by_hand(weight: torch.Tensor, grad: torch.Tensor, clip_factor: float, unit_dim: int) -> torch.Tensor:
    """Brock et al.'s unit-wise rule in float64, written out independently of fnostab.clipping."""
    w, g = weight.detach().to(torch.complex128), grad.to(torch.complex128)
    others = tuple(d for d in range(w.ndim) if d != unit_dim)
    w_norm = w.abs().square().sum(dim=others, keepdim=True).sqrt()
    g_norm = g.abs().square().sum(dim=others, keepdim=True).sqrt()
    limit = clip_factor * w_norm.clamp_min(1e-3)
    scale = torch.where(g_norm > limit, limit / g_norm.clamp_min(1e-6), torch.ones_like(g_norm))
    return g * scale


@pytest.mark.parametrize("bands", ["positive", "both"])
@pytest.mark.parametrize("name", ["fno", "hybrid", "stable_hybrid"])
def test_agc_on_a_real_generator_skips_the_head_and_clips_spectral_weights_per_output_channel(
    name: str, bands: str
) -> None:
    from fnostab.models import build_generator

    torch.manual_seed(0)
    # stable_hybrid with LayerScale at 1: at its zero-γ default the spectral weights get no gradient
    # at step 0, and the comparison below would be 0 == 0.
    options = dict(block_init="layerscale", layerscale_init=1.0) if name == "stable_hybrid" else {}
    model = build_generator(name, N=16, width=4, modes=4, fno_blocks=2, bands=bands, **options)
    model(torch.rand(2, 1, 16, 16)).abs().sum().backward()
    head_before = [p.grad.clone() for p in model.head.parameters()]
    spectral = model.blocks[0].spectral
    spectral_before = {n: p.grad.clone() for n, p in spectral.named_parameters()}

    pre, post = clip_gradients_(model, "agc:0.01")

    assert torch.isfinite(pre) and post <= pre
    for p, before in zip(model.head.parameters(), head_before, strict=True):
        assert torch.equal(p.grad, before)  # excluded by default: not even multiplied by 1
    # (in, out, m, m) complex weights: one unit is one output channel, dim 1.
    for param_name, before in spectral_before.items():
        param = getattr(spectral, param_name)
        expected = agc_by_hand(param, before, 0.01, unit_dim=1)
        torch.testing.assert_close(param.grad.to(torch.complex128), expected, rtol=1e-5, atol=1e-12)
    # The comparison above must have exercised the clipping branch, not only scale 1.
    assert not torch.equal(spectral.weight.grad, spectral_before["weight"])

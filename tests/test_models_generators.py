"""Generators: shapes and dtypes, exact parameter counts, the width cap, gradients, checkpointing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from fnostab.config import ModelConfig
from fnostab.errors import InputError
from fnostab.models import (
    GENERATORS,
    HybridUNOGenerator,
    PtychoBlock,
    SpatialLifter,
    StablePtychoBlock,
    build_generator,
)
from fnostab.models.generators import AmpPhaseHead, RealImagHead

SMALL = dict(width=8, modes=4, fno_blocks=3)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("N", [32, 64])
def test_every_generator_maps_amplitude_to_a_complex64_object_of_the_same_size(name: str, N: int) -> None:
    torch.manual_seed(0)
    model = build_generator(name, N=N, **SMALL)
    out = model(torch.rand(2, 1, N, N))
    assert out.shape == (2, 1, N, N)
    assert out.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(out)).all()
    assert isinstance(model.lifter, SpatialLifter)
    assert isinstance(model.blocks, nn.ModuleList)
    assert isinstance(model.head, RealImagHead)
    assert model.config == ModelConfig(arch=name, **SMALL)


@pytest.mark.parametrize("N", [8, 16, 24, 33])
def test_fno_runs_at_any_size(N: int) -> None:
    model = build_generator("fno", N=N, **SMALL)
    assert model(torch.rand(1, 1, N, N)).shape == (1, 1, N, N)


def test_real_imag_head_puts_real_in_channel_0_and_imag_in_channel_1() -> None:
    head = RealImagHead(3)
    x = torch.randn(2, 3, 4, 4)
    raw = head.proj(x)
    out = head(x)
    assert torch.equal(out.real, raw[:, 0:1]) and torch.equal(out.imag, raw[:, 1:2])


@pytest.mark.parametrize("tanh_value", [0.5, -0.25, 0.9])
def test_amp_phase_head_gives_sigmoid_amplitude_and_pi_tanh_phase(tanh_value: float) -> None:
    # With the 1×1 convs' weights at zero each output is its bias everywhere: amplitude sigmoid(0) = 0.5
    # and phase π·tanh(atanh(t)) = π·t. Three values of t, one of them negative, pin the π scale and
    # the sign, which a missing π, a sigmoid in place of the tanh or an |·| would each get wrong.
    torch.manual_seed(0)
    model = build_generator("hybrid", N=16, head="amp_phase", **SMALL)
    assert isinstance(model.head, AmpPhaseHead)
    with torch.no_grad():
        model.head.amp.weight.zero_()
        model.head.amp.bias.zero_()
        model.head.phase.weight.zero_()
        model.head.phase.bias.fill_(math.atanh(tanh_value))
    out = model(torch.rand(2, 1, 16, 16))
    torch.testing.assert_close(out.abs(), torch.full((2, 1, 16, 16), 0.5))
    torch.testing.assert_close(out.angle(), torch.full((2, 1, 16, 16), math.pi * tanh_value))
    assert n_params(model.head) == 2 * (8 + 1)  # same count as the real/imag head


def test_hybrid_at_the_stage_a_configuration_has_17_202_402_parameters() -> None:
    model = build_generator("hybrid", N=64, width=32, modes=12, fno_blocks=4)
    assert n_params(model) == 17_202_402
    assert model.encoder_channels == [32, 64, 128, 256]
    # encoder blocks, then the bottleneck with modes // 2
    assert [b.spectral.modes for b in model.blocks] == [12, 12, 12, 12, 6]
    assert [b.spectral.in_channels for b in model.blocks] == [32, 64, 128, 256, 256]


def test_stable_hybrid_adds_only_the_norm_affine_parameters() -> None:
    hybrid = build_generator("hybrid", N=32, **SMALL)
    stable = build_generator("stable_hybrid", N=32, **SMALL)
    layerscale = build_generator("stable_hybrid", N=32, block_init="layerscale", **SMALL)
    block_widths = [8, 16, 32, 32]  # encoder levels, then the bottleneck
    assert n_params(stable) == n_params(hybrid) + 2 * sum(block_widths)  # γ and β
    assert n_params(layerscale) == n_params(hybrid) + 3 * sum(block_widths)  # γ, β and λ
    assert all(isinstance(b, StablePtychoBlock) for b in stable.blocks)
    assert all(type(b) is PtychoBlock for b in hybrid.blocks)
    assert stable.config.block_init == "zero_gamma" and layerscale.config.block_init == "layerscale"


def test_fno_at_the_ptychopinn_defaults_has_656_002_parameters() -> None:
    model = build_generator("fno", N=64)
    assert n_params(model) == 656_002
    assert len(model.blocks) == 4
    assert sum(isinstance(m, nn.Conv2d) for m in model.refiner) == 2


def test_both_bands_doubles_the_spectral_parameters() -> None:
    positive = build_generator("hybrid", N=32, **SMALL)
    both = build_generator("hybrid", N=32, bands="both", **SMALL)
    spectral = sum(b.spectral.weight.numel() for b in positive.blocks)
    assert n_params(both) == n_params(positive) + spectral


def test_width_cap_is_honoured_by_every_conv_in_the_notes_unit_test_configuration() -> None:
    # PtychoPINN's own test of the cap builds
    # HybridUNOGenerator(n_blocks=6, hidden_channels=32, max_hidden_channels=512, modes=4, C=1)
    torch.manual_seed(0)
    model = build_generator("hybrid", N=64, width=32, modes=4, fno_blocks=6, max_hidden_channels=512)
    assert model.encoder_channels == [32, 64, 128, 256, 512, 512]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert max(m.out_channels for m in convs) == 512
    assert max(m.in_channels for m in convs) == 1024  # skip concatenation at the deepest decoder stage
    assert max(b.spectral.out_channels for b in model.blocks) == 512
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 1, 64, 64) and out.dtype == torch.complex64


# The zero-γ blocks pass no gradient to their branch at init (γ = 0 multiplies it): by design, this is
# what starves the stable_hybrid arm (finding STABLE-GAMMA-001). For 3 levels: blocks 0, 1, 2 and the
# bottleneck 3.
ZERO_GAMMA_BLOCKED = {f"blocks.{i}.{p}" for i in range(4) for p in ("spectral.weight", "local.weight", "local.bias")}


@pytest.mark.parametrize(
    ("name", "options", "blocked"),
    [
        ("fno", {}, set()),
        ("hybrid", {}, set()),
        ("hybrid", {"bands": "both", "head": "amp_phase"}, set()),
        ("stable_hybrid", {"block_init": "layerscale"}, set()),
        ("stable_hybrid", {"block_init": "zero_gamma"}, ZERO_GAMMA_BLOCKED),
    ],
)
def test_every_parameter_gets_a_gradient_except_those_blocked_by_zero_gamma(
    name: str, options: dict, blocked: set[str]
) -> None:
    torch.manual_seed(0)
    model = build_generator(name, N=32, **{**SMALL, **options})
    out = model(torch.rand(2, 1, 32, 32))
    (torch.view_as_real(out) * torch.randn(2, 1, 32, 32, 2)).sum().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().max() > 0}
    assert no_grad == blocked
    for n in blocked:
        assert torch.equal(model.get_parameter(n).grad, torch.zeros_like(model.get_parameter(n)))


@pytest.mark.parametrize(
    ("name", "options"),
    [("fno", {}), ("hybrid", {"bands": "both"}), ("stable_hybrid", {"block_init": "layerscale"})],
)
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(name: str, options: dict) -> None:
    def run(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = build_generator(name, N=32, checkpointing=checkpointing, **{**SMALL, **options})
        x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
        out = model(x)
        torch.view_as_real(out).square().mean().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters()}

    plain_out, plain_grads = run(False)
    ckpt_out, ckpt_grads = run(True)
    assert torch.equal(plain_out, ckpt_out)
    assert plain_grads.keys() == ckpt_grads.keys()
    for n, g in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[n], g, rtol=1e-5, atol=1e-7, msg=n)


def test_checkpointing_is_skipped_under_no_grad() -> None:
    model = build_generator("hybrid", N=16, checkpointing=True, **SMALL)
    with torch.no_grad():
        out = model(torch.rand(1, 1, 16, 16))
    assert out.shape == (1, 1, 16, 16)


def test_generators_run_under_bf16_autocast_and_still_return_complex64() -> None:
    torch.manual_seed(0)
    model = build_generator("hybrid", N=16, **SMALL)
    x = torch.rand(2, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.complex64
    reference = model(x)
    assert (out - reference).abs().max().item() < 0.05 * reference.abs().max().item()


def test_hybrid_rejects_an_input_that_its_levels_cannot_halve() -> None:
    model = HybridUNOGenerator(ModelConfig(width=4, modes=2, fno_blocks=3))
    with pytest.raises(InputError, match=r"input map \(18, 18\) does not fit a 3-level U-NO: .* multiples of .* 4"):
        model(torch.rand(1, 1, 18, 18))


def test_channels_last_convs_changes_layout_not_results_and_keeps_spectral_weights_mode_major() -> None:
    from fnostab.models import channels_last_convs

    torch.manual_seed(0)
    plain = build_generator("hybrid", N=32, width=8, modes=4, fno_blocks=2)
    converted = channels_last_convs(copy.deepcopy(plain))
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(converted(x), plain(x), rtol=1e-5, atol=1e-6)
    assert converted.lifter.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    spectral = converted.blocks[0].spectral.weight
    assert spectral.stride() == plain.blocks[0].spectral.weight.stride()

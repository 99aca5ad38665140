"""Registry: names, options and geometry are validated before anything is allocated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fnostab.config import ModelConfig
from fnostab.errors import ConfigError
from fnostab.models import (
    GENERATORS,
    HybridUNOGenerator,
    StableHybridUNOGenerator,
    StablePtychoBlock,
    build_generator,
    geometry_error,
)


@pytest.fixture
def no_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any nn.Module is constructed: errors must come before allocation."""

    def refuse(self: nn.Module, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"{type(self).__name__} was constructed before the configuration was rejected")

    monkeypatch.setattr(nn.Module, "__init__", refuse)


def test_registry_lists_the_three_generators_and_resolves_stable_hybrid() -> None:
    assert sorted(GENERATORS) == ["fno", "hybrid", "stable_hybrid"]
    assert GENERATORS["stable_hybrid"] is StableHybridUNOGenerator
    model = build_generator("stable_hybrid", N=16, width=4, modes=2, fno_blocks=2)
    assert isinstance(model, StableHybridUNOGenerator)
    assert [type(b) for b in model.blocks] == [StablePtychoBlock] * 3


def test_unknown_generator_name_lists_the_valid_names(no_allocation: None) -> None:
    with pytest.raises(ConfigError, match=r"unknown generator 'unet': expected one of fno, hybrid, stable_hybrid"):
        build_generator("unet", N=64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(N=60), r"hybrid with fno_blocks=4 does not fit N=60: N=60 is not divisible by 2\^\(fno_blocks−1\) = 8"),
        (
            dict(N=64, fno_blocks=8),
            r"hybrid with fno_blocks=8 does not fit N=64: its coarsest map would be N / 128 = 0.5 px a side, "
            r"below the 2×2 minimum; use N a multiple of 128 and at least 256, or fno_blocks ≤ 6",
        ),
        (dict(N=8, fno_blocks=4), r"coarsest map would be N / 8 = 1 px a side, below the 2×2 minimum"),
        (dict(N=64, modes=0), r"invalid modes: Input should be greater than or equal to 1 \(got 0\)"),
        (dict(N=64, width=0), r"invalid width: Input should be greater than or equal to 1 \(got 0\)"),
        (dict(N=64, fno_blocks=0), r"invalid fno_blocks: Input should be greater than or equal to 1"),
        (dict(N=64, width=32.0), r"invalid width: Input should be a valid integer \(got 32.0\)"),
        (dict(N=64, width=True), r"invalid width: Input should be a valid integer \(got True\)"),
        (dict(N=64, block_init="rezero"), r"invalid block_init: Input should be 'zero_gamma' or 'layerscale'"),
        (dict(N=64, bands="all"), r"invalid bands: Input should be 'positive' or 'both' \(got 'all'\)"),
        (dict(N=64, head="amp"), r"invalid head: Input should be 'real_imag' or 'amp_phase'"),
        (
            dict(N=64, max_hidden_channels=16),
            r"invalid max_hidden_channels: must be ≥ width \(32\), or unset for no cap \(got 16\)",
        ),
        (dict(N=64, layerscale_init=0.0), r"invalid layerscale_init: Input should be greater than 0 \(got 0.0\)"),
        (dict(N=64, cnn_blocks=-1), r"invalid cnn_blocks: Input should be greater than or equal to 0"),
        (dict(N=64, checkpointing=1), r"invalid checkpointing: Input should be a valid boolean"),
        (dict(N=64, gradient_checkpointing=True), r"invalid gradient_checkpointing: Extra inputs are not permitted"),
        (dict(N=0), r"N must be ≥ 1, found 0"),
        (dict(N=16, channels=0), r"channels must be ≥ 1, found 0"),
    ],
)
def test_invalid_configurations_raise_config_error_before_allocating(
    options: dict, message: str, no_allocation: None
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_generator("hybrid", **options)


def test_a_config_and_options_together_are_refused(no_allocation: None) -> None:
    with pytest.raises(ConfigError, match=r"give a ModelConfig or options, not both \(got width\)"):
        build_generator(ModelConfig(), N=64, width=8)


def test_a_generator_refuses_a_config_of_another_architecture(no_allocation: None) -> None:
    with pytest.raises(ConfigError, match=r"HybridUNOGenerator builds arch 'hybrid', the config asks for 'fno'"):
        HybridUNOGenerator(ModelConfig(arch="fno"))


def test_the_config_and_the_name_shorthand_build_the_same_weights() -> None:
    config = ModelConfig(arch="stable_hybrid", width=4, modes=2, fno_blocks=2, block_init="layerscale")
    torch.manual_seed(0)
    from_config = build_generator(config, 16)
    torch.manual_seed(0)
    from_name = build_generator("stable_hybrid", N=16, width=4, modes=2, fno_blocks=2, block_init="layerscale")
    assert from_config.config == from_name.config == config
    assert all(torch.equal(a, b) for a, b in zip(from_config.state_dict().values(), from_name.state_dict().values()))


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        build_generator("hybrid", N=63)


def test_geometry_rule_per_architecture() -> None:
    def error(arch: str, N: int, fno_blocks: int) -> str | None:
        return geometry_error(ModelConfig(arch=arch, fno_blocks=fno_blocks), N)

    assert error("hybrid", N=256, fno_blocks=8) is None  # 2×2 bottleneck
    assert error("hybrid", N=64, fno_blocks=6) is None
    assert error("hybrid", N=48, fno_blocks=4) is None  # 6×6 bottleneck: not a power of two
    assert error("fno", N=17, fno_blocks=8) is None  # full resolution: any N ≥ 2
    assert error("fno", N=1, fno_blocks=4) == (
        "fno with fno_blocks=4 does not fit N=1: its coarsest map would be N / 1 = 1 px a side, "
        "below the 2×2 minimum; use N ≥ 2"
    )


def test_options_an_architecture_does_not_use_are_validated_then_ignored() -> None:
    model = build_generator("fno", N=16, width=4, modes=2, fno_blocks=1, max_hidden_channels=8, block_init="layerscale")
    plain = build_generator("fno", N=16, width=4, modes=2, fno_blocks=1)
    assert model.config.block_init == "layerscale" and model.config.max_hidden_channels == 8
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert [p.shape for p in model.parameters()] == [p.shape for p in plain.parameters()]


def test_channels_set_the_lifter_input_and_the_head_output() -> None:
    model = build_generator("hybrid", N=16, width=4, modes=2, fno_blocks=2, channels=3)
    assert model.lifter.conv_in.in_channels == 3
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    lifter_only = HybridUNOGenerator(ModelConfig(width=4, modes=2, fno_blocks=2), in_channels=3)
    assert lifter_only(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)

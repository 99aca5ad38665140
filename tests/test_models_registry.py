"""Registry: names, options and geometry are validated before anything is allocated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fnostab.errors import ConfigError
from fnostab.models import GENERATORS, StableHybridUNOGenerator, StablePtychoBlock, build_generator, geometry_error


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
        (dict(N=64, modes=0), r"modes must be ≥ 1, found 0"),
        (dict(N=64, width=0), r"width must be ≥ 1, found 0"),
        (dict(N=64, fno_blocks=0), r"fno_blocks must be ≥ 1, found 0"),
        (dict(N=64, width=32.0), r"width must be an integer ≥ 1, found 32.0 \(float\)"),
        (dict(N=64, block_init="rezero"), r"unknown block init 'rezero': expected one of zero_gamma, layerscale"),
        (dict(N=64, bands="all"), r"unknown bands 'all': expected one of positive, both"),
        (dict(N=64, head="amp"), r"unknown head 'amp': expected one of real_imag, amp_phase"),
        (
            dict(N=64, max_hidden_channels=16),
            r"max_hidden_channels must be ≥ width \(32\) or None for no cap, found 16",
        ),
        (dict(N=64, layerscale_init=0.0), r"layerscale_init must be a number > 0, found 0.0"),
        (dict(N=64, cnn_blocks=-1), r"cnn_blocks must be ≥ 0, found -1"),
        (dict(N=0), r"N must be ≥ 1, found 0"),
    ],
)
def test_invalid_configurations_raise_config_error_before_allocating(
    options: dict, message: str, no_allocation: None
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_generator("hybrid", **options)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        build_generator("hybrid", N=63)


def test_geometry_rule_per_architecture() -> None:
    assert geometry_error("hybrid", N=256, fno_blocks=8) is None  # 2×2 bottleneck
    assert geometry_error("hybrid", N=64, fno_blocks=6) is None
    assert geometry_error("hybrid", N=48, fno_blocks=4) is None  # 6×6 bottleneck: not a power of two
    assert geometry_error("fno", N=17, fno_blocks=8) is None  # full resolution: any N ≥ 2
    assert geometry_error("fno", N=1, fno_blocks=4) == (
        "fno with fno_blocks=4 does not fit N=1: its coarsest map would be N / 1 = 1 px a side, "
        "below the 2×2 minimum; use N ≥ 2"
    )


def test_options_an_architecture_does_not_use_are_validated_then_ignored() -> None:
    model = build_generator("fno", N=16, width=4, modes=2, fno_blocks=1, max_hidden_channels=8, block_init="layerscale")
    assert "max_hidden_channels" not in model.config and "block_init" not in model.config
    assert model.config == {
        "name": "fno", "N": 16, "in_channels": 1, "out_channels": 1, "width": 4, "modes": 2, "fno_blocks": 1,
        "cnn_blocks": 2, "bands": "positive", "head": "real_imag", "gradient_checkpointing": False,
    }  # fmt: skip


def test_in_channels_sets_the_lifter_input() -> None:
    model = build_generator("hybrid", N=16, width=4, modes=2, fno_blocks=2, in_channels=3)
    assert model.lifter.conv_in.in_channels == 3
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)

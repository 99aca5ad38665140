"""Blocks: the residual identities at init, InstanceNorm statistics, LayerScale, lifter shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fnostab.errors import ConfigError
from fnostab.models import PtychoBlock, SpatialLifter, StablePtychoBlock


def test_ptycho_block_is_identity_with_zero_branch_weights_and_otherwise_adds_gelu_of_branch() -> None:
    torch.manual_seed(0)
    block = PtychoBlock(4, 3)
    x = torch.randn(2, 4, 8, 8)
    expected = x + F.gelu(block.spectral(x) + block.local(x))
    torch.testing.assert_close(block(x), expected)
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
    assert torch.equal(block(x), x)


def test_zero_gamma_block_is_exactly_the_identity_at_init() -> None:
    torch.manual_seed(0)
    block = StablePtychoBlock(8, 4, init="zero_gamma")
    assert torch.equal(block.norm.weight, torch.zeros(8)) and torch.equal(block.norm.bias, torch.zeros(8))
    assert block.layerscale is None
    x = 10 * torch.randn(3, 8, 16, 16)
    assert torch.equal(block(x), x)


def test_instance_norm_output_has_zero_mean_unit_std_per_channel_before_affine() -> None:
    torch.manual_seed(0)
    block = StablePtychoBlock(6, 4, init="layerscale")  # norm at default init: affine is the identity
    seen: list[torch.Tensor] = []
    block.norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = 3 + 5 * torch.randn(2, 6, 16, 16)  # a large mean that the norm must remove
    block(x)
    (update,) = seen
    mean = update.mean(dim=(-2, -1))
    std = update.std(dim=(-2, -1), unbiased=False)
    assert mean.abs().max().item() < 1e-5
    assert std.sub(1).abs().max().item() < 1e-3  # eps 1e-5 makes it a hair below 1
    # Same statistics in eval mode: InstanceNorm keeps no running statistics.
    block.eval()
    block(x)
    torch.testing.assert_close(seen[1], update)


def test_layerscale_block_adds_lambda_times_the_normalised_update() -> None:
    torch.manual_seed(0)
    block = StablePtychoBlock(5, 3, init="layerscale", layerscale_init=1e-3)
    assert torch.equal(block.layerscale.detach(), torch.full((5,), 1e-3))
    assert torch.equal(block.norm.weight.detach(), torch.ones(5))
    x = torch.randn(2, 5, 8, 8)
    update = F.instance_norm(F.gelu(block.spectral(x) + block.local(x)), eps=1e-5)
    torch.testing.assert_close(block(x), x + 1e-3 * update)


def test_stable_block_names_the_submodules_probes_hook() -> None:
    names = dict(StablePtychoBlock(4, 2).named_children())
    assert {"spectral", "local", "act", "norm"} <= set(names)
    assert isinstance(names["norm"], torch.nn.InstanceNorm2d) and names["norm"].affine
    assert dict(PtychoBlock(4, 2).named_children()).keys() == {"spectral", "local", "act"}


def test_unknown_block_init_is_a_config_error_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown block init 'rezero': expected one of zero_gamma, layerscale"):
        StablePtychoBlock(4, 2, init="rezero")


def test_spatial_lifter_is_conv_gelu_conv_with_biases() -> None:
    torch.manual_seed(0)
    lifter = SpatialLifter(1, 8)
    x = torch.randn(2, 1, 12, 12)
    expected = lifter.conv_out(F.gelu(lifter.conv_in(x)))
    torch.testing.assert_close(lifter(x), expected)
    assert lifter(x).shape == (2, 8, 12, 12)
    # 9·1·8 + 8 + 9·8·8 + 8 (docs/generators.md, lifter term with C = 1)
    assert sum(p.numel() for p in lifter.parameters()) == 9 * 8 + 8 + 9 * 64 + 8

"""ActivationMonitor: statistics pinned to direct computations, selection by type, hook hygiene."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from fnostab.hooks import ActivationMonitor
from fnostab.hooks.activations import low_band_energy
from fnostab.models import build_generator
from fnostab.models.blocks import PtychoBlock


def identity_monitor(**kwargs) -> tuple[nn.Module, ActivationMonitor]:
    """A model whose only probed module is an nn.Identity, hooked as the 'lifter' via the type list."""
    model = nn.Sequential(nn.Identity())
    return model, ActivationMonitor(model, lifter_types=(nn.Identity,), block_types=(), **kwargs)


def all_forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_abs_statistics_pooled_over_batches_equal_direct_computation() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(2, 3, 16, 16) * 2 + 0.5, torch.randn(3, 3, 16, 16)]
    model, mon = identity_monitor()
    with mon:
        for b in batches:
            model(b)
        report = mon.report()
    stats = report["layers"]["0"]
    a = torch.cat([b.flatten() for b in batches]).abs().double()
    assert stats["kind"] == "lifter" and stats["type"] == "Identity" and stats["depth"] is None
    assert stats["n_calls"] == 2 and stats["numel"] == a.numel()
    assert stats["mean_abs"] == pytest.approx(a.mean().item(), rel=1e-12)
    assert stats["std_abs"] == pytest.approx(a.std().item(), rel=1e-10)  # unbiased, like torch.std
    assert stats["quantiles_exact"] is True
    for key, q in (("p50_abs", 0.5), ("p95_abs", 0.95), ("p99_abs", 0.99)):
        assert stats[key] == pytest.approx(torch.quantile(a.float(), q).item(), rel=1e-6)
    assert stats["n_nonfinite"] == 0
    assert report["summary"]["n_batches"] == 2
    assert report["summary"]["n_samples"] == 5
    json.dumps(report)  # plain Python values only


def test_quantiles_beyond_the_sample_cap_come_from_a_reproducible_uniform_sample() -> None:
    torch.manual_seed(1)
    batches = [torch.rand(50_000), torch.rand(50_000)]
    results = []
    for _ in range(2):
        model, mon = identity_monitor(quantile_sample_size=8192, seed=3)
        with mon:
            for b in batches:
                model(b)
            results.append(mon.report()["layers"]["0"])
    stats = results[0]
    assert stats["quantiles_exact"] is False
    assert stats["p50_abs"] == pytest.approx(0.50, abs=0.02)
    assert stats["p95_abs"] == pytest.approx(0.95, abs=0.01)
    assert stats["p99_abs"] == pytest.approx(0.99, abs=0.005)
    assert results[0] == results[1]  # same seed, same sample
    # mean and std stay exact: they do not use the sample
    a = torch.cat(batches).double()
    assert stats["mean_abs"] == pytest.approx(a.mean().item(), rel=1e-12)


def test_non_finite_values_are_counted() -> None:
    model, mon = identity_monitor()
    with mon:
        model(torch.tensor([1.0, math.nan, -math.inf, 2.0]))
        assert mon.report()["layers"]["0"]["n_nonfinite"] == 2


def grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")


def lowfreq_ratio_of(image: torch.Tensor) -> float:
    model, mon = identity_monitor()
    with mon:
        model(image.float().expand(2, 3, *image.shape))
        return mon.report()["layers"]["0"]["low_freq_ratio"]


def test_low_freq_ratio_is_one_for_low_and_zero_for_high_frequency_images() -> None:
    y, x = grid(32)
    low = torch.cos(2 * math.pi * y / 32) + 0.5 * torch.sin(2 * math.pi * 3 * x / 32) + 1.0
    checkerboard = (-1.0) ** (x + y)
    assert lowfreq_ratio_of(low) == pytest.approx(1.0, abs=1e-6)
    assert lowfreq_ratio_of(checkerboard) == pytest.approx(0.0, abs=1e-6)
    # k = 4 = 32 // 8 is the first frequency outside the band
    assert lowfreq_ratio_of(torch.cos(2 * math.pi * 4 * y / 32)) == pytest.approx(0.0, abs=1e-6)


def test_low_freq_ratio_counts_negative_row_frequencies_like_positive_ones() -> None:
    y, x = grid(32)
    # A real wave along (k_y, k_x) = (−1, +1) lives in rfft row 31: still in the low band.
    assert lowfreq_ratio_of(torch.cos(2 * math.pi * (x - y) / 32)) == pytest.approx(1.0, abs=1e-6)
    assert lowfreq_ratio_of(torch.cos(2 * math.pi * (x + y) / 32)) == pytest.approx(1.0, abs=1e-6)


def test_low_freq_ratio_is_the_energy_fraction_of_a_mixture() -> None:
    y, x = grid(32)
    a, b = 2.0, 0.5
    image = a * torch.cos(2 * math.pi * y / 32) + b * (-1.0) ** (x + y)
    # Energies: a²·N²/2 for the cosine, b²·N² for the checkerboard.
    expected = (a * a / 2) / (a * a / 2 + b * b)
    assert lowfreq_ratio_of(image) == pytest.approx(expected, rel=1e-6)
    assert lowfreq_ratio_of(image.flip(0)) == pytest.approx(expected, rel=1e-6)


def test_low_band_total_energy_is_the_signal_energy_for_real_and_complex_maps() -> None:
    torch.manual_seed(2)
    for shape in ((2, 3, 16, 16), (1, 2, 15, 9)):
        real = torch.randn(shape, dtype=torch.float64)
        assert low_band_energy(real)[1].item() == pytest.approx(real.square().sum().item(), rel=1e-10)
        z = torch.complex(real, torch.randn(shape, dtype=torch.float64))
        assert low_band_energy(z)[1].item() == pytest.approx(z.abs().square().sum().item(), rel=1e-10)


def test_sparsity_and_branch_ratio_of_a_real_block_equal_direct_computation() -> None:
    torch.manual_seed(3)
    block = PtychoBlock(4, 3)
    model = nn.Sequential(block)
    x = torch.randn(2, 4, 16, 16)
    with ActivationMonitor(model) as mon:
        model(x)
        layers = mon.report()["layers"]
    assert set(layers) == {"0", "0.spectral", "0.local", "0.act"}
    with torch.no_grad():
        spectral, local = block.spectral(x), block.local(x)
        act = block.act(spectral + local)
        out = block(x)
    assert layers["0.act"]["sparsity"] == pytest.approx((act <= 0).double().mean().item(), abs=1e-12)
    assert 0.2 < layers["0.act"]["sparsity"] < 0.8
    assert layers["0"]["branch_ratio"] == pytest.approx(
        (spectral.abs().double().mean() / local.abs().double().mean()).item(), rel=1e-6
    )
    assert layers["0"]["mean_abs"] == pytest.approx(out.abs().double().mean().item(), rel=1e-6)
    assert layers["0.spectral"]["mean_abs"] == pytest.approx(spectral.abs().double().mean().item(), rel=1e-6)
    assert "sparsity" not in layers["0"] and "branch_ratio" not in layers["0.act"]
    assert {layers[k]["depth"] for k in layers} == {0}


@pytest.mark.parametrize("name", ["fno", "hybrid", "stable_hybrid"])
def test_every_block_its_branches_and_the_lifter_are_probed_on_real_generators(name: str) -> None:
    torch.manual_seed(4)
    model = build_generator(name, N=16, width=4, modes=3, fno_blocks=2)
    with ActivationMonitor(model) as mon:
        with torch.no_grad():
            model(torch.rand(3, 1, 16, 16))
        report = mon.report()
    layers = report["layers"]
    n_blocks = len(model.blocks)
    expected = {"lifter"}
    for i in range(n_blocks):
        expected |= {f"blocks.{i}", f"blocks.{i}.spectral", f"blocks.{i}.local", f"blocks.{i}.act"}
    assert set(layers) == expected
    for i in range(n_blocks):
        assert layers[f"blocks.{i}"]["depth"] == i
        assert layers[f"blocks.{i}.spectral"]["kind"] == "spectral"
        assert layers[f"blocks.{i}.local"]["kind"] == "local"
        assert layers[f"blocks.{i}"]["branch_ratio"] > 0
    assert all(rec["n_calls"] == 1 for rec in layers.values())
    assert report["summary"]["n_blocks"] == n_blocks
    assert report["summary"]["n_batches"] == 1 and report["summary"]["n_samples"] == 3


def test_gradient_checkpointing_recomputation_is_not_counted_twice() -> None:
    torch.manual_seed(5)
    model = build_generator("fno", N=16, width=4, modes=3, fno_blocks=2, checkpointing=True)
    with ActivationMonitor(model) as mon:
        model(torch.rand(2, 1, 16, 16)).abs().sum().backward()
        layers = mon.report()["layers"]
    assert all(rec["n_calls"] == 1 for rec in layers.values())


def test_statistics_hold_no_autograd_graph() -> None:
    model = build_generator("fno", N=16, width=4, modes=3, fno_blocks=1)
    with ActivationMonitor(model) as mon:
        model(torch.rand(1, 1, 16, 16)).abs().sum().backward()
        accs = [entry.acc for entry in mon._hooked]
    tensors = [t for acc in accs for t in (acc.mean, acc.m2, acc.sample, acc.low_energy) if t is not None]
    assert tensors and not any(t.requires_grad for t in tensors)


class Scale(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c * x


def test_drift_is_flagged_on_a_chain_that_doubles_and_not_on_a_flat_one() -> None:
    x = torch.full((2, 1, 8, 8), 0.5)
    doubling = nn.Sequential(*(Scale(2.0) for _ in range(4)))
    with ActivationMonitor(doubling, lifter_types=(), block_types=(Scale,)) as mon:
        doubling(x)
        summary = mon.report()["summary"]
    # mean |h_i| = 0.5·2^(i+1) = 1, 2, 4, 8 → least-squares slope 2.3, mean 3.75
    assert summary["block_mean_abs"] == pytest.approx([1.0, 2.0, 4.0, 8.0])
    assert summary["depth_slope"] == pytest.approx(2.3)
    assert summary["depth_relative_slope"] == pytest.approx(2.3 / 3.75)
    assert summary["drift"] is True

    flat = nn.Sequential(*(Scale(1.0) for _ in range(4)))
    with ActivationMonitor(flat, lifter_types=(), block_types=(Scale,)) as mon:
        flat(x)
        summary = mon.report()["summary"]
    assert summary["depth_slope"] == pytest.approx(0.0)
    assert summary["drift"] is False


def test_hooks_are_removed_on_exit_also_on_exception() -> None:
    model = build_generator("hybrid", N=16, width=4, modes=3, fno_blocks=2)
    assert all_forward_hooks(model) == 0
    with ActivationMonitor(model) as mon:
        assert all_forward_hooks(model) == len(mon.names) + 1  # + the batch counter on the model
    assert all_forward_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationMonitor(model) as mon:
            raise RuntimeError("boom")
    assert all_forward_hooks(model) == 0
    with torch.no_grad():
        model(torch.rand(1, 1, 16, 16))
    assert mon.report()["summary"]["n_batches"] == 0


def test_reset_forgets_statistics_and_counts() -> None:
    model, mon = identity_monitor()
    with mon:
        model(torch.ones(4))
        mon.reset()
        report = mon.report()
        assert report["summary"]["n_batches"] == 0
        assert report["layers"]["0"]["mean_abs"] is None
        model(torch.full((4,), 3.0))
        assert mon.report()["layers"]["0"]["mean_abs"] == pytest.approx(3.0)


def test_a_model_without_probed_modules_is_rejected() -> None:
    with pytest.raises(ValueError, match="block_types"):
        ActivationMonitor(nn.Sequential(nn.Linear(2, 2)))

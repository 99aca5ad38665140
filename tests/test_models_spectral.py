"""SpectralConv2d: numbers against an explicit DFT, PtychoPINN's initialisation, bands, autocast."""

from __future__ import annotations

import math

import pytest
import torch

from fnostab.errors import ConfigError
from fnostab.models import SpectralConv2d


def direct_dft_reference(layer: SpectralConv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's output from explicit sums in float64, with no FFT.

    X[k, l] = Σ_{h,w} x[h, w] e^{-2πi(kh/H + lw/W)}; Y[o, k, l] = Σ_i X[i, k, l] W[i, o, k', l] on the
    kept rows and columns; y[h, w] = 1/(HW) Σ_k Σ_l a_l Re(Y[k, l] e^{+2πi(kh/H + lw/W)}) with a_l = 2
    except a_0 = 1 and a_{W/2} = 1 (even W): the real inverse of a half spectrum.
    """
    B, n_in, H, W = x.shape
    m = layer.modes
    m_w = min(m, W // 2 + 1)
    if layer.bands == "positive":
        rows = [(k, layer.weight, k) for k in range(min(m, H))]
    else:
        n_pos, n_neg = min(m, math.ceil(H / 2)), min(m, H // 2)
        rows = [(k, layer.weight, k) for k in range(n_pos)]
        # Row r holds frequency r − H; weight_neg[:, :, i] multiplies frequency i − m.
        rows += [(r, layer.weight_neg, m - (H - r)) for r in range(H - n_neg, H)]
    h = torch.arange(H, dtype=torch.float64)
    w = torch.arange(W, dtype=torch.float64)
    x64 = x.to(torch.float64)
    y = torch.zeros(B, layer.out_channels, H, W, dtype=torch.float64)
    for k, weight, wk in rows:
        for col in range(m_w):
            phase = 2 * math.pi * (k * h[:, None] / H + col * w[None, :] / W)  # (H, W)
            X = (x64 * torch.exp(-1j * phase)).sum(dim=(-2, -1))  # (B, I)
            Y = X @ weight.detach()[:, :, wk, col].to(torch.complex128)  # (B, O)
            a = 1.0 if (col == 0 or 2 * col == W) else 2.0
            y += a * (Y[:, :, None, None] * torch.exp(1j * phase)).real
    return y / (H * W)


@pytest.mark.parametrize("bands", ["positive", "both"])
@pytest.mark.parametrize(
    ("H", "W", "modes"),
    [(8, 8, 3), (9, 7, 3), (6, 10, 4), (4, 4, 5)],  # small maps: m_h, m_w clipped; H ≤ m keeps every row
)
def test_spectral_conv_matches_an_explicit_dft(bands: str, H: int, W: int, modes: int) -> None:
    torch.manual_seed(0)
    layer = SpectralConv2d(3, 2, modes, bands=bands)
    x = torch.randn(2, 3, H, W)
    expected = direct_dft_reference(layer, x)
    got = layer(x)
    assert got.dtype == torch.float32 and got.shape == (2, 2, H, W)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_positive_band_drops_negative_row_frequencies_and_both_keeps_them() -> None:
    # x = cos(2πh/H) has row frequencies +1 and −1 (column frequency 0). With unit weights the "both"
    # layer passes it unchanged; PtychoPINN's positive band keeps only k = +1, whose real inverse
    # transform is half the cosine.
    H = W = 16
    x = torch.cos(2 * math.pi * torch.arange(H) / H)[:, None].expand(H, W)[None, None].contiguous()
    positive = SpectralConv2d(1, 1, 4, bands="positive")
    both = SpectralConv2d(1, 1, 4, bands="both")
    with torch.no_grad():
        for weight in (positive.weight, both.weight, both.weight_neg):
            weight.fill_(1.0)
    torch.testing.assert_close(both(x), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(positive(x), 0.5 * x, atol=1e-5, rtol=0)


def test_spectral_conv_init_is_complex_normal_with_std_one_over_sqrt_in() -> None:
    torch.manual_seed(123)
    layer = SpectralConv2d(64, 32, 6)
    torch.manual_seed(123)
    expected = torch.randn(64, 32, 6, 6, dtype=torch.cfloat) / math.sqrt(64)
    w = layer.weight.detach()
    assert w.dtype == torch.complex64 and w.shape == (64, 32, 6, 6)
    assert torch.equal(w, expected)  # PtychoPINN's draw, value for value
    # Real and imaginary parts each have std 1/sqrt(2·in); |w|² has mean 1/in.
    assert w.real.std().item() == pytest.approx(1 / math.sqrt(2 * 64), rel=0.02)
    assert w.imag.std().item() == pytest.approx(1 / math.sqrt(2 * 64), rel=0.02)
    assert w.abs().square().mean().item() == pytest.approx(1 / 64, rel=0.02)


def test_spectral_conv_allocates_m_by_m_weights_whatever_the_map_and_declares_agc_dims() -> None:
    positive = SpectralConv2d(4, 5, 12)
    both = SpectralConv2d(4, 5, 12, bands="both")
    assert [(n, tuple(p.shape)) for n, p in positive.named_parameters()] == [("weight", (4, 5, 12, 12))]
    assert [(n, tuple(p.shape)) for n, p in both.named_parameters()] == [
        ("weight", (4, 5, 12, 12)),
        ("weight_neg", (4, 5, 12, 12)),
    ]
    assert positive.agc_output_dims == {"weight": 1}  # only existing parameters: the clipper rejects others
    assert both.agc_output_dims == {"weight": 1, "weight_neg": 1}
    # On a 4×4 map only the 4×3 block is used; the rest of the weight gets exactly zero gradient.
    (positive(torch.randn(2, 4, 4, 4)) * torch.randn(2, 5, 4, 4)).sum().backward()
    g = positive.weight.grad
    assert g.shape == (4, 5, 12, 12)
    assert g[:, :, :4, :3].abs().min() > 0
    assert g[:, :, 4:].abs().max() == 0 and g[:, :, :, 3:].abs().max() == 0


@pytest.mark.parametrize("H", [7, 8, 24, 25])
def test_both_bands_never_overlap(H: int) -> None:
    layer = SpectralConv2d(1, 1, 12, bands="both")
    n_pos, n_neg = layer.row_bands(H)
    assert n_pos + n_neg <= H
    assert (n_pos, n_neg) == (min(12, math.ceil(H / 2)), min(12, H // 2))


def test_spectral_conv_runs_under_bf16_autocast_and_returns_float32() -> None:
    torch.manual_seed(0)
    layer = SpectralConv2d(3, 3, 4)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, layer(x.bfloat16().float()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"modes": 0}, "modes must be ≥ 1, found 0"), ({"bands": "negative"}, "expected one of positive, both")],
)
def test_spectral_conv_rejects_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SpectralConv2d(2, 2, **{"modes": 4, **kwargs})

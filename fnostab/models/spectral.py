"""Spectral convolution: the Fourier layer of an FNO (Li et al., ICLR 2021, arXiv:2010.08895).

``SpectralConv2d`` multiplies a low-frequency block of the 2-D real FFT of its input by learned complex
weights, one (in × out) matrix per kept mode, and transforms back. With ``bands="positive"`` (the
default) it is the layer that actually ran in PtychoPINN, ``_FallbackSpectralConv2d``
(docs/generators.md, Spectral convolution): only the non-negative row frequencies ``[0, min(m, H))`` are kept, so the
published parameter counts (17,202,402 for the Stage-A ``hybrid``, docs/generators.md) come out exactly.
``bands="both"`` adds the negative row band with a second weight, as the standard FNO does.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from fnostab.errors import ConfigError

Bands = Literal["positive", "both"]
BANDS: tuple[str, ...] = ("positive", "both")


def _mode_major_randn(in_channels: int, out_channels: int, modes: int) -> Tensor:
    """A complex normal (in, out, m, m) tensor with total std 1/sqrt(in), stored mode-major.

    The values are exactly ``randn(in, out, m, m, cfloat) / sqrt(in)`` (same RNG stream as the
    PtychoPINN layer), but the memory is laid out as (m, m, in, out), so that
    ``weight.permute(2, 3, 0, 1)`` is contiguous. The forward pass then hands the weight to a batched
    matmul over modes without copying it: faster on CPU than ``einsum`` (scripts/bench_models.py), and
    autograd does not save a weight-sized copy for backward.
    """
    w = torch.randn(in_channels, out_channels, modes, modes, dtype=torch.cfloat)
    w.div_(math.sqrt(in_channels))
    return w.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)


class SpectralConv2d(nn.Module):
    """Fourier layer ``(B, in, H, W) float → (B, out, H, W) float32`` with complex weights per mode.

    Args:
        in_channels, out_channels: channel counts.
        modes: m, the number of kept frequencies per axis. The weights are always allocated at m × m,
            whatever the map size, so the parameter count does not depend on N (docs/generators.md,
            Parameter counts); on a small map only the block that fits is used and the rest gets zero gradient.
        bands: which row frequencies are kept.

            * ``"positive"``: rows ``[0, min(m, H))`` — PtychoPINN's fallback layer. When H ≤ m this
              is every row, negative frequencies included.
            * ``"both"``: rows ``[0, min(m, ceil(H/2)))`` with ``weight`` and the last
              ``min(m, H//2)`` rows with ``weight_neg``. The two bands never overlap (they split the
              rows exactly when H ≤ 2m; the Nyquist row of an even H goes to the negative band).
              ``weight_neg[:, :, i]`` multiplies row frequency ``i − m``, so its last row is frequency
              −1, as in the standard FNO layout; on a small map the rows nearest −1 are used.

    Columns: ``[0, min(m, W//2 + 1))`` of the rfft axis in both cases.

    Parameters ``weight`` (and ``weight_neg`` for ``"both"``): complex64 of logical shape
    (in, out, m, m), init ``randn(cfloat) / sqrt(in)``, i.e. real and imaginary parts each with std
    1/sqrt(2·in). They are stored mode-major (non-contiguous); code that flattens them must use
    ``reshape``, not ``view``. The FFT uses the default "backward" normalisation (inverse divides by
    H·W). The input is cast to float32 first, so the layer runs inside bf16/fp16 autocast (which has
    no low-precision FFT on CPU and only power-of-two sizes on CUDA) and always returns float32.
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int, bands: Bands = "positive") -> None:
        super().__init__()
        if modes < 1:
            raise ConfigError(f"SpectralConv2d modes must be ≥ 1, found {modes}")
        if bands not in BANDS:
            raise ConfigError(f"unknown bands {bands!r}: expected one of {', '.join(BANDS)}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modes = modes
        self.bands = bands
        self.weight = nn.Parameter(_mode_major_randn(in_channels, out_channels, modes))
        if bands == "both":
            self.weight_neg = nn.Parameter(_mode_major_randn(in_channels, out_channels, modes))
        # Unit-wise gradient clipping (fnostab.clipping, AGC of Brock et al. 2021): for weights laid
        # out (in, out, ...) one unit is one output channel, i.e. dim 1. Only existing parameters are
        # named: the clipper rejects names it cannot find, to catch typos.
        self.agc_output_dims = {name: 1 for name, _ in self.named_parameters(recurse=False)}

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, modes={self.modes}, bands={self.bands!r}"

    def row_bands(self, H: int) -> tuple[int, int]:
        """(rows kept from the top, rows kept from the bottom) of the spectrum of an H-row map."""
        m = self.modes
        if self.bands == "positive":
            return min(m, H), 0
        return min(m, (H + 1) // 2), min(m, H // 2)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        x = x.float()
        m_w = min(self.modes, W // 2 + 1)
        n_pos, n_neg = self.row_bands(H)

        # rfft2(x)[..., :m_w] computed as rfft over columns, crop, then fft over rows: the same numbers
        # (to float rounding), with the row FFT done on m_w columns instead of W//2 + 1.
        x_ft = torch.fft.fft(torch.fft.rfft(x, dim=-1)[..., :m_w], dim=-2)  # (B, in, H, m_w) complex64

        w_pos = self.weight.permute(2, 3, 0, 1)[:n_pos, :m_w]  # (n_pos, m_w, in, out), a view
        out_ft = _mix_modes(x_ft[:, :, :n_pos], w_pos)  # (B, out, n_pos, m_w)
        if n_neg:
            w_neg = self.weight_neg.permute(2, 3, 0, 1)[self.modes - n_neg :, :m_w]
            zeros = out_ft.new_zeros(B, self.out_channels, H - n_pos - n_neg, m_w)
            out_ft = torch.cat([out_ft, zeros, _mix_modes(x_ft[:, :, H - n_neg :], w_neg)], dim=-2)

        # irfft2 of the zero-padded (H, W//2 + 1) spectrum, done as ifft over rows (n=H zero-pads the
        # rows below the kept block) then irfft over columns (n=W zero-pads the missing columns).
        return torch.fft.irfft(torch.fft.ifft(out_ft, n=H, dim=-2), n=W, dim=-1)


def _mix_modes(x_ft: Tensor, w: Tensor) -> Tensor:
    """``out[b, o, r, c] = Σ_i x_ft[b, i, r, c] · w[r, c, i, o]`` as one batched matmul over modes.

    x_ft: (B, in, R, C) complex; w: (R, C, in, out) complex → (B, out, R, C). Same result as
    ``einsum('bixy,ioxy->boxy')`` on the (in, out, R, C) weight, but faster on CPU: einsum reorders
    both operands on every call, here only the small x_ft block is copied.
    """
    B, n_in, R, C = x_ft.shape
    n_out = w.shape[-1]
    xb = x_ft.permute(2, 3, 0, 1).reshape(R * C, B, n_in)
    y = torch.bmm(xb, w.reshape(R * C, n_in, n_out))  # a view when all m × m modes are used
    return y.reshape(R, C, B, n_out).permute(2, 3, 0, 1)

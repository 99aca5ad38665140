"""Building blocks of the PtychoPINN generators (docs/generators.md, Blocks).

* ``SpatialLifter``: Conv3×3 → GELU → Conv3×3, lifting the diffraction amplitude to the hidden width.
* ``PtychoBlock``: y = x + GELU(Spectral(x) + Conv3×3(x)), the block of ``fno`` and ``hybrid``.
* ``StablePtychoBlock``: y = x + λ ⊙ IN(GELU(Spectral(x) + Conv3×3(x))), the ``stable_hybrid`` block,
  in its two published initialisations (zero-γ, then LayerScale).

Every block keeps the shape (B, C, H, W). The names ``spectral``, ``local``, ``norm`` and
``layerscale`` are part of saved checkpoints' ``state_dict`` keys (``blocks.0.spectral.weight``), so
renaming one breaks loading older checkpoints; submodule names also label the rows of activation
reports. The activation probe does not select by name: :class:`~fnostab.hooks.ActivationMonitor`
takes each block's ``SpectralConv2d`` child, its 3×3 ``nn.Conv2d`` child and its ``nn.GELU`` modules
by type.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from fnostab.errors import ConfigError
from fnostab.models.spectral import Bands, SpectralConv2d

BlockInit = Literal["zero_gamma", "layerscale"]
BLOCK_INITS: tuple[str, ...] = ("zero_gamma", "layerscale")


class SpatialLifter(nn.Module):
    """Conv3×3(in→out) → GELU → Conv3×3(out→out), padding 1, with biases: (B, in, H, W) → (B, out, H, W).

    PtychoPINN's lifter with ``hidden = out`` and no input transform (docs/generators.md, Blocks).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.act = nn.GELU()
        self.conv_out = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.act(self.conv_in(x)))


class PtychoBlock(nn.Module):
    """y = x + GELU(Spectral(x) + Conv3×3(x)) on (B, C, H, W) (docs/generators.md, Blocks).

    No normalisation and an identity residual: with every branch weight at zero the block is the
    identity. The spectral output is float32 even under autocast, so the sum is float32.
    """

    def __init__(self, channels: int, modes: int, bands: Bands = "positive") -> None:
        super().__init__()
        self.spectral = SpectralConv2d(channels, channels, modes, bands)
        self.local = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.act(self.spectral(x) + self.local(x))


class StablePtychoBlock(nn.Module):
    """Norm-last residual block: y = x + λ ⊙ IN(GELU(Spectral(x) + Conv3×3(x))) on (B, C, H, W).

    IN is ``InstanceNorm2d(C, affine=True)`` (eps 1e-5, no running statistics, so it normalises each
    instance in eval mode too). Two initialisations (docs/generators.md, Blocks):

    * ``"zero_gamma"`` (the v1 ``stable_hybrid``, FNO-STABILITY-OVERHAUL-001 Phase 2): IN weight and bias
      start at 0 and there is no λ, so the block is exactly the identity at init. The gradient reaching
      the branch is multiplied by γ = 0, so the spectral and local weights get no gradient at step 0;
      this is the mechanism behind finding STABLE-GAMMA-001 (constant-amplitude collapse).
    * ``"layerscale"`` (v2; CaiT, Touvron et al. 2021, arXiv:2103.17239): IN at its default init
      (weight 1, bias 0) and a per-channel parameter ``layerscale`` of shape (C,), filled with
      ``layerscale_init``, broadcast as (1, C, 1, 1).
    """

    def __init__(
        self,
        channels: int,
        modes: int,
        bands: Bands = "positive",
        init: BlockInit = "zero_gamma",
        layerscale_init: float = 1e-3,
    ) -> None:
        super().__init__()
        if init not in BLOCK_INITS:
            raise ConfigError(f"unknown block init {init!r}: expected one of {', '.join(BLOCK_INITS)}")
        self.init = init
        self.spectral = SpectralConv2d(channels, channels, modes, bands)
        self.local = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.GELU()
        self.norm = nn.InstanceNorm2d(channels, affine=True)
        if init == "zero_gamma":
            nn.init.zeros_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)
            self.layerscale = None
        else:
            self.layerscale = nn.Parameter(torch.full((channels,), float(layerscale_init)))

    def forward(self, x: Tensor) -> Tensor:
        update = self.norm(self.act(self.spectral(x) + self.local(x)))
        if self.layerscale is not None:
            update = self.layerscale.view(1, -1, 1, 1) * update
        return x + update

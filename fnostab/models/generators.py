"""The generators: diffraction amplitudes (B, C, N, N) float32 → complex object patches (B, C, N, N) complex64.

C = gridsize² is the number of patterns per sample: 1 at gridsize 1, 4 for PtychoPINN's 2×2 groups
(docs/gridsize.md); ``in_channels`` and ``out_channels`` are both C for the physics-trained runs.

Read top to bottom like the architecture descriptions of docs/generators.md:

    fno            lifter → n × PtychoBlock (full resolution) → 1×1 → k × [3×3, GELU] → head
    hybrid         lifter → n encoder levels [PtychoBlock, skip, 2×2/2 conv] → bottleneck PtychoBlock
                   (modes // 2) → CNN decoder [2×2/2 transpose conv, concat skip, 3×3, GELU, 3×3] → head
    stable_hybrid  hybrid with StablePtychoBlock in the encoder and the bottleneck

Every generator is built from a :class:`~fnostab.config.ModelConfig` (its one description, validated
before anything is allocated) and the channel counts, and exposes ``lifter``, ``blocks`` (the residual
spectral blocks in forward order: for the hybrids the encoder blocks, then the bottleneck), ``head`` and
``config`` (that ModelConfig). Use :func:`fnostab.models.build_generator` to build one: it also checks
the geometry for N.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fnostab.config import ModelConfig
from fnostab.errors import ConfigError, InputError
from fnostab.models.blocks import PtychoBlock, SpatialLifter, StablePtychoBlock

Head = Literal["real_imag", "amp_phase"]
HEADS: tuple[str, ...] = ("real_imag", "amp_phase")


# ---------------------------------------------------------------------------------------------
# Output heads: hidden features (B, h, N, N) → complex object patches (B, C, N, N) complex64


class RealImagHead(nn.Module):
    """Conv1×1(h → 2C): channels 0…C−1 the real parts and C…2C−1 the imaginary parts, unbounded.

    The PtychoPINN ``real_imag`` output (docs/generators.md, hybrid), the default of ``hybrid``.
    """

    def __init__(self, channels: int, out_channels: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.proj = nn.Conv2d(channels, 2 * out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj(x).float()  # float32 even under autocast, so the result is complex64
        c = self.out_channels
        return torch.complex(y[:, :c], y[:, c:])


class AmpPhaseHead(nn.Module):
    """Two Conv1×1(h → C): amplitude = sigmoid(·) in (0, 1), phase = π·tanh(·) in (−π, π) radians.

    The ``amp_phase`` output of the later PtychoPINN generators (docs/generators.md); returns amp·e^{iφ}.
    """

    def __init__(self, channels: int, out_channels: int = 1) -> None:
        super().__init__()
        self.amp = nn.Conv2d(channels, out_channels, 1)
        self.phase = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        amp = torch.sigmoid(self.amp(x).float())
        phase = math.pi * torch.tanh(self.phase(x).float())
        return torch.polar(amp, phase)


def make_head(head: Head, channels: int, out_channels: int = 1) -> nn.Module:
    """The output head named ``head`` on ``channels`` hidden channels, giving ``out_channels`` patches."""
    if head == "real_imag":
        return RealImagHead(channels, out_channels)
    if head == "amp_phase":
        return AmpPhaseHead(channels, out_channels)
    raise ConfigError(f"unknown head {head!r}: expected one of {', '.join(HEADS)}")


def run_block(block: nn.Module, x: Tensor, gradient_checkpointing: bool) -> Tensor:
    """``block(x)``, recomputed in backward instead of storing its activations when checkpointing.

    Only when grad is enabled: under ``no_grad`` there is nothing to save and checkpoint would just
    warn. Non-reentrant checkpointing gives the same gradients as the plain pass.
    """
    if gradient_checkpointing and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


# ---------------------------------------------------------------------------------------------
# fno: the cascaded FNO ("Arch A")


class CascadedFNOGenerator(nn.Module):
    """Lifter → ``fno_blocks`` × PtychoBlock(h) at full resolution → Conv1×1(h→h) →
    ``cnn_blocks`` × [Conv3×3(h→h), GELU] → head.

    No resampling, so it works at any N. At the PtychoPINN defaults (h=32, m=12, 4 + 2 blocks) it has
    656,002 parameters (docs/generators.md, fno).
    """

    arch = "fno"

    def __init__(self, config: ModelConfig | None = None, *, in_channels: int = 1, out_channels: int = 1) -> None:
        config = _own_config(type(self), config)  # checked before anything is allocated
        super().__init__()
        self.config = config
        h = config.width
        self.lifter = SpatialLifter(in_channels, h)
        self.blocks = nn.ModuleList(PtychoBlock(h, config.modes, config.bands) for _ in range(config.fno_blocks))
        self.intermediate = nn.Conv2d(h, h, 1)
        refiners = [(nn.Conv2d(h, h, 3, padding=1), nn.GELU()) for _ in range(config.cnn_blocks)]
        self.refiner = nn.Sequential(*(layer for pair in refiners for layer in pair))
        self.head = make_head(config.head, h, out_channels)

    @staticmethod
    def downsampling(fno_blocks: int) -> int:
        """Ratio of N to the side of the coarsest feature map: 1, everything runs at full resolution."""
        return 1

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, N, N) float → (B, out_channels, N, N) complex64."""
        x = self.lifter(x)
        for block in self.blocks:
            x = run_block(block, x, self.config.checkpointing)
        x = self.refiner(self.intermediate(x))
        return self.head(x)


# ---------------------------------------------------------------------------------------------
# hybrid: the U-shaped neural operator ("Arch B", HybridUNOGenerator)


class DecoderStage(nn.Module):
    """One U-Net decoder step: (B, c_in, H, W) and skip (B, c, 2H, 2W) → (B, c, 2H, 2W).

    ConvTranspose2d(c_in → c, kernel 2, stride 2); concat [upsampled, skip] → 2c channels;
    Conv3×3(2c → c) → GELU → Conv3×3(c → c). Plain CNN: no spectral layer, residual or norm, and no
    activation after the second conv (docs/generators.md, hybrid).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv1 = nn.Conv2d(2 * out_channels, out_channels, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = torch.cat([self.up(x), skip], dim=1)
        return self.conv2(self.act(self.conv1(x)))


def encoder_widths(width: int, fno_blocks: int, max_hidden_channels: int | None) -> list[int]:
    """Channel width of each encoder level: c_0 = h, c_{i+1} = min(2·c_i, cap) (docs/generators.md, hybrid)."""
    cap = math.inf if max_hidden_channels is None else max_hidden_channels
    widths = [width]
    for _ in range(fno_blocks - 1):
        widths.append(int(min(2 * widths[-1], cap)))
    return widths


class HybridUNOGenerator(nn.Module):
    """U-NO: lifter → ``fno_blocks`` encoder levels → bottleneck block → CNN decoder → head.

    Level i runs a spectral block at N/2^i with width c_i (``encoder_channels``), pushes a skip and
    (for i < n−1) downsamples with Conv2d(c_i → c_{i+1}, kernel 2, stride 2). The bottleneck is one more
    block at the last level with ``max(1, modes // 2)`` modes. The decoder mirrors the encoder widths.
    N must be divisible by 2^(n−1) and the bottleneck map at least 2×2.

    Parameters grow about 4× per level while the width doubles: 17,202,402 at n=4 and 4,417,975,522 at
    n=8 for h=32, m=12 (docs/generators.md, Parameter counts); ``max_hidden_channels`` caps the width.

    :meth:`block_factory` builds the encoder and bottleneck blocks (:class:`PtychoBlock` with ``bands``);
    a subclass overrides it to swap the block.
    """

    arch = "hybrid"

    def __init__(self, config: ModelConfig | None = None, *, in_channels: int = 1, out_channels: int = 1) -> None:
        config = _own_config(type(self), config)  # checked before anything is allocated
        super().__init__()
        self.config = config
        c = self.encoder_channels = encoder_widths(config.width, config.fno_blocks, config.max_hidden_channels)
        block, modes = self.block_factory(config), config.modes

        self.lifter = SpatialLifter(in_channels, config.width)
        # Encoder blocks (one per level), then the bottleneck block at the deepest level.
        self.blocks = nn.ModuleList([block(ch, modes) for ch in c] + [block(c[-1], max(1, modes // 2))])
        self.down = nn.ModuleList(nn.Conv2d(c[i], c[i + 1], 2, stride=2) for i in range(config.fno_blocks - 1))
        # Decoder stages from deep to shallow: c_{i+1} → c_i for i = n−2 … 0.
        self.decoder = nn.ModuleList(DecoderStage(c[i + 1], c[i]) for i in reversed(range(config.fno_blocks - 1)))
        self.head = make_head(config.head, config.width, out_channels)

    @staticmethod
    def block_factory(config: ModelConfig) -> Callable[[int, int], nn.Module]:
        """``block(channels, modes)`` for the encoder and bottleneck (PtychoPINN's ``block_cls``)."""
        return partial(PtychoBlock, bands=config.bands)

    @staticmethod
    def downsampling(fno_blocks: int) -> int:
        """Ratio of N to the side of the bottleneck map: 2^(fno_blocks − 1)."""
        return 2 ** (fno_blocks - 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, N, N) float → (B, out_channels, N, N) complex64."""
        factor = self.downsampling(len(self.encoder_channels))
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise InputError(
                f"input map {tuple(x.shape[-2:])} does not fit a {len(self.encoder_channels)}-level U-NO: "
                f"both sides must be multiples of 2^(levels−1) = {factor}"
            )
        x = self.lifter(x)
        skips = []
        for level, block in enumerate(self.blocks[:-1]):
            x = run_block(block, x, self.config.checkpointing)
            if level < len(self.down):
                skips.append(x)
                x = self.down[level](x)
        x = run_block(self.blocks[-1], x, self.config.checkpointing)  # bottleneck
        for stage in self.decoder:
            x = stage(x, skips.pop())
        return self.head(x)


class StableHybridUNOGenerator(HybridUNOGenerator):
    """``hybrid`` with :class:`StablePtychoBlock` in the encoder and the bottleneck (docs/generators.md, Blocks).

    ``block_init="zero_gamma"`` makes every spectral block the identity at init (the Stage-A
    ``stable_hybrid`` arm, which collapsed to a constant amplitude); ``"layerscale"`` uses IN at its
    default init and λ = ``layerscale_init`` per channel. The decoder is unchanged.
    """

    arch = "stable_hybrid"

    @staticmethod
    def block_factory(config: ModelConfig) -> Callable[[int, int], nn.Module]:
        return partial(
            StablePtychoBlock, bands=config.bands, init=config.block_init, layerscale_init=config.layerscale_init
        )


def _own_config(cls: type[nn.Module], config: ModelConfig | None) -> ModelConfig:
    """``config`` (default: the defaults of this architecture), refused when it names another architecture."""
    arch = cls.arch  # type: ignore[attr-defined]
    if config is None:
        return ModelConfig(arch=arch)
    if config.arch != arch:
        raise ConfigError(f"{cls.__name__} builds arch {arch!r}, the config asks for {config.arch!r}")
    return config

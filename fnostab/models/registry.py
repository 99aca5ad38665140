"""Generator registry: ``build_generator(name, N=..., ...)`` is the one way to build a generator.

Every option is validated, and the geometry checked against N, before anything is allocated, so a bad
configuration costs nothing and fails with a :class:`~fnostab.errors.ConfigError` that says what was
expected and what was found.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from fnostab.errors import ConfigError
from fnostab.models.blocks import BLOCK_INITS
from fnostab.models.generators import (
    HEADS,
    CascadedFNOGenerator,
    HybridUNOGenerator,
    StableHybridUNOGenerator,
)
from fnostab.models.spectral import BANDS

GENERATORS: dict[str, type[nn.Module]] = {
    "fno": CascadedFNOGenerator,
    "hybrid": HybridUNOGenerator,
    "stable_hybrid": StableHybridUNOGenerator,
}

# The smallest feature map a generator may reach, per side: an InstanceNorm over one pixel is
# undefined and a 1×1 map has no spatial structure left for the spectral layer.
MIN_MAP = 2


def generator_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; ConfigError listing the valid names otherwise."""
    try:
        return GENERATORS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown generator {name!r}: expected one of {', '.join(GENERATORS)}") from None


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, found {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name} must be ≥ {minimum}, found {value}")


def _require_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}: expected one of {', '.join(choices)}")


def check_options(
    name: str,
    *,
    width: int,
    modes: int,
    fno_blocks: int,
    max_hidden_channels: int | None,
    bands: str,
    head: str,
    block_init: str,
    layerscale_init: float,
    cnn_blocks: int,
    in_channels: int,
    out_channels: int,
    gradient_checkpointing: bool,
) -> type[nn.Module]:
    """Validate every option that does not depend on N; returns the generator class.

    Options that an architecture does not use (``cnn_blocks`` for the hybrids, ``max_hidden_channels``,
    ``block_init`` and ``layerscale_init`` for ``fno``, ...) are still validated, then ignored.
    """
    cls = generator_class(name)
    _require_int("width", width, 1)
    _require_int("modes", modes, 1)
    _require_int("fno_blocks", fno_blocks, 1)
    _require_int("cnn_blocks", cnn_blocks, 0)
    _require_int("in_channels", in_channels, 1)
    _require_int("out_channels", out_channels, 1)
    if max_hidden_channels is not None:
        _require_int("max_hidden_channels", max_hidden_channels, 1)
        if max_hidden_channels < width:
            raise ConfigError(
                f"max_hidden_channels must be ≥ width ({width}) or None for no cap, found {max_hidden_channels}"
            )
    _require_choice("bands", bands, BANDS)
    _require_choice("head", head, HEADS)
    _require_choice("block init", block_init, BLOCK_INITS)
    if isinstance(layerscale_init, bool) or not isinstance(layerscale_init, (int, float)) or not layerscale_init > 0:
        raise ConfigError(f"layerscale_init must be a number > 0, found {layerscale_init!r}")
    if not isinstance(gradient_checkpointing, bool):
        raise ConfigError(f"gradient_checkpointing must be True or False, found {gradient_checkpointing!r}")
    return cls


def geometry_error(name: str, *, N: int, fno_blocks: int) -> str | None:
    """Why generator ``name`` with ``fno_blocks`` levels cannot run on N×N inputs, or None if it can.

    The hybrids halve the map at each of their ``fno_blocks − 1`` downsamplings, so N must be a multiple
    of 2^(fno_blocks − 1) and the bottleneck map N / 2^(fno_blocks − 1) at least 2×2 (docs/generators.md: at
    N=64, 8 levels would mean a 0.5-pixel map). ``fno`` runs at full resolution and only needs N ≥ 2.
    """
    _require_int("N", N, 1)
    downsampling = generator_class(name).downsampling  # type: ignore[attr-defined]

    def fits(levels: int) -> bool:
        return N % downsampling(levels) == 0 and N // downsampling(levels) >= MIN_MAP

    if fits(fno_blocks):
        return None
    factor = downsampling(fno_blocks)
    advice = f"use N ≥ {MIN_MAP}" if factor == 1 else f"use N a multiple of {factor} and at least {MIN_MAP * factor}"
    shallower = [n for n in range(1, fno_blocks) if fits(n)]
    if shallower:
        advice += f", or fno_blocks ≤ {max(shallower)}"
    if N / factor < MIN_MAP:
        problem = (
            f"its coarsest map would be N / {factor} = {N / factor:g} px a side, below the {MIN_MAP}×{MIN_MAP} minimum"
        )
    else:
        problem = f"N={N} is not divisible by 2^(fno_blocks−1) = {factor}"
    return f"{name} with fno_blocks={fno_blocks} does not fit N={N}: {problem}; {advice}"


def build_generator(
    name: str,
    *,
    N: int,
    width: int = 32,
    modes: int = 12,
    fno_blocks: int = 4,
    max_hidden_channels: int | None = None,
    bands: str = "positive",
    head: str = "real_imag",
    block_init: str = "zero_gamma",
    layerscale_init: float = 1e-3,
    cnn_blocks: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """Build generator ``name`` for N×N inputs: (B, in_channels, N, N) float32 → (B, out_channels, N, N) complex64.

    Args:
        name: one of :data:`GENERATORS` (``fno``, ``hybrid``, ``stable_hybrid``).
        N: input side in pixels; checked against the architecture's downsampling (the weights do not
            depend on N).
        width: hidden width h of the lifter and of the first level.
        modes: m, spectral modes kept per axis (the hybrid bottleneck uses max(1, m // 2)).
        fno_blocks: spectral blocks (``fno``) or encoder levels (hybrids).
        max_hidden_channels: cap on the hybrid encoder width (None: doubles at every level).
        bands: ``"positive"`` (PtychoPINN's layer) or ``"both"`` row bands in every spectral layer.
        head: ``"real_imag"`` or ``"amp_phase"``.
        block_init, layerscale_init: ``stable_hybrid`` block initialisation (``zero_gamma`` or
            ``layerscale`` with λ = layerscale_init).
        cnn_blocks: ``fno`` Conv3×3 + GELU refiners after the spectral blocks.
        in_channels: input channels (C = gridsize² measured amplitudes).
        out_channels: complex output patches (C = gridsize²).
        gradient_checkpointing: recompute the spectral blocks in backward instead of storing their
            activations (same gradients, less memory, about one more forward pass of time).

    The returned module has ``lifter``, ``blocks``, ``head`` and a ``config`` dict of these options.

    Raises:
        ConfigError: an invalid option or a geometry that does not fit N, before any allocation.
    """
    options = dict(
        width=width, modes=modes, fno_blocks=fno_blocks, max_hidden_channels=max_hidden_channels,
        bands=bands, head=head, block_init=block_init, layerscale_init=layerscale_init,
        cnn_blocks=cnn_blocks, in_channels=in_channels, out_channels=out_channels,
        gradient_checkpointing=gradient_checkpointing,
    )  # fmt: skip
    cls = check_options(name, **options)
    problem = geometry_error(name, N=N, fno_blocks=fno_blocks)
    if problem:
        raise ConfigError(problem)
    model = instantiate(cls, options)
    model.config = {"name": name, "N": N, **model.config}
    return model


def instantiate(cls: type[nn.Module], options: dict[str, Any]) -> nn.Module:
    """``cls(**options)`` restricted to the options its constructor takes (options already validated)."""
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})

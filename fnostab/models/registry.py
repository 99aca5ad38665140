"""Generator registry: ``build_generator(config, N)`` is the one way to build a generator.

A :class:`~fnostab.config.ModelConfig` validates every option when it is made; the geometry, which
needs N, is checked here before anything is allocated. So a bad configuration costs nothing and fails
with a :class:`~fnostab.errors.ConfigError` that says what was expected and what was found.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from torch import nn

from fnostab.config import ModelConfig, describe_validation_error
from fnostab.errors import ConfigError
from fnostab.models.generators import CascadedFNOGenerator, HybridUNOGenerator, StableHybridUNOGenerator

GENERATORS: dict[str, type[nn.Module]] = {
    cls.arch: cls for cls in (CascadedFNOGenerator, HybridUNOGenerator, StableHybridUNOGenerator)
}

# The smallest feature map a generator may reach, per side: an InstanceNorm over one pixel is
# undefined and a 1×1 map has no spatial structure left for the spectral layer.
MIN_MAP = 2


def model_config(config: ModelConfig | str, options: dict[str, Any]) -> ModelConfig:
    """``config`` itself, or (given an architecture name) a ModelConfig of that name and ``options``.

    The name form is the shorthand ``build_generator("hybrid", N=64, width=16)``; a ModelConfig
    together with options is refused, as one of the two would be ignored. Raises ConfigError naming
    the first invalid option.
    """
    if isinstance(config, ModelConfig):
        if options:
            raise ConfigError(f"give a ModelConfig or options, not both (got {', '.join(sorted(options))})")
        return config
    if config not in GENERATORS:
        raise ConfigError(f"unknown generator {config!r}: expected one of {', '.join(GENERATORS)}")
    try:
        return ModelConfig(arch=config, **options)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, spell=str)) from None


def geometry_error(config: ModelConfig, N: int) -> str | None:
    """Why generator ``config`` cannot run on N×N inputs, or None if it can.

    The hybrids halve the map at each of their ``fno_blocks − 1`` downsamplings, so N must be a multiple
    of 2^(fno_blocks − 1) and the bottleneck map N / 2^(fno_blocks − 1) at least 2×2 (docs/generators.md: at
    N=64, 8 levels would mean a 0.5-pixel map). ``fno`` runs at full resolution and only needs N ≥ 2.
    """
    _require_count("N", N)
    name, fno_blocks = config.arch, config.fno_blocks
    downsampling = GENERATORS[name].downsampling  # type: ignore[attr-defined]

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


def _require_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer ≥ 1, found {value!r} ({type(value).__name__})")
    if value < 1:
        raise ConfigError(f"{name} must be ≥ 1, found {value}")


def build_generator(config: ModelConfig | str, N: int, channels: int = 1, **options: Any) -> nn.Module:
    """Build the generator ``config`` describes for N×N inputs: (B, C, N, N) float32 → (B, C, N, N) complex64.

    Args:
        config: the generator (:class:`~fnostab.config.ModelConfig`), or an architecture name
            (``fno``, ``hybrid``, ``stable_hybrid``) with ModelConfig fields as ``options``.
        N: input side in pixels; checked against the architecture's downsampling (the weights do not
            depend on N).
        channels: C = gridsize², the measured amplitudes in and complex patches out per sample.

    The returned module has ``lifter``, ``blocks``, ``head`` and ``config`` (the ModelConfig).

    Raises:
        ConfigError: an invalid option or a geometry that does not fit N, before any allocation.
    """
    config = model_config(config, options)
    _require_count("channels", channels)
    problem = geometry_error(config, N)
    if problem:
        raise ConfigError(problem)
    return GENERATORS[config.arch](config, in_channels=channels, out_channels=channels)

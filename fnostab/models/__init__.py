"""Generators of the PtychoPINN family and their memory plan (docs/generators.md).

Public API::

    build_generator(config, N, channels=1) -> nn.Module      # config: a ModelConfig, or ("hybrid", width=16, ...)
    plan(config, *, batch_size, N, channels=1, optimizer="adam") -> ModelPlan   # on the meta device
    geometry_error(config, N) -> str | None                  # why the config cannot run at N
    measure_step(model, x) -> StepMemory                     # memory of one training step
    GENERATORS  # name -> class: fno, hybrid, stable_hybrid
"""

from fnostab.models.blocks import PtychoBlock, SpatialLifter, StablePtychoBlock
from fnostab.models.generators import CascadedFNOGenerator, HybridUNOGenerator, StableHybridUNOGenerator
from fnostab.models.layout import channels_last_convs
from fnostab.models.plan import ModelPlan, StepMemory, measure_step, plan
from fnostab.models.registry import GENERATORS, build_generator, geometry_error
from fnostab.models.spectral import SpectralConv2d

__all__ = [
    "GENERATORS",
    "CascadedFNOGenerator",
    "HybridUNOGenerator",
    "ModelPlan",
    "PtychoBlock",
    "SpatialLifter",
    "SpectralConv2d",
    "StableHybridUNOGenerator",
    "StablePtychoBlock",
    "StepMemory",
    "build_generator",
    "channels_last_convs",
    "geometry_error",
    "measure_step",
    "plan",
]

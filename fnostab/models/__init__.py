"""Generators of the PtychoPINN family and their memory plan (docs/generators.md).

Public API::

    build_generator(name, *, N, width=32, modes=12, fno_blocks=4, ...) -> nn.Module
    plan(name, *, batch_size, N, ..., optimizer="adam") -> ModelPlan   # on the meta device
    measure_step(model, x) -> StepMemory                              # memory of one training step
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

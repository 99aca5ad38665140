"""Training-time probes: backward gradient gain between blocks, forward activation statistics, curvature."""

from fnostab.hooks.activations import ActivationMonitor
from fnostab.hooks.curvature import hessian_max_eigenvalue
from fnostab.hooks.gradient_gain import GradientGainMonitor, RepeatedBackwardError

__all__ = ["ActivationMonitor", "GradientGainMonitor", "RepeatedBackwardError", "hessian_max_eigenvalue"]

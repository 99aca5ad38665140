"""Training-time probes: backward gradient gain between blocks, and forward activation statistics."""

from fnostab.hooks.activations import ActivationMonitor
from fnostab.hooks.gradient_gain import GradientGainMonitor, RepeatedBackwardError

__all__ = ["ActivationMonitor", "GradientGainMonitor", "RepeatedBackwardError"]

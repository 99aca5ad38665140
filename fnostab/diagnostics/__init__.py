"""One-off diagnostics of a generator: forward activation statistics and backward gradient gain.

Library entry points (no CLI needed)::

    probe_activations(diffraction, generator, *, batch_size, max_samples, device) -> report dict
    measure_grad_gain(diffraction, probe, generator, *, loss, batches, batch_size, norm_type, device)
        -> report dict
    write_activation_report(report, out_dir) / write_grad_gain_report(report, out_dir)
        -> JSON + PNG paths (atomic writes)

and the model source shared by ``fnostab probe-activations`` and ``fnostab grad-gain``:
:func:`resolve_model_source` (a trained checkpoint, or model options for a freshly initialised
generator, never both) and :func:`load_model` (that generator, built for the data's N).

The shared helpers live in :mod:`fnostab.diagnostics.source`.
"""

from fnostab.diagnostics.activations import (
    ACTIVATION_PNG,
    ACTIVATION_REPORT,
    ActivationProbeSettings,
    format_activation_report,
    probe_activations,
    write_activation_report,
)
from fnostab.diagnostics.gradient_gain import (
    GRAD_GAIN_PNG,
    GRAD_GAIN_REPORT,
    GradGainSettings,
    format_grad_gain_report,
    measure_grad_gain,
    probe_for,
    write_grad_gain_report,
)
from fnostab.diagnostics.source import (
    DEFAULT_SEED,
    ModelSource,
    Settings,
    architecture_of,
    as_patterns,
    block_names,
    load_model,
    resolve_device,
    resolve_model_source,
)

__all__ = [
    "ACTIVATION_PNG",
    "ACTIVATION_REPORT",
    "DEFAULT_SEED",
    "GRAD_GAIN_PNG",
    "GRAD_GAIN_REPORT",
    "ActivationProbeSettings",
    "GradGainSettings",
    "ModelSource",
    "Settings",
    "architecture_of",
    "as_patterns",
    "block_names",
    "format_activation_report",
    "format_grad_gain_report",
    "load_model",
    "measure_grad_gain",
    "probe_activations",
    "probe_for",
    "resolve_device",
    "resolve_model_source",
    "write_activation_report",
    "write_grad_gain_report",
]

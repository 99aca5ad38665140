"""Backward gradient gain of a generator's blocks under the physics loss (docs/probes.md), over K batches.

For each of K batches — consecutive slices of the patterns in file order, batch ``k`` holding
patterns ``[k·B, (k+1)·B)`` — :func:`measure_grad_gain` runs the training forward model
(generator → object → far-field amplitude under the probe → ``mae`` or ``poisson`` physics loss
against the same patterns), back-propagates it, and reads ‖∂L/∂h_i‖ at each block output ``h_i``
from a :class:`~fnostab.hooks.GradientGainMonitor` on ``generator.blocks`` (reset between batches).

Aggregation over the K batches, and why both gain figures are reported:

* ``norms[i]``: the arithmetic mean over batches of the per-batch norms ‖∂L/∂h_i‖ (None when any
  batch had no gradient at block i).
* ``gains[i−1] = norms[i−1] / norms[i]``: the backward gain γ_i formed from the *mean norms* (ratio
  of means), with the monitor's special values (None missing, inf vanishing, nan non-finite). It
  answers "how much bigger is the typical gradient one block earlier" and is what the flags use.
* ``mean_log_gains[i−1]``: the mean over batches of the per-batch log γ_i (so
  ``exp(mean_log_gains)`` is the geometric mean of the per-batch gains). It is insensitive to one
  batch with a huge gradient dominating the means; a large gap between the two says the gain varies
  from batch to batch.
* ``flags``: per transition ``amplifying`` (γ > 2), ``damping`` (γ < 0.5), ``healthy``, ``vanishing``
  (γ = inf), ``missing`` (None) or ``nonfinite`` (nan), with the monitor's heuristic thresholds.
* ``summary_stats``: the monitor's ``summary_stats`` keys computed on ``gains``/``log_gains``.

``per_batch`` keeps every batch's loss, norms, gains, log-gains and monitor ``summary_stats``.

The backward pass is ``torch.autograd.grad`` with respect to the generator's trainable parameters:
the same graph as ``loss.backward()``, but nothing is accumulated into the parameters' ``.grad``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from fnostab.data.npz import PtychoSplit
from fnostab.data.probe import SYNTHETIC_RECIPE, normalise_probe, synthetic_probe
from fnostab.diagnostics.source import Device, Settings, architecture_of, as_patterns, block_names, resolve_device
from fnostab.groups import GroupGeometry
from fnostab.hooks import GradientGainMonitor
from fnostab.hooks.gradient_gain import (
    AMPLIFYING_THRESHOLD,
    DAMPING_THRESHOLD,
    VALID_NORM_TYPES,
    chain_gains,
    chain_log_gains,
    gain_label,
    summarize_gains,
)
from fnostab.io import write_json_atomic
from fnostab.physics import LOSS_NAMES, physics_loss, predicted_amplitude

GRAD_GAIN_SCHEMA = "fnostab.grad_gain/1"
GRAD_GAIN_REPORT = "grad_gain.json"
GRAD_GAIN_PNG = "grad_gain.png"

AGGREGATION = (
    "norms: mean over batches of the per-batch norms; gains: ratio of consecutive mean norms "
    "(flags use these); mean_log_gains: mean over batches of the per-batch log-gains"
)


class GradGainSettings(Settings):
    """Options of ``fnostab grad-gain`` (field names are the CLI flags)."""

    batches: int = Field(4, ge=1, description="K batches to average over")
    batch_size: int = Field(16, ge=1)
    norm: Literal["l2", "l1", "linf", "mean"] = "l2"
    loss: Literal["mae", "poisson"] = "mae"
    device: Device = "auto"


def probe_for(split: PtychoSplit) -> tuple[np.ndarray, str | None]:
    """The probe for the physics loss on ``split``, and a warning when it had to be made up.

    The NPZ's probe when it has one (``probe_simulated``, else ``probeGuess`` normalised; the loader
    has chosen); otherwise the documented synthetic probe of the split's N, normalised as the
    simulator does — the probe of every data set ``fnostab simulate`` makes without ``--probe``.
    """
    if split.probe is not None:
        return split.probe, None
    probe = normalise_probe(synthetic_probe(split.N))
    return probe, (
        f"{split.path} has no probe (probe_simulated or probeGuess): using the synthetic probe of N={split.N} "
        f"({SYNTHETIC_RECIPE}, normalised as the simulator does); gains are only meaningful if the data were "
        "simulated with it"
    )


def _mean(values: list[float | None]) -> float | None:
    """Mean of per-batch values; None if any batch lacks one (float arithmetic carries inf/nan)."""
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def measure_grad_gain(
    diffraction: np.ndarray | torch.Tensor,
    probe: np.ndarray | torch.Tensor,
    generator: torch.nn.Module,
    *,
    loss: str = "mae",
    batches: int = 4,
    batch_size: int = 16,
    norm_type: str = "l2",
    device: str | torch.device = "cpu",
    eps: float = 1e-30,
    groups: GroupGeometry | None = None,
) -> dict[str, Any]:
    """Per-block gradient norms and backward gains of the physics loss, averaged over ``batches`` batches.

    Args:
        diffraction: amplitudes (n, N, N), (n, N, N, 1) or groups (n, C, N, N), float32: network
            input and loss target.
        probe: complex (N, N) probe of the forward model (e.g. :func:`probe_for`).
        generator: a fnostab generator with ``blocks``; moved to ``device`` and left there, run in
            train mode (its mode is restored), its parameters' ``.grad`` untouched.
        loss: ``mae`` or ``poisson`` (:func:`fnostab.physics.physics_loss`).
        batches: K ≥ 1. When the data hold fewer than K·B patterns, only the
            ``ceil(n / batch_size)`` batches that exist are used (the last one may be short):
            ``batches_used`` says how many.
        batch_size: B ≥ 1 patterns per batch.
        norm_type: ``l2``, ``l1``, ``linf`` or ``mean`` (see :class:`GradientGainMonitor`).
        device: ``cpu``, ``cuda``, ``auto`` or a torch.device.
        eps: norms ≤ eps count as zero when forming gains.
        groups: the group layout at gridsize > 1 (a split's ``groups``): the loss then goes through the
            overlap-enforcing forward model, as in training.

    Returns:
        The report described in the module docstring: ``schema``, ``architecture``, ``block_names``,
        ``settings``, ``thresholds``, ``norms``, ``gains``, ``log_gains``, ``mean_log_gains``,
        ``flags``, ``summary_stats``, ``loss`` and ``per_batch``.
    """
    if batches < 1 or batch_size < 1:
        raise ValueError(f"batches and batch_size must be ≥ 1, got {batches} and {batch_size}")
    if loss not in LOSS_NAMES:
        raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)}, got {loss!r}")
    if norm_type not in VALID_NORM_TYPES:
        raise ValueError(f"norm_type must be one of {', '.join(VALID_NORM_TYPES)}, got {norm_type!r}")
    patterns = as_patterns(diffraction)
    n, N = patterns.shape[0], patterns.shape[-1]
    probe_t = torch.as_tensor(np.asarray(probe) if not isinstance(probe, torch.Tensor) else probe).to(torch.complex64)
    if tuple(probe_t.shape) != (N, N):
        raise ValueError(f"probe must be ({N}, {N}) to match the patterns, got {tuple(probe_t.shape)}")
    names = block_names(generator)
    target = resolve_device(device)
    generator.to(target)
    probe_t = probe_t.to(target)
    params = [p for p in generator.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the generator has no trainable parameters: there is no backward pass to measure")
    used = min(batches, math.ceil(n / batch_size))

    was_training = generator.training
    generator.train()
    per_batch: list[dict[str, Any]] = []
    try:
        with GradientGainMonitor(
            generator.blocks, norm_type=norm_type, strict_single_backward=True, eps=eps
        ) as monitor:
            for k in range(used):
                monitor.reset()
                batch = patterns[k * batch_size : (k + 1) * batch_size].to(target)
                value = physics_loss(loss, predicted_amplitude(generator(batch), probe_t, groups), batch)  # type: ignore[arg-type]
                # Same graph as value.backward(), without accumulating into the parameters' .grad.
                torch.autograd.grad(value, params, allow_unused=True)
                # One read of the norms per batch; the gains follow on the host by the monitor's rules.
                batch_norms = monitor.norms()
                batch_gains = chain_gains(batch_norms, eps)
                batch_log_gains = chain_log_gains(batch_norms, eps)
                per_batch.append(
                    {
                        "batch": k,
                        "samples": int(batch.shape[0]),
                        "loss": float(value.detach().item()),
                        "norms": batch_norms,
                        "gains": batch_gains,
                        "log_gains": batch_log_gains,
                        "summary_stats": summarize_gains(batch_gains, batch_log_gains),
                    }
                )
    finally:
        generator.train(was_training)

    n_blocks = len(names)
    norms = [_mean([b["norms"][i] for b in per_batch]) for i in range(n_blocks)]
    gains = chain_gains(norms, eps)
    log_gains = chain_log_gains(norms, eps)
    mean_log_gains = [_mean([b["log_gains"][i] for b in per_batch]) for i in range(n_blocks - 1)]
    losses = [b["loss"] for b in per_batch]
    return {
        "schema": GRAD_GAIN_SCHEMA,
        "architecture": architecture_of(generator),
        "N": N,
        "block_names": names,
        "n_blocks": n_blocks,
        "settings": {
            "loss": loss,
            "norm_type": norm_type,
            "batch_size": batch_size,
            "batches_requested": batches,
            "batches_used": used,
            "samples": sum(b["samples"] for b in per_batch),
            "device": str(target),
            "eps": eps,
            "aggregation": AGGREGATION,
        },
        "thresholds": {"amplifying": AMPLIFYING_THRESHOLD, "damping": DAMPING_THRESHOLD, "heuristic": True},
        "norms": norms,
        "gains": gains,
        "log_gains": log_gains,
        "mean_log_gains": mean_log_gains,
        "flags": [gain_label(g) for g in gains],
        "summary_stats": summarize_gains(gains, log_gains),
        "loss": {"name": loss, "mean": sum(losses) / len(losses), "per_batch": losses},
        "per_batch": per_batch,
    }


def write_grad_gain_report(report: dict[str, Any], out_dir: Path | str) -> dict[str, Path]:
    """Write ``grad_gain.json`` and ``grad_gain.png`` into ``out_dir`` (atomically); their paths."""
    from fnostab.diagnostics.plots import plot_grad_gain, save_figure

    out_dir = Path(out_dir)
    paths = {"report": out_dir / GRAD_GAIN_REPORT, "plot": out_dir / GRAD_GAIN_PNG}
    write_json_atomic(paths["report"], report)
    save_figure(plot_grad_gain(report), paths["plot"])
    return paths


def _num(value: float | None, spec: str) -> str:
    if value is None:
        return "none"
    if not math.isfinite(value):
        return str(value)
    return format(value, spec)


def format_grad_gain_report(report: dict[str, Any], paths: dict[str, Path] | None = None) -> str:
    """Norms per block and gains per transition with [AMPLIFYING]/[DAMPING] flags, for a terminal."""
    settings = report["settings"]
    lines = [
        f"gradient gain of {report['architecture']} (N={report['N']}), {settings['loss']} loss, "
        f"{settings['norm_type']} norm, mean over {settings['batches_used']} batch(es) of ≤{settings['batch_size']} "
        f"on {settings['device']}; mean loss {_num(report['loss']['mean'], '.4g')}",
        "gradient norms ‖∂L/∂h_i‖:",
    ]
    for name, norm in zip(report["block_names"], report["norms"]):
        lines.append(f"  {name:<12} {_num(norm, '.4e')}")
    lines.append(
        f"backward gains γ_i = norm[i-1]/norm[i] (of mean norms; heuristic flags γ > {AMPLIFYING_THRESHOLD} "
        f"amplifying, γ < {DAMPING_THRESHOLD} damping):"
    )
    if not report["gains"]:
        lines.append("  (one block: no transitions)")
    names = report["block_names"]
    for i, (gain, log_gain, mean_log, label) in enumerate(
        zip(report["gains"], report["log_gains"], report["mean_log_gains"], report["flags"]), start=1
    ):
        tag = "" if label == "healthy" else f" [{label.upper()}]"
        lines.append(
            f"  {names[i]} → {names[i - 1]}: γ={_num(gain, '.4f')}, log γ={_num(log_gain, '+.4f')}, "
            f"mean per-batch log γ={_num(mean_log, '+.4f')}{tag}"
        )
    stats = report["summary_stats"]
    lines.append(
        f"summary: {stats['num_amplifying']} amplifying, {stats['num_damping']} damping, "
        f"{stats['num_healthy']} healthy, "
        f"{stats['num_vanishing']} vanishing, {stats['num_missing']} missing; mean γ {_num(stats['mean_gain'], '.4f')}"
    )
    if paths:
        lines.append("wrote " + ", ".join(str(p) for p in paths.values()))
    return "\n".join(lines)

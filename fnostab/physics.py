"""Forward model of far-field ptychography, shared by the simulator and training.

Conventions (docs/data.md):

* exit wave ψ = O·P for an object patch O and probe P, both complex N×N;
* far-field amplitude A = |fftshift(FFT2(ψ))| / N, so that Σ A² = Σ |ψ|² (Parseval);
* photon counts I ~ Poisson(s² A²) with intensity scale s chosen so the mean total count per
  pattern equals ``nphotons``; the stored, normalised amplitude is sqrt(I) / s.

The torch functions work on batched tensors on any device (the last two dims are the image) and
serve training. The numpy functions are what the simulator calls, with the same formulas, so data and
loss share one definition of the forward model. At gridsize > 1 the C patches of a group are first
made to agree on their overlaps (:mod:`fnostab.groups`, docs/gridsize.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.fft
import torch

if TYPE_CHECKING:
    from fnostab.groups import GroupGeometry

LossName = Literal["mae", "poisson"]
LOSS_NAMES: tuple[str, ...] = ("mae", "poisson")

# Added to the predicted intensity inside log() so that a zero-amplitude pixel gives a large but
# finite Poisson loss (normalised units: a typical pixel intensity is ~1e-2 to 1).
_POISSON_RATE_FLOOR = 1e-8


# --------------------------------------------------------------------------------------------- torch
def exit_wave(obj: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """ψ = O·P; ``obj`` (..., N, N) complex, ``probe`` (N, N) complex, broadcast over leading dims."""
    return obj * probe


def far_field_amplitude(psi: torch.Tensor) -> torch.Tensor:
    """A = |fftshift(FFT2(ψ))| / N over the last two dims (orthonormal FFT, so Σ A² = Σ |ψ|²)."""
    spectrum = torch.fft.fft2(psi, norm="ortho")
    return torch.fft.fftshift(spectrum, dim=(-2, -1)).abs()


def predicted_amplitude(obj: torch.Tensor, probe: torch.Tensor, groups: GroupGeometry | None = None) -> torch.Tensor:
    """Far-field amplitude of object patches ``obj`` (B, C, N, N) under ``probe`` (N, N).

    With ``groups`` at gridsize > 1 the C patches of each sample are first reassembled into their
    shared object region (overlaps averaged) and re-extracted, so the amplitudes compared with the
    data come from one object per group (PtychoPINN's object_big; docs/gridsize.md).
    """
    if groups is not None:
        obj = groups.enforce_overlap(obj)
    return far_field_amplitude(exit_wave(obj, probe))


def mae_loss(pred_amp: torch.Tensor, obs_amp: torch.Tensor) -> torch.Tensor:
    """Mean |A_pred − A_obs| divided by the batch mean of A_obs (detached): 0 at a perfect fit."""
    return (pred_amp - obs_amp).abs().mean() / obs_amp.detach().mean().clamp_min(1e-12)


def poisson_loss(pred_amp: torch.Tensor, obs_amp: torch.Tensor) -> torch.Tensor:
    """Poisson negative log-likelihood of the photon counts, as a deviance, per mean count.

    With counts k = s²·A_obs² and rate λ = s²·A_pred², the deviance λ − k + k·log(k/λ) is the NLL
    minus its minimum over λ: same gradients, but exactly 0 at a perfect fit. Dividing the mean
    deviance by the mean count makes the intensity scale s cancel, so the loss needs only the
    normalised amplitudes; near the optimum it is ≈ 2·mean((ΔA)²)/mean(A_obs²).
    """
    rate = pred_amp.square() + _POISSON_RATE_FLOOR
    counts = obs_amp.square()
    deviance = rate - counts + torch.special.xlogy(counts, counts) - torch.special.xlogy(counts, rate)
    return deviance.mean() / counts.detach().mean().clamp_min(1e-12)


def physics_loss(name: LossName, pred_amp: torch.Tensor, obs_amp: torch.Tensor) -> torch.Tensor:
    """Dispatch on the loss name (``mae`` or ``poisson``)."""
    if name == "mae":
        return mae_loss(pred_amp, obs_amp)
    if name == "poisson":
        return poisson_loss(pred_amp, obs_amp)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}")


def loss_denominator(name: LossName, obs_amp: torch.Tensor) -> torch.Tensor:
    """The detached batch mean that :func:`physics_loss` divides by (mean A_obs for ``mae``, mean A_obs²
    for ``poisson``): a batch split into parts has the loss Σ_parts loss_part·n_part·den_part / Σ n·den."""
    if name == "mae":
        return obs_amp.detach().mean()
    if name == "poisson":
        return obs_amp.detach().square().mean()
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}")


def val_loss_name(loss: LossName) -> str:
    """Name under which the validation loss is logged (PtychoPINN's convention)."""
    return f"{loss}_val_loss"


def train_loss_name(loss: LossName) -> str:
    return f"{loss}_train_loss"


# --------------------------------------------------------------------------------------------- numpy
def far_field_amplitude_np(psi: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`far_field_amplitude`; float32 output for complex64 input."""
    # scipy.fft keeps complex64 in single precision and threads over the patches of a split.
    spectrum = scipy.fft.fft2(psi, norm="ortho", workers=-1)
    amp = np.abs(scipy.fft.fftshift(spectrum, axes=(-2, -1)))
    return amp.astype(np.float32 if psi.dtype == np.complex64 else np.float64, copy=False)


def intensity_scale(psi: np.ndarray, nphotons: float) -> float:
    """s = sqrt(nphotons / mean_patches Σ |ψ|²) for exit waves ψ = O·P: the factor that makes the
    mean count nphotons (the far field is unitary, so Σ|ψ|² is each pattern's total intensity)."""
    energy = (np.abs(psi) ** 2).sum(axis=(-2, -1), dtype=np.float64).mean()
    if not energy > 0:
        raise ValueError("the illuminated patches carry no energy; cannot set an intensity scale")
    return float(np.sqrt(nphotons / energy))


def poisson_amplitude(amplitude: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy normalised amplitude sqrt(Poisson(s²A²)) / s, float32."""
    counts = rng.poisson((scale * amplitude.astype(np.float64)) ** 2)
    return (np.sqrt(counts) / scale).astype(np.float32)

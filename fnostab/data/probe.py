"""Illumination probes.

The measured probe of the original study is not public, so fnostab ships a synthetic, documented
one: a focused beam made by a circular pupil of radius N/8 (in Fourier pixels) carrying a quadratic
defocus phase of π·N/24 rad at the pupil edge, propagated to the sample plane by an inverse FFT and
scaled to unit peak amplitude. Its RMS radius is about 8 px at N=32 and 16 px at N=64, so a patch
is well illuminated over its central half (docs/data.md, Probe). A user probe can replace it.

Both are then normalised as PtychoPINN's simulator does: P_sim = P / (4 · mean_{N×N} |M·P|) with M a
hard disk of radius N/4. ``probeGuess`` stores P, ``probe_simulated`` stores P_sim, and the
simulator and the training loss use P_sim.
"""

from __future__ import annotations

import numpy as np

from fnostab.errors import InputError

PROBE_SCALE = 4.0
SYNTHETIC_RECIPE = (
    "circular pupil of radius N/8 with quadratic defocus phase pi*N/24 at its edge, inverse FFT, unit peak amplitude"
)


def _disk(N: int, radius: float) -> np.ndarray:
    coords = np.arange(N) - N // 2
    return (coords[:, None] ** 2 + coords[None, :] ** 2) <= radius**2


def synthetic_probe(N: int) -> np.ndarray:
    """The documented focused probe (complex64, N×N, peak amplitude 1)."""
    radius = N / 8
    coords = np.arange(N) - N // 2
    r2 = (coords[:, None] ** 2 + coords[None, :] ** 2) / radius**2
    pupil = np.where(r2 <= 1.0, np.exp(1j * (np.pi * N / 24) * r2), 0.0)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
    probe /= np.abs(probe).max()
    return probe.astype(np.complex64)


def normalise_probe(probe: np.ndarray, source: str = "probe") -> np.ndarray:
    """P / (4 · mean |M·P|), M the disk of radius N/4 (PtychoPINN's ``set_probe``).

    ``source`` names the probe in the error (for a file: ``"PATH: key 'probeGuess'"``): a probe that
    cannot be normalised is bad user input, reported as an :class:`InputError`.
    """
    N = probe.shape[-1]
    mean_masked = np.abs(probe * _disk(N, N / 4)).mean()
    # A probe that is dark in the disk, or so bright that |P| overflows float32, has no finite
    # normaliser; dividing anyway would put NaN or inf into every simulated pattern.
    if not (np.isfinite(mean_masked) and mean_masked > 0):
        raise InputError(
            f"{source}: expected a probe with finite, non-zero amplitude inside the central disk of "
            f"radius N/4 = {N / 4:g} px, found mean |P| = {float(mean_masked):g} there"
        )
    normalised = (probe / (PROBE_SCALE * mean_masked)).astype(np.complex64)
    if not np.isfinite(normalised).all():
        raise InputError(
            f"{source}: expected a probe whose normalised values fit complex64, found NaN or inf after "
            f"dividing by 4 · mean |P| = {float(PROBE_SCALE * mean_masked):g}"
        )
    return normalised

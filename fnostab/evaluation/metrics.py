"""Reconstruction metrics for stitched ptychography objects (docs/data.md, Stitching and metrics), in float64.

The conventions follow PtychoPINN's ``eval_reconstruction`` where it is sound, and state every choice:

- **Amplitude** is compared after rescaling the prediction to the ground-truth mean (the physics
  loss fixes the amplitude scale only up to the normaliser). SSIM and PSNR use
  data_range = max − min of the ground-truth amplitude.
- **Phase** is ``np.angle`` wrapped to (−π, π], then a least-squares plane a·x + b·y + c is removed
  from prediction and ground truth independently (a global phase offset and a linear phase ramp are
  not measurable from far-field intensities). MAE/MSE are in radians on the plane-removed phases,
  without re-wrapping; PSNR uses data_range = 2π, the span of a wrapped phase; SSIM maps each phase
  to (φ + π)/(2π) and uses data_range = 1, as the original does.
- **Phase SSIM is a weak signal** on grid-lines data: the ground-truth phase std is only about
  0.25 rad, i.e. 0.04 in (φ + π)/(2π) units, so a *constant* phase already scores about 0.88
  (docs/method.md#the-phase-ssim-trap). Every metric is therefore reported next to the same metric for a constant
  prediction (``"baseline"``).
- At gridsize 1 the loss leaves each patch's global phase free, and each stitched tile comes from one
  patch, so ``phase_aligned_*`` also scores the phase after removing the best phase offset per tile
  (``align_tile_phases``): it measures phase *structure* the network could have learnt.
- **FRC** resolutions (``frc50``, ``frc1over7``) are in ring-index units (spatial-frequency bins of
  the centre-cropped square image); when the curve never drops below the threshold the value is the
  curve length, i.e. "resolved up to the last ring".

SSIM is Wang et al. (2004), "Image quality assessment: from error visibility to structural
similarity", IEEE TIP 13(4):600–612, with their settings: an 11×11 Gaussian window (σ = 1.5,
truncated at 3.5σ), K1 = 0.01, K2 = 0.03, population (co)variances and an explicit data range. It
equals ``skimage.metrics.structural_similarity(a, b, data_range=R, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)``, not skimage's default (7×7 uniform window, sample
covariance), which scores differently.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

from fnostab.errors import InputError
from fnostab.evaluation.stitching import stitch_patches

__all__ = [
    "METRIC_KEYS",
    "ssim",
    "psnr",
    "mae",
    "mse",
    "frc",
    "remove_phase_plane",
    "wrap_phase",
    "align_tile_phases",
    "evaluate_reconstruction",
]

# Wang et al. 2004 settings.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Window side of a Gaussian truncated at 3.5σ, computed the way scipy.ndimage sizes it: 11 for σ = 1.5.
SSIM_WIN = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1

METRIC_KEYS: tuple[str, ...] = (
    "amp_ssim",
    "amp_mae",
    "amp_mse",
    "amp_psnr",
    "amp_frc50",
    "phase_ssim",
    "phase_mae",
    "phase_mse",
    "phase_psnr",
    "phase_frc50",
    "phase_aligned_ssim",
    "phase_aligned_mae",
)
"""Keys of ``evaluate_reconstruction``'s result (and of its ``"baseline"`` entry)."""

FRC_NEGLIGIBLE_POWER = 1e-24
"""Ring power (relative to the stronger image's total power) below which ``frc`` sees no signal."""

PHASE_PSNR_RANGE = 2.0 * math.pi
"""data_range of the phase PSNR: the span of a phase wrapped to (−π, π]."""


def _pair(a: np.ndarray, b: np.ndarray, name: str, *, real: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check two arrays have one shape and return them in float64 (or complex128 if allowed)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"{name}: the two images must have the same shape; found {a.shape} and {b.shape}")
    if a.size == 0:
        raise InputError(f"{name}: the images are empty")
    if real:
        if np.iscomplexobj(a) or np.iscomplexobj(b):
            raise InputError(f"{name} takes real images; pass the amplitude (np.abs) or the phase")
        return a.astype(np.float64), b.astype(np.float64)
    dtype = np.complex128 if (np.iscomplexobj(a) or np.iscomplexobj(b)) else np.float64
    return a.astype(dtype), b.astype(dtype)


def _check_range(data_range: float, name: str) -> float:
    r = float(data_range)
    if not (math.isfinite(r) and r > 0):
        raise InputError(f"{name}: data_range must be finite and > 0; found {data_range!r}")
    return r


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Mean structural similarity of two real 2-D images (Wang et al. 2004).

    Args:
        a, b: (H, W) real images, H and W ≥ 11 (the window side).
        data_range: dynamic range R of the images (> 0). It sets C1 = (K1·R)², C2 = (K2·R)², so it
            must be given explicitly: inferring it from the data makes the score data-dependent.

    Returns:
        The SSIM map averaged over the image after cropping (11 − 1)/2 = 5 px from every border,
        where reflect-padded filtering is least trustworthy; 1.0 for identical images. NaN in, NaN out.
    """
    x, y = _pair(a, b, "ssim", real=True)
    R = _check_range(data_range, "ssim")
    if x.ndim != 2:
        raise InputError(f"ssim takes 2-D images; found shape {x.shape}")
    if min(x.shape) < SSIM_WIN:
        raise InputError(f"ssim needs images of at least {SSIM_WIN}×{SSIM_WIN} px; found {x.shape}")

    def smooth(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = smooth(x), smooth(y)
    # Population (co)variances, as in Wang et al.; the Gaussian weights already sum to one.
    vx = smooth(x * x) - ux * ux
    vy = smooth(y * y) - uy * uy
    vxy = smooth(x * y) - ux * uy
    c1, c2 = (SSIM_K1 * R) ** 2, (SSIM_K2 * R) ** 2
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (SSIM_WIN - 1) // 2
    return float(s_map[pad:-pad, pad:-pad].mean())


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute error mean|a − b| (real or complex), same units as the inputs."""
    x, y = _pair(a, b, "mae", real=False)
    return float(np.mean(np.abs(x - y)))


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error mean|a − b|² (real or complex), squared units of the inputs."""
    x, y = _pair(a, b, "mse", real=False)
    return float(np.mean(np.abs(x - y) ** 2))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio 10·log10(R² / MSE) in dB; ``inf`` for identical images."""
    R = _check_range(data_range, "psnr")
    err = mse(a, b)
    if err == 0.0:
        return math.inf
    return float(10.0 * np.log10(R * R / err))  # NaN stays NaN


def _first_crossing(curve: np.ndarray, threshold: float) -> float:
    """Ring index where ``curve`` first falls below ``threshold``, linearly interpolated.

    0 if the first ring is already below; ``len(curve)`` if it never falls below; NaN for a
    curve with NaN in it.
    """
    if not np.all(np.isfinite(curve)):
        return math.nan
    below = np.flatnonzero(curve < threshold)
    if below.size == 0:
        return float(curve.size)
    k = int(below[0])
    if k == 0:
        return 0.0
    hi, lo = float(curve[k - 1]), float(curve[k])
    return (k - 1) + (hi - threshold) / (hi - lo)


def frc(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Fourier ring correlation of two 2-D images (real or complex).

    FRC(r) = |Σ_ring F1·F2*| / sqrt(Σ_ring |F1|² · Σ_ring |F2|²), with F the fftshifted 2-D FFT and
    ring r the pixels whose distance from the zero frequency rounds to r. Non-square images are
    centre-cropped to the square of the smaller side m; rings r = 0 … (m − 1)//2, the ones that lie
    wholly inside the square, are kept.

    Rings without power need a convention, because 0/0 has no value. "No power" means at most
    ``FRC_NEGLIGIBLE_POWER`` (1e-24, i.e. 1e-12 in amplitude) times the total power of the stronger
    image, so float64 round-off is not mistaken for signal. A ring empty in *both* images scores 1
    (they agree: e.g. ring 0 of two zero-mean, plane-removed phases); a ring empty in only *one*
    scores 0 (no shared signal: a constant image against a structured one gives [1, 0, 0, …], so
    frc50 = 0.5).

    Returns:
        (curve, frc50, frc1over7): the curve, shape ((m + 1)//2,), and the first crossings below 0.5
        and 1/7, linearly interpolated between rings, in ring-index units; the curve length if the
        curve never crosses. NaN inputs give a NaN curve and NaN crossings.
    """
    x, y = _pair(a, b, "frc", real=False)
    if x.ndim != 2:
        raise InputError(f"frc takes 2-D images; found shape {x.shape}")
    m = min(x.shape)
    r0, c0 = (x.shape[0] - m) // 2, (x.shape[1] - m) // 2
    x, y = x[r0 : r0 + m, c0 : c0 + m], y[r0 : r0 + m, c0 : c0 + m]

    f1 = np.fft.fftshift(np.fft.fft2(x))
    f2 = np.fft.fftshift(np.fft.fft2(y))
    k = np.arange(m) - m // 2  # fftshift puts the zero frequency at index m // 2
    radius = np.rint(np.hypot(k[:, None], k[None, :])).astype(np.int64)
    n_rings = (m + 1) // 2
    inside = radius < n_rings
    ring = radius[inside]

    cross = (f1 * np.conj(f2))[inside]
    num = np.bincount(ring, cross.real, n_rings) + 1j * np.bincount(ring, cross.imag, n_rings)
    p1 = np.bincount(ring, np.abs(f1[inside]) ** 2, n_rings)
    p2 = np.bincount(ring, np.abs(f2[inside]) ** 2, n_rings)
    # Round-off gives a constant image (or a plane-removed constant phase) ring powers of ~1e-30
    # instead of 0, and their chance correlation with the other image would be random. Power below
    # FRC_NEGLIGIBLE_POWER × the larger image's total power therefore counts as no power.
    floor = FRC_NEGLIGIBLE_POWER * max(p1.sum(), p2.sum())
    empty1, empty2 = p1 <= floor, p2 <= floor  # False for NaN, so NaN inputs stay NaN below
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = np.where(empty1 & empty2, 1.0, np.where(empty1 | empty2, 0.0, np.abs(num) / np.sqrt(p1 * p2)))
    return curve, _first_crossing(curve, 0.5), _first_crossing(curve, 1.0 / 7.0)


def remove_phase_plane(phi: np.ndarray) -> np.ndarray:
    """Subtract the least-squares plane a·x + b·y + c from each 2-D phase map.

    Args:
        phi: (..., H, W) real phase in radians; every trailing (H, W) image gets its own plane.

    Returns:
        float64 array of phi's shape: phi minus its best-fit plane (zero mean, no linear ramp).

    With coordinates centred on the image, the columns x, y and 1 of the design matrix are
    mutually orthogonal on a full grid, so the normal equations are diagonal and the least-squares
    coefficients are the three projections below, exactly (no iterative solver, no conditioning issue).
    """
    p = np.asarray(phi)
    if np.iscomplexobj(p):
        raise InputError("remove_phase_plane takes a real phase in radians (use np.angle first)")
    p = p.astype(np.float64)
    if p.ndim < 2:
        raise InputError(f"remove_phase_plane takes (..., H, W) arrays; found shape {p.shape}")
    H, W = p.shape[-2:]
    y = np.arange(H, dtype=np.float64) - (H - 1) / 2.0
    x = np.arange(W, dtype=np.float64) - (W - 1) / 2.0
    c = p.mean(axis=(-2, -1), keepdims=True)
    sx, sy = np.sum(x * x) * H, np.sum(y * y) * W  # Σx² and Σy² over the grid
    a = np.einsum("...ij,j->...", p, x)[..., None, None] / sx if sx > 0 else 0.0
    b = np.einsum("...ij,i->...", p, y)[..., None, None] / sy if sy > 0 else 0.0
    return p - (a * x[None, :] + b * y[:, None] + c)


def wrap_phase(z: np.ndarray) -> np.ndarray:
    """Phase of complex ``z`` in (−π, π] (``np.angle`` gives −π for a negative-zero imaginary part)."""
    phi = np.angle(z)
    return np.where(phi <= -np.pi, phi + 2 * np.pi, phi)


def align_tile_phases(pred: np.ndarray, truth: np.ndarray, tile: int) -> np.ndarray:
    """Remove the best global phase offset from each tile×tile tile of ``pred``.

    Each stitched tile comes from one patch, and at gridsize 1 the physics loss cannot fix a patch's
    global phase, so a per-tile offset is not a reconstruction error. Tile t is multiplied by
    e^{−iθ_t}, θ_t = angle(Σ_t pred·conj(truth)), the offset that minimises Σ_t |pred·e^{−iθ} − truth|².

    Args:
        pred, truth: (..., H, W) complex images with H and W multiples of ``tile``; tiles start at
            pixel (0, 0), i.e. the untrimmed stitched grid.
        tile: tile side in pixels (the stitching stride).

    Returns:
        complex128 array of pred's shape. A tile with Σ pred·conj(truth) = 0 is left unchanged.
    """
    p, q = np.asarray(pred), np.asarray(truth)
    if p.shape != q.shape:
        raise InputError(f"align_tile_phases: pred {p.shape} and truth {q.shape} differ in shape")
    if isinstance(tile, bool) or int(tile) != tile or tile < 1:
        raise InputError(f"tile must be a positive integer; found {tile!r}")
    t = int(tile)
    if p.ndim < 2 or p.shape[-2] % t or p.shape[-1] % t:
        raise InputError(
            f"align_tile_phases needs (..., H, W) images with H and W multiples of tile={t}; found {p.shape}"
        )
    *lead, H, W = p.shape
    blocks = (*lead, H // t, t, W // t, t)
    pb = p.astype(np.complex128).reshape(blocks)
    qb = q.astype(np.complex128).reshape(blocks)
    theta = np.angle(np.sum(pb * np.conj(qb), axis=(-3, -1), keepdims=True))
    return (pb * np.exp(-1j * theta)).reshape(p.shape)


def _image_scores(pred: np.ndarray, truth: np.ndarray, aligned: np.ndarray) -> dict[str, float]:
    """All METRIC_KEYS for one trimmed (H, W) image; ``aligned`` is pred after align_tile_phases."""
    amp_true = np.abs(truth)
    amp_pred = np.abs(pred)
    mean_pred = amp_pred.mean()
    if mean_pred > 0:
        amp_pred = amp_pred * (amp_true.mean() / mean_pred)
    # else: an all-zero amplitude has no scale to fix; it is scored as it is.
    amp_range = float(amp_true.max() - amp_true.min())

    phi_true = remove_phase_plane(wrap_phase(truth))
    phi_pred = remove_phase_plane(wrap_phase(pred))
    phi_aligned = remove_phase_plane(wrap_phase(aligned))

    def unit(phi: np.ndarray) -> np.ndarray:
        return (phi + np.pi) / (2 * np.pi)

    return {
        "amp_ssim": ssim(amp_pred, amp_true, amp_range),
        "amp_mae": mae(amp_pred, amp_true),
        "amp_mse": mse(amp_pred, amp_true),
        "amp_psnr": psnr(amp_pred, amp_true, amp_range),
        "amp_frc50": frc(amp_pred, amp_true)[1],
        "phase_ssim": ssim(unit(phi_pred), unit(phi_true), 1.0),
        "phase_mae": mae(phi_pred, phi_true),
        "phase_mse": mse(phi_pred, phi_true),
        "phase_psnr": psnr(phi_pred, phi_true, PHASE_PSNR_RANGE),
        "phase_frc50": frc(phi_pred, phi_true)[1],
        "phase_aligned_ssim": ssim(unit(phi_aligned), unit(phi_true), 1.0),
        "phase_aligned_mae": mae(phi_aligned, phi_true),
    }


def _score(pred: np.ndarray, truth: np.ndarray, tile: int, trim: int) -> dict[str, float]:
    """Mean over images of the per-image scores; pred, truth (n_images, H, W) complex128, untrimmed."""
    # Tiles are aligned on the untrimmed grid, where every tile is whole; trimming comes after.
    aligned = align_tile_phases(pred, truth, tile)
    crop = (slice(None), slice(trim, truth.shape[1] - trim), slice(trim, truth.shape[2] - trim))
    per_image = [_image_scores(p, q, al) for p, q, al in zip(pred[crop], truth[crop], aligned[crop], strict=True)]
    return {key: float(np.mean([s[key] for s in per_image])) for key in METRIC_KEYS}


def evaluate_reconstruction(
    pred_patches: np.ndarray,
    *,
    centres: np.ndarray,
    stride: int,
    ground_truth: np.ndarray,
    norm_Y_I: float,
    n_images: int = 1,
    trim: int = 2,
) -> dict:
    """Stitch predicted patches and score them against the ground-truth object.

    Steps: stitch the central stride×stride crops (``stitch_patches``) and multiply by
    ``norm_Y_I`` to get object units; check the shape against ``ground_truth``; per image, remove
    the best phase offset of each tile for the ``phase_aligned_*`` scores; trim ``trim`` px from
    every border; score amplitude and phase as described in this module's docstring; average each
    metric over images (a mean of per-image values, so one ``inf`` PSNR makes the mean ``inf``).

    Args:
        pred_patches: (n, N, N) complex network output in units of ``norm_Y_I`` (real accepted,
            as is the data-contract (n, N, N, 1)), stored image by image.
        centres: (n, 2) patch centres [row, col] in object pixels.
        stride: scan step in pixels, the side of each stitched tile.
        ground_truth: (n_images, L, L) complex object region the tiles cover (see
            ``ground_truth_region``); (L, L) is accepted for one image, and a trailing axis of 1.
        norm_Y_I: the patch normaliser (> 0); prediction × norm_Y_I is in object units.
        n_images: number of object images; n must be a multiple of it.
        trim: pixels dropped from every border before scoring (the original used 2).

    Returns:
        A flat dict with the float keys of ``METRIC_KEYS`` (amp_ssim, amp_mae, amp_mse, amp_psnr,
        amp_frc50, phase_ssim, phase_mae, phase_mse, phase_psnr, phase_frc50, phase_aligned_ssim,
        phase_aligned_mae) and ``"baseline"``: a dict with the same keys for a constant prediction
        (every patch 1 + 0j, i.e. the ground-truth mean amplitude after rescaling and zero phase
        after plane removal; its ``phase_aligned_*`` scores are those of the per-tile mean phase of
        the ground truth, which is what a constant earns once every tile's offset is free).

        If the stitched prediction contains NaN or inf (a diverged run), every metric of the
        prediction is NaN; the baseline is still computed. Nothing is raised for that case.

    Raises:
        InputError (a ValueError): bad geometry (see ``stitch_patches``), stitched and
        ground-truth shapes that differ (both are named), a non-finite ground truth, a
        non-positive norm_Y_I, a trimmed image smaller than the 11 px SSIM window, or a
        ground-truth amplitude with zero range.
    """
    norm = float(norm_Y_I)
    if not (math.isfinite(norm) and norm > 0):
        raise InputError(f"norm_Y_I must be finite and > 0; found {norm_Y_I!r}")
    if isinstance(trim, bool) or int(trim) != trim or trim < 0:
        raise InputError(f"trim must be a non-negative integer; found {trim!r}")
    trim = int(trim)

    with np.errstate(invalid="ignore", over="ignore"):  # complex inf × norm gives NaN: caught below
        stitched = stitch_patches(pred_patches, centres, stride, n_images).astype(np.complex128) * norm

    truth = np.asarray(ground_truth)
    if truth.ndim == 4 and truth.shape[-1] == 1:
        truth = truth[..., 0]
    if truth.ndim == 2:
        truth = truth[None]
    if truth.shape != stitched.shape:
        raise InputError(
            f"the stitched prediction has shape {stitched.shape} (n_images, rows·stride, "
            f"cols·stride) but ground_truth has shape {truth.shape}; cut the ground truth with "
            "ground_truth_region(full_object, centres, N, stride)"
        )
    truth = truth.astype(np.complex128)
    if not np.all(np.isfinite(truth)):
        raise InputError("ground_truth contains NaN or inf")
    H, W = truth.shape[1:]
    if min(H, W) - 2 * trim < SSIM_WIN:
        raise InputError(
            f"after trimming {trim} px from each border the {H}×{W} images are smaller than the "
            f"{SSIM_WIN}×{SSIM_WIN} SSIM window; use more patches or a smaller trim"
        )
    amp = np.abs(truth[:, trim : H - trim, trim : W - trim])
    if np.any(amp.max(axis=(1, 2)) == amp.min(axis=(1, 2))):
        raise InputError("the ground-truth amplitude is constant over an image: SSIM and PSNR need a data range > 0")

    # The baseline is exactly what stitching patches of 1 + 0j gives, so a constant prediction of
    # ones scores bit-for-bit its baseline.
    baseline = _score(np.full(stitched.shape, norm, dtype=np.complex128), truth, stride, trim)
    if np.all(np.isfinite(stitched)):
        # A huge but finite (diverging) prediction may overflow to inf/NaN scores: that is the answer.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result: dict = _score(stitched, truth, stride, trim)
    else:
        result = dict.fromkeys(METRIC_KEYS, math.nan)
    result["baseline"] = baseline
    return result

"""Stitching, metrics and the reconstruction picture (fnostab.evaluation).

scikit-image appears here only as an independent oracle for SSIM.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from fnostab.errors import InputError
from fnostab.evaluation import (
    METRIC_KEYS,
    align_tile_phases,
    evaluate_reconstruction,
    frc,
    ground_truth_region,
    mae,
    mse,
    psnr,
    remove_phase_plane,
    save_reconstruction_png,
    ssim,
    stitch_patches,
)

S = 96  # object side: small, so every test runs in milliseconds


def grid_lines_object(n_images: int, size: int = S, seed: int = 0) -> np.ndarray:
    """A small grid-lines object (docs/data.md): blurred random lines, phase π·tanh(...).

    100 lines on the 2S canvas keep the line density of the real 400 lines on 784², and with it the
    phase statistics (std ≈ 0.22 rad here, 0.25 rad on the cpu preset's object).
    """
    rng = np.random.default_rng(seed)
    objects = []
    for _ in range(n_images):
        canvas = np.zeros((2 * size, 2 * size))
        for _ in range(100):
            (r0, c0), (r1, c1) = rng.uniform(0, 2 * size - 1, size=(2, 2))
            t = np.linspace(0.0, 1.0, 4 * size)
            canvas[np.rint(r0 + t * (r1 - r0)).astype(int), np.rint(c0 + t * (c1 - c0)).astype(int)] = 1.0
        amp = gaussian_filter(canvas, 1) + 2 * gaussian_filter(canvas, 5) + 5 * gaussian_filter(canvas, 10)
        amp = amp[size // 2 : size // 2 + size, size // 2 : size // 2 + size]
        phase = np.pi * np.tanh((amp - amp.max() / 2) / (3 * amp.mean()))
        objects.append(amp * np.exp(1j * phase))
    return np.stack(objects)


def scan(obj: np.ndarray, N: int, stride: int, rows: int | None = None, cols: int | None = None):
    """Patches (n, N, N) and centres (n, 2) on a regular grid, stored image by image."""
    n_images, height, width = obj.shape
    tops = np.arange(0, height - N + 1, stride)[:rows]
    lefts = np.arange(0, width - N + 1, stride)[:cols]
    patches, centres = [], []
    for i in range(n_images):
        for r in tops:
            for c in lefts:
                patches.append(obj[i, r : r + N, c : c + N])
                centres.append((r + (N - 1) / 2, c + (N - 1) / 2))
    return np.stack(patches), np.array(centres)


# --------------------------------------------------------------------------------------- stitching


@pytest.mark.parametrize("N, stride", [(32, 10), (33, 10), (32, 7), (33, 7)])
def test_stitching_true_patches_reproduces_the_ground_truth_region_exactly(N, stride):
    obj = grid_lines_object(2)
    patches, centres = scan(obj, N, stride)
    stitched = stitch_patches(patches, centres, stride, n_images=2)
    region = ground_truth_region(obj, centres, N, stride)

    n_tiles = len(range(0, S - N + 1, stride))  # 7 at stride 10, 10 at stride 7
    assert stitched.shape == region.shape == (2, n_tiles * stride, n_tiles * stride)
    assert stitched.dtype == obj.dtype
    np.testing.assert_array_equal(stitched, region)
    # The region starts b = (N − stride)//2 px into the object: the first patch's crop.
    b = (N - stride) // 2
    np.testing.assert_array_equal(region, obj[:, b : b + n_tiles * stride, b : b + n_tiles * stride])


def test_stitching_places_tiles_by_centre_so_patch_order_within_an_image_is_free():
    obj = grid_lines_object(2)
    patches, centres = scan(obj, 32, 10)
    order = np.concatenate([np.random.default_rng(1).permutation(49), 49 + np.arange(49)[::-1]])
    np.testing.assert_array_equal(
        stitch_patches(patches[order], centres[order], 10, n_images=2),
        stitch_patches(patches, centres, 10, n_images=2),
    )


def test_stitching_a_non_square_grid_gives_a_non_square_image():
    obj = grid_lines_object(1)
    patches, centres = scan(obj, 32, 10, rows=3, cols=5)
    stitched = stitch_patches(patches, centres, 10)
    assert stitched.shape == (1, 30, 50)
    np.testing.assert_array_equal(stitched, ground_truth_region(obj, centres, 32, 10))
    np.testing.assert_array_equal(stitched[0], obj[0, 11:41, 11:61])


def test_stitching_accepts_the_npz_layouts_of_patches_and_centres():
    obj = grid_lines_object(1)
    patches, centres = scan(obj, 32, 10)
    np.testing.assert_array_equal(
        stitch_patches(patches[..., None], centres.astype(np.float32)[:, None, :, None], 10),
        stitch_patches(patches, centres, 10),
    )


def test_stitching_rejects_a_stride_larger_than_the_patch():
    patches, centres = scan(grid_lines_object(1), 8, 10)
    # InputError is a ValueError that the CLI turns into exit code 2 with a one-line message.
    with pytest.raises(InputError, match="stride 10 is larger than the patch size N=8"):
        stitch_patches(patches, centres, 10)
    with pytest.raises(ValueError, match="stride 10 is larger than the patch size N=8"):
        ground_truth_region(grid_lines_object(1), centres, 8, 10)


def test_stitching_rejects_centres_off_the_regular_grid():
    patches, centres = scan(grid_lines_object(1), 32, 10)
    shifted = centres.copy()
    shifted[5, 1] += 3.0
    with pytest.raises(ValueError, match="not on one regular grid with stride 10: patch 5"):
        stitch_patches(patches, shifted, 10)
    half = centres + 0.5  # centres of 33×33, not 32×32, patches
    with pytest.raises(ValueError, match="not the centre of a pixel-aligned 32×32 patch"):
        stitch_patches(patches, half, 10)
    with pytest.raises(ValueError, match="48 patches per image for 49 grid cells"):
        stitch_patches(patches[1:], centres[1:], 10)
    duplicate = centres.copy()
    duplicate[1] = duplicate[0]
    with pytest.raises(ValueError, match="grid has duplicates|not fill a regular"):
        stitch_patches(patches, duplicate, 10)


def test_stitching_rejects_mismatched_shapes_and_uneven_image_split():
    patches, centres = scan(grid_lines_object(1), 32, 10)
    with pytest.raises(ValueError, match=r"centres must have shape \(n, 2\) = \(49, 2\)"):
        stitch_patches(patches, centres[:-1], 10)
    with pytest.raises(ValueError, match="patches must have shape"):
        stitch_patches(patches[:, :, :-1], centres, 10)
    with pytest.raises(ValueError, match="49 patches cannot be split evenly over n_images=2"):
        stitch_patches(patches, centres, 10, n_images=2)
    with pytest.raises(ValueError, match="does not fit in objects of shape"):
        ground_truth_region(grid_lines_object(1)[:, :60, :60], centres, 32, 10)


# ----------------------------------------------------------------------------------- plain metrics


def smooth_pair(shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.normal(size=shape), 3)
    a = (a - a.min()) / (a.max() - a.min())
    return a, a + 0.1 * rng.normal(size=shape)


@pytest.mark.parametrize("shape, data_range", [((64, 64), 1.0), ((40, 57), 2.5), ((11, 11), 1.0)])
def test_ssim_matches_skimage_with_the_wang_et_al_settings(shape, data_range):
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    a, b = smooth_pair(shape)
    expected = structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert abs(ssim(a, b, data_range) - expected) < 1e-10


def test_ssim_differs_from_skimage_default_settings():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    a, b = smooth_pair()
    ours = ssim(a, b, 1.0)
    default = structural_similarity(a, b, data_range=1.0)  # 7×7 uniform window, sample covariance
    assert abs(ours - default) > 1e-2
    assert ssim(a, a, 1.0) == 1.0


def test_ssim_rejects_missing_range_complex_input_and_tiny_images():
    a, b = smooth_pair()
    with pytest.raises(ValueError, match="data_range must be finite and > 0"):
        ssim(a, b, 0.0)
    with pytest.raises(ValueError, match="real images"):
        ssim(a + 0j, b, 1.0)
    with pytest.raises(ValueError, match="at least 11×11"):
        ssim(a[:10], b[:10], 1.0)


def test_psnr_mae_and_mse_match_hand_values():
    a, b = np.zeros((4, 4)), np.full((4, 4), 0.1)
    assert mae(a, b) == pytest.approx(0.1)
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b, 1.0) == pytest.approx(20.0)
    assert psnr(a, b, 2 * math.pi) == pytest.approx(10 * math.log10(4 * math.pi**2 / 0.01))
    assert psnr(b, b, 1.0) == math.inf
    assert mae(np.array([3j]), np.array([4.0])) == pytest.approx(5.0)


def test_remove_phase_plane_removes_an_exact_plane_per_image():
    y, x = np.mgrid[0:40, 0:57]
    planes = np.stack([0.31 * x - 0.17 * y + 1.2, -0.05 * x + 0.4 * y - 2.0])
    assert np.max(np.abs(remove_phase_plane(planes))) < 1e-12
    bump = np.exp(-((x - 20.0) ** 2 + (y - 25.0) ** 2) / 50.0)
    residual = remove_phase_plane(planes[0] + bump)
    np.testing.assert_allclose(residual, remove_phase_plane(bump), atol=1e-12)
    assert abs(residual.mean()) < 1e-12


def test_frc_of_identical_images_is_all_ones_and_resolves_every_ring():
    a, _ = smooth_pair((40, 50))
    curve, frc50, frc1over7 = frc(a, a)
    assert curve.shape == (20,)  # centre-cropped to 40×40: rings 0 … 19
    np.testing.assert_allclose(curve, 1.0, atol=1e-12)
    assert frc50 == frc1over7 == 20.0


def test_frc_of_an_image_against_independent_noise_crosses_half_early():
    a, _ = smooth_pair((64, 64))
    noise = np.random.default_rng(7).normal(size=(64, 64))
    curve, frc50, frc1over7 = frc(a, noise)
    assert curve[0] == pytest.approx(1.0)  # the zero-frequency ring is a single pixel
    assert frc50 < 1.0  # already between ring 0 and ring 1
    assert frc1over7 < 8.0  # of 32 rings: small rings hold few pixels, so chance correlation is larger
    assert np.mean(curve[1:]) < 0.3


def test_frc_crossing_is_linearly_interpolated_in_ring_units():
    # A constant image has power only at ring 0, so the curve is [1, 0, 0, …]: 0.5 is crossed at 0.5.
    a, _ = smooth_pair((32, 32))
    curve, frc50, frc1over7 = frc(np.ones((32, 32)), a)
    assert curve[0] == pytest.approx(1.0) and np.all(curve[1:] == 0.0)
    assert frc50 == pytest.approx(0.5)
    assert frc1over7 == pytest.approx(6 / 7)


def test_frc_rings_without_power_score_one_when_both_images_are_empty_there():
    a, _ = smooth_pair((32, 32))
    a = a - a.mean()  # ring 0 (the mean) now carries only round-off
    curve, frc50, _ = frc(a, a.copy())
    assert curve[0] == 1.0 and frc50 == 16.0
    curve, frc50, _ = frc(np.zeros((32, 32)), a)
    assert curve[0] == 1.0 and np.all(curve[1:] == 0.0) and frc50 == pytest.approx(0.5)
    curve, frc50, frc1over7 = frc(np.full((32, 32), np.nan), a)
    assert np.all(np.isnan(curve)) and math.isnan(frc50) and math.isnan(frc1over7)


def test_align_tile_phases_removes_a_constant_offset_per_tile():
    truth = grid_lines_object(1)[0, :60, :80]
    offsets = np.random.default_rng(3).uniform(-np.pi, np.pi, size=(6, 8))
    pred = truth * np.exp(1j * np.kron(offsets, np.ones((10, 10))))
    np.testing.assert_allclose(align_tile_phases(pred, truth, 10), truth, atol=1e-12)
    with pytest.raises(ValueError, match="multiples of tile=7"):
        align_tile_phases(pred, truth, 7)


# ------------------------------------------------------------------------- evaluate_reconstruction


@pytest.fixture(scope="module")
def scene():
    """Two grid-lines images, N=32 patches at stride 10: stitched images are 70×70, 66×66 trimmed."""
    obj = grid_lines_object(2)
    patches, centres = scan(obj, 32, 10)
    truth = ground_truth_region(obj, centres, 32, 10)
    return patches, centres, truth


def evaluate(pred, scene, norm=2.0):
    _, centres, truth = scene
    return evaluate_reconstruction(pred, centres=centres, stride=10, ground_truth=truth, norm_Y_I=norm, n_images=2)


def test_a_perfect_reconstruction_scores_perfectly(scene):
    patches = scene[0]
    result = evaluate(patches / 2.0, scene, norm=2.0)  # ×2 is exact in float, so pred == truth
    assert set(result) == set(METRIC_KEYS) | {"baseline"}
    assert result["amp_ssim"] == result["phase_ssim"] == result["phase_aligned_ssim"] == 1.0
    assert result["amp_mae"] == result["amp_mse"] == result["phase_mae"] == result["phase_mse"] == 0.0
    assert result["phase_aligned_mae"] < 1e-15  # per-tile angle() of a real positive sum: ~1e-20 rad
    assert result["amp_psnr"] == result["phase_psnr"] == math.inf
    assert result["amp_frc50"] == result["phase_frc50"] == 33.0  # curve length of a 66×66 image


def test_per_patch_global_phases_only_hurt_the_unaligned_phase_metrics(scene):
    patches = scene[0]
    theta = np.random.default_rng(5).uniform(-1.0, 1.0, size=len(patches))
    result = evaluate(patches * np.exp(1j * theta)[:, None, None] / 2.0, scene)
    assert result["amp_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert result["amp_mae"] < 1e-12
    assert result["phase_aligned_ssim"] == pytest.approx(1.0, abs=1e-9)
    assert result["phase_aligned_mae"] < 1e-12
    assert result["phase_ssim"] < 0.9
    assert result["phase_mae"] > 0.2


def test_a_constant_prediction_scores_exactly_its_baseline(scene):
    patches = scene[0]
    result = evaluate(np.ones_like(patches), scene)
    baseline = result["baseline"]
    assert {k: result[k] for k in METRIC_KEYS} == baseline
    # Any other constant rescales to the same amplitude, and its phase offset is removed with the plane.
    other = evaluate(np.full(patches.shape, 2.5 * np.exp(0.3j), dtype=np.complex64), scene)
    for key in METRIC_KEYS:
        assert other[key] == pytest.approx(baseline[key], rel=1e-9, abs=1e-9), key
    # A constant has no structure: its FRC is [1, 0, 0, …] (ring 0 holds the mean, which the
    # plane removal takes out of both phases), so the 0.5 crossing is interpolated at ring 0.5.
    assert baseline["amp_frc50"] == pytest.approx(0.5)
    assert baseline["phase_frc50"] == pytest.approx(0.5)
    assert baseline["phase_psnr"] < math.inf


def test_constant_phase_already_scores_a_high_phase_ssim_on_grid_lines(scene):
    """The phase-SSIM trap (docs/method.md): small phase std ⇒ a flat phase scores about 0.88."""
    baseline = evaluate(scene[0] / 2.0, scene)["baseline"]
    assert 0.85 < baseline["phase_ssim"] < 0.95
    assert baseline["amp_ssim"] < 0.3
    assert 0.05 < baseline["phase_mae"] < 0.3


def test_amplitude_is_rescaled_to_the_ground_truth_mean(scene):
    patches = scene[0]
    result = evaluate(3.0 * patches / 2.0, scene)
    assert result["amp_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert result["amp_mae"] < 1e-12
    assert result["amp_psnr"] > 200.0
    assert result["amp_frc50"] == 33.0
    assert result["phase_ssim"] == pytest.approx(1.0, abs=1e-12)


def test_non_finite_predictions_give_nan_metrics_without_raising(scene):
    patches = scene[0]
    for bad in (np.nan, np.inf):
        pred = patches / 2.0
        pred[3, 16, 16] = bad  # inside the kept central crop
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = evaluate(pred, scene)
        assert all(math.isnan(result[key]) for key in METRIC_KEYS)
        assert all(math.isfinite(result["baseline"][key]) for key in METRIC_KEYS)


def test_a_ground_truth_of_the_wrong_shape_names_both_shapes(scene):
    patches, centres, truth = scene
    with pytest.raises(ValueError, match=r"shape \(2, 70, 70\).*shape \(2, 66, 66\)"):
        evaluate_reconstruction(
            patches, centres=centres, stride=10, ground_truth=truth[:, 2:-2, 2:-2], norm_Y_I=1.0, n_images=2
        )
    with pytest.raises(ValueError, match="norm_Y_I must be finite and > 0"):
        evaluate_reconstruction(patches, centres=centres, stride=10, ground_truth=truth, norm_Y_I=0.0, n_images=2)


# ----------------------------------------------------------------------------------------- figure


def test_save_reconstruction_png_writes_a_png_atomically(tmp_path, scene):
    patches, centres, truth = scene
    pred = stitch_patches(patches, centres, 10, n_images=2)[0]
    pred[0, 0] = np.nan  # a diverged pixel must not break the picture
    metrics = evaluate(patches / 2.0, scene)
    target = tmp_path / "reconstruction.png"
    target.write_bytes(b"old")
    save_reconstruction_png(target, pred, truth[0], metrics)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["reconstruction.png"]
    save_reconstruction_png(tmp_path / "plain.png", pred, truth[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.png", "reconstruction.png"]

"""Evaluation: stitch predicted patches into objects, score them against ground truth, draw them.

>>> from fnostab.evaluation import ground_truth_region, evaluate_reconstruction
>>> truth = ground_truth_region(full_object, centres, N, stride)              # doctest: +SKIP
>>> scores = evaluate_reconstruction(pred, centres=centres, stride=stride,    # doctest: +SKIP
...                                  ground_truth=truth, norm_Y_I=norm_Y_I)
>>> scores["amp_ssim"], scores["baseline"]["amp_ssim"]                         # doctest: +SKIP
"""

from fnostab.evaluation.figures import save_reconstruction_png
from fnostab.evaluation.metrics import (
    METRIC_KEYS,
    align_tile_phases,
    evaluate_reconstruction,
    frc,
    mae,
    mse,
    psnr,
    remove_phase_plane,
    ssim,
    wrap_phase,
)
from fnostab.evaluation.stitching import ground_truth_region, stitch_patches

__all__ = [
    "METRIC_KEYS",
    "align_tile_phases",
    "evaluate_reconstruction",
    "frc",
    "ground_truth_region",
    "mae",
    "mse",
    "psnr",
    "remove_phase_plane",
    "save_reconstruction_png",
    "ssim",
    "stitch_patches",
    "wrap_phase",
]

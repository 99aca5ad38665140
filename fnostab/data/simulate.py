"""Simulate a grid-lines ptychography data set (docs/data.md).

One call makes the train and test splits:

1. a lines object per image (train and test objects from independent random streams);
2. N×N patches on a regular grid (stride ``stride_train`` / ``stride_test``), row-major, image by image;
   at gridsize g, outer windows of side N + (g − 1)·offset on that grid, each cut into its g×g
   member patches ``offset`` apart (C = g² channels, docs/gridsize.md);
3. patches divided by norm_Y_I, the mean over the split's patches of each patch's peak amplitude;
4. exit wave ψ = Ô·P_sim, far-field amplitude A = |fftshift(FFT2 ψ)|/N;
5. intensity scale s = sqrt(nphotons / mean Σ|ψ|²) from the train split, reused for test;
6. counts ~ Poisson(s²A²), stored ``diffraction`` = sqrt(counts)/s;
7. the noise floor of each split: the physics loss of the true object on its own noisy patterns
   (``_metadata["noise_floor"]``, one value per loss), the scale on which a validation loss is read
   (docs/method.md#noise-floor).

Everything is vectorised over patches; the same config and seed give byte-identical arrays.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fnostab import __version__
from fnostab.config import SimulationConfig
from fnostab.data.npz import load_probe_guess, write_npz
from fnostab.data.objects import lines_objects
from fnostab.data.probe import SYNTHETIC_RECIPE, normalise_probe, synthetic_probe
from fnostab.evaluation.stitching import ground_truth_region
from fnostab.groups import GroupGeometry
from fnostab.io import fsync_directory
from fnostab.physics import LOSS_NAMES, far_field_amplitude_np, intensity_scale, physics_loss, poisson_amplitude

# 2: _metadata carries the noise floor (cached data sets of format 1 are simulated again).
FORMAT_VERSION = 2
SEED_DERIVATION = "numpy SeedSequence(seed).spawn(4) -> train object, test object, train noise, test noise"


@dataclass(frozen=True)
class ScanGrid:
    """Top-left corners of the N×N windows of one S×S object at a given stride (VALID)."""

    size: int
    N: int
    stride: int

    @property
    def steps(self) -> int:
        return (self.size - self.N) // self.stride + 1

    @property
    def corners(self) -> np.ndarray:
        return np.arange(self.steps) * self.stride

    def centres(self, n_images: int) -> np.ndarray:
        """(n_images·steps², 2) patch centres [row, col]: the mean pixel index of each window."""
        c = self.corners + (self.N - 1) / 2
        rows, cols = np.meshgrid(c, c, indexing="ij")
        grid = np.stack([rows.ravel(), cols.ravel()], axis=1)
        return np.tile(grid, (n_images, 1)).astype(np.float32)

    def patches(self, objects: np.ndarray) -> np.ndarray:
        """(n_images·steps², N, N) windows of ``objects`` (n_images, S, S), row-major per image."""
        windows = np.lib.stride_tricks.sliding_window_view(objects, (self.N, self.N), axis=(1, 2))
        picked = windows[:, :: self.stride, :: self.stride][:, : self.steps, : self.steps]
        return np.ascontiguousarray(picked).reshape(-1, self.N, self.N)


def group_geometry(config: SimulationConfig) -> GroupGeometry:
    """The group layout of a simulated data set (one member at offset 0 at gridsize 1)."""
    return GroupGeometry(config.N, config.gridsize, config.offset if config.gridsize > 1 else 0)


@dataclass(frozen=True)
class SimulatedSplit:
    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any]


def noise_floor(true_amplitude: np.ndarray, measured_amplitude: np.ndarray) -> dict[str, float]:
    """{loss name: the physics loss of the true far field against the measured patterns}.

    The whole split is one batch (validation averages per-batch losses; batches of 64 change the
    floor by under 1%). float64 throughout: at 1e9 photons the floor is
    ~1e-3, and the float32 sum over millions of pixels would round it.
    """
    true = torch.from_numpy(np.asarray(true_amplitude, dtype=np.float64))
    measured = torch.from_numpy(np.asarray(measured_amplitude, dtype=np.float64))
    return {name: float(physics_loss(name, true, measured)) for name in LOSS_NAMES}


def _probe_pair(config: SimulationConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if config.probe is None:
        guess = synthetic_probe(config.N)
        info: dict[str, Any] = {"source": "synthetic", "recipe": SYNTHETIC_RECIPE}
    else:
        guess = load_probe_guess(config.probe, config.N)
        info = {"source": str(config.probe)}
    info["normalisation"] = "P / (4 * mean|M P|), M = disk of radius N/4"
    return guess, normalise_probe(guess), info


def _split(
    config: SimulationConfig,
    name: str,
    n_images: int,
    stride: int,
    probe: np.ndarray,
    object_rng: np.random.Generator,
    noise_rng: np.random.Generator,
    scale: float | None,
) -> tuple[SimulatedSplit, float]:
    objects = lines_objects(n_images, config.object_size, config.lines_per_object, config.set_phi, object_rng)
    groups = group_geometry(config)
    grid = ScanGrid(config.object_size, groups.window, stride)  # outer windows; the patches at gridsize 1
    patches = groups.member_patches(grid.patches(objects))  # (n, C, N, N)
    norm_Y_I = float(np.abs(patches).max(axis=(2, 3)).mean(dtype=np.float64))
    patches = (patches / np.float32(norm_Y_I)).astype(np.complex64)
    psi = patches * probe
    if scale is None:
        scale = intensity_scale(psi, config.nphotons)
    amplitude = far_field_amplitude_np(psi)
    diffraction = poisson_amplitude(amplitude, scale, noise_rng)

    n, C = patches.shape[:2]
    centres = grid.centres(n_images)  # group centres (the patch centres at gridsize 1)

    def channels_last(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))

    relative = np.broadcast_to(groups.relative_offsets.T[None, None], (n, 1, 2, C)).astype(np.float32)
    arrays: dict[str, np.ndarray] = {
        "diffraction": channels_last(diffraction),
        "Y_I": channels_last(np.abs(psi).astype(np.float32)),
        "Y_phi": channels_last(np.angle(patches).astype(np.float32)),
        "coords_offsets": centres.reshape(n, 1, 2, 1),
        "coords_nominal": relative,
        "coords_true": relative.copy(),
        "YY_full": objects[..., None],
    }
    counts = (scale * diffraction.astype(np.float64)) ** 2
    metadata: dict[str, Any] = {
        "split": name,
        "nimgs": n_images,
        "stride": stride,
        "grid_shape": [grid.steps, grid.steps],
        "n_patches": n,
        "n_patterns": n * C,
        "gridsize": groups.gridsize,
        "offset": groups.offset,
        "window": groups.window,
        "coords_type": "relative",
        "norm_Y_I": norm_Y_I,
        "intensity_scale": scale,
        "mean_total_counts": float(counts.sum(axis=(2, 3)).mean()),
        # over every pattern of every group: the true patches agree on their overlaps, so the
        # gridsize-2 forward model gives the true object exactly these amplitudes (docs/gridsize.md)
        "noise_floor": noise_floor(amplitude, diffraction),
    }
    if name == "test":
        truth = ground_truth_region(objects, centres, groups.window, stride)
        arrays["YY_ground_truth"] = truth[..., None]
        arrays["norm_Y_I"] = np.array(norm_Y_I, dtype=np.float64)
    return SimulatedSplit(arrays, metadata), scale


def simulate(config: SimulationConfig) -> tuple[SimulatedSplit, SimulatedSplit]:
    """Simulate the train and test splits in memory."""
    train_obj, test_obj, train_noise, test_noise = (
        np.random.default_rng(seq) for seq in np.random.SeedSequence(config.seed).spawn(4)
    )
    guess, probe, probe_info = _probe_pair(config)
    common = {
        "generator": f"fnostab {__version__}",
        "format_version": FORMAT_VERSION,
        "nphotons": config.nphotons,
        "N": config.N,
        "object_size": config.object_size,
        "n_lines": config.lines_per_object,
        "set_phi": config.set_phi,
        "seed": config.seed,
        "seed_derivation": SEED_DERIVATION,
        "probe": probe_info,
        "config": config.model_dump(mode="json"),
    }
    train, scale = _split(config, "train", config.nimgs_train, config.stride_train, probe, train_obj, train_noise, None)
    test, _ = _split(config, "test", config.nimgs_test, config.stride_test, probe, test_obj, test_noise, scale)
    for split in (train, test):
        split.arrays["probeGuess"] = guess
        split.arrays["probe_simulated"] = probe
        split.metadata.update(common)
    return train, test


def write_dataset(train: SimulatedSplit, test: SimulatedSplit, out_dir: Path) -> tuple[Path, Path]:
    """Write ``train.npz`` and ``test.npz`` into ``out_dir`` so that they never mix two simulations.

    Both files are written whole into a hidden staging dir inside ``out_dir`` (same file system, so
    the moves are renames) before either is moved in. An old ``test.npz`` is removed first, then
    ``train.npz`` and ``test.npz`` are renamed into place: whenever the process stops, ``out_dir``
    holds the old pair, the new pair, or a ``train.npz`` without ``test.npz`` (an interrupted
    rewrite that loaders reject as a missing file), never a new train beside an old test, whose
    intensity scale and objects would not match.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, test_path = out_dir / "train.npz", out_dir / "test.npz"
    staging = Path(tempfile.mkdtemp(prefix=".simulate.", suffix=".tmp", dir=out_dir))
    try:
        for name, split in (("train", train), ("test", test)):
            arrays = dict(split.arrays)
            arrays["_metadata"] = np.array(json.dumps(split.metadata, sort_keys=True))
            write_npz(staging / f"{name}.npz", arrays)
        test_path.unlink(missing_ok=True)
        os.replace(staging / "train.npz", train_path)
        os.replace(staging / "test.npz", test_path)
        fsync_directory(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed write (a full disk) leaves no empty dir that looks like an output
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return train_path, test_path


def dataset_summary(train: SimulatedSplit, test: SimulatedSplit) -> dict[str, Any]:
    """The figures a user checks after simulating (printed by ``fnostab simulate``)."""

    def one(split: SimulatedSplit) -> dict[str, Any]:
        diffraction = split.arrays["diffraction"]
        return {
            "patches": int(diffraction.shape[0]),
            "patterns": int(diffraction.shape[0] * diffraction.shape[-1]),
            "grid_shape": split.metadata["grid_shape"],
            "stride": split.metadata["stride"],
            "nimgs": split.metadata["nimgs"],
            "norm_Y_I": split.metadata["norm_Y_I"],
            "mean_total_counts": split.metadata["mean_total_counts"],
            "diffraction_mean": float(diffraction.mean(dtype=np.float64)),
            "diffraction_std": float(diffraction.std(dtype=np.float64)),
        }

    return {
        "N": train.metadata["N"],
        "gridsize": train.metadata["gridsize"],
        "offset": train.metadata["offset"],
        "object_size": train.metadata["object_size"],
        "nphotons": train.metadata["nphotons"],
        "intensity_scale": train.metadata["intensity_scale"],
        "probe": train.metadata["probe"]["source"],
        "train": one(train),
        "test": one(test),
    }

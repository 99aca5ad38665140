"""Gridsize 1 against gridsize 2 on the `cpu` geometry at equal training time (issue 12).

Runs two shootouts of the `control` arm (hybrid, the cpu preset's model), one per gridsize, with the
same seeds, each `--jobs 2`: gridsize 1 for the preset's 20 epochs, gridsize 2 for the epochs that
take the same training time (``--gs2-epochs``, calibrated as printed: a gridsize-2 step does 4 far
fields and the reassembly on top of the same network). Then prints one markdown table: per gridsize
the median [min–max] over seeds of the training time, the amplitude and phase SSIM next to the
constant prediction, the best validation loss and the noise floor (the loss of the true object
patches on the same validation patterns, through the same forward model).

    python scripts/bench_gridsize.py [--seeds 3] [--gs2-epochs 20] [--out /tmp/bench-gridsize] [--fresh]
    python scripts/bench_gridsize.py --step-cost [--rounds 7]

Rerunning resumes each shootout (finished runs are kept) unless ``--fresh``; the table reads every
run's own result.json, so its training times are those of the runs themselves.

``--step-cost`` only times one gridsize-2 training step (forward, reassembly, far fields, MAE,
backward, Adam) at batch 16 on 1 thread for the preset's generator and for the modes-8 generator it
replaced, interleaved round by round, in CPU time (what the VM's neighbours steal is left out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's fnostab, as the `python -m fnostab` subprocesses use

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fnostab.config import PRESETS, SimulationConfig, TrainConfig  # noqa: E402
from fnostab.data.cache import cached_dataset  # noqa: E402
from fnostab.data.npz import PtychoSplit, load_split  # noqa: E402
from fnostab.physics import far_field_amplitude, physics_loss  # noqa: E402
from fnostab.training.data import validation_subset  # noqa: E402


def true_patches(split: PtychoSplit) -> np.ndarray:
    """(n, C, N, N) true object patches of ``split`` (normalised), cut from YY_full by position."""
    N, per_image = split.N, split.n // split.n_images
    offsets = split.groups.relative_offsets.astype(np.float64)
    out = np.empty((split.n, split.channels, N, N), np.complex64)
    for i, centre in enumerate(split.centres):
        image = split.full_objects[i // per_image]
        for k, rel in enumerate(offsets):
            r, c = np.rint(centre + rel - (N - 1) / 2).astype(int)
            out[i, k] = image[r : r + N, c : c + N]
    return out / np.float32(split.metadata["norm_Y_I"])


def noise_floor(test_path: Path, val_patches: int | None, loss: str) -> float:
    """Validation loss of the true object: what a perfect generator scores on these noisy data."""
    split = load_split(test_path)
    idx = validation_subset(split.n, val_patches)
    patches = torch.from_numpy(true_patches(split)[idx])
    amplitude = far_field_amplitude(patches * torch.from_numpy(split.probe))
    # The validation loss is the mean of per-batch losses weighted by batch size; per-batch
    # normalisation differs by < 1% from one over all patterns at these batch sizes.
    values, weights = [], []
    for start in range(0, len(idx), 64):
        data = torch.from_numpy(split.diffraction[idx[start : start + 64]])
        values.append(float(physics_loss(loss, amplitude[start : start + 64], data)))
        weights.append(data.shape[0])
    return float(np.average(values, weights=weights))


def step_cost(rounds: int, steps: int = 20) -> None:
    """Median CPU ms per training step of the preset's generator against its modes-8 predecessor."""
    from fnostab.config import ModelConfig
    from fnostab.models import build_generator
    from fnostab.physics import predicted_amplitude

    torch.set_num_threads(1)
    train = load_split(cached_dataset(SimulationConfig(**PRESETS["cpu"]["data"]))[0])
    batch = torch.from_numpy(train.diffraction[:16])
    probe = torch.from_numpy(train.probe)
    preset = ModelConfig(**PRESETS["cpu"]["model"])
    variants = {f"modes {m}": preset.model_copy(update={"modes": m}) for m in (8, preset.modes)}
    state = {}
    for name, model in variants.items():
        torch.manual_seed(0)
        generator = build_generator(model, train.N, train.channels)
        optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
        params = sum(p.numel() for p in generator.parameters())
        state[name] = (generator, optimizer, params, [])

    def step(generator: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        amplitude = predicted_amplitude(generator(batch), probe, train.groups)
        physics_loss("mae", amplitude, batch).backward()
        optimizer.step()

    for generator, optimizer, _, _ in state.values():
        for _ in range(3):  # warm-up: allocator, FFT plans
            step(generator, optimizer)
    for _ in range(rounds):
        for generator, optimizer, _, times in state.values():
            started = time.process_time()
            for _ in range(steps):
                step(generator, optimizer)
            times.append(1000 * (time.process_time() - started) / steps)
    base = statistics.median(next(iter(state.values()))[3])
    print("| generator (hybrid, width 16, 2 levels) | parameters | CPU ms / step (median) | rounds | vs modes 8 |")
    print("|---|---:|---:|---|---:|")
    for name, (_, _, params, times) in state.items():
        median = statistics.median(times)
        print(f"| {name} | {params:,} | {median:.1f} | {', '.join(f'{t:.1f}' for t in times)} | {median / base:.2f}× |")


def spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--gs2-epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-gridsize"))
    parser.add_argument("--fresh", action="store_true", help="Remove earlier runs instead of resuming.")
    parser.add_argument("--step-cost", action="store_true", help="Only time a training step (modes 8 vs the preset).")
    parser.add_argument("--rounds", type=int, default=7, help="Timed rounds of --step-cost.")
    args = parser.parse_args()
    if args.step_cost:
        step_cost(args.rounds)
        return
    train_cfg = TrainConfig(**PRESETS["cpu"]["train"])
    rows = []
    for gridsize, epochs in ((1, train_cfg.epochs), (2, args.gs2_epochs)):
        sweep = args.out / f"gs{gridsize}"
        if args.fresh:
            shutil.rmtree(sweep, ignore_errors=True)
        command = [sys.executable, "-m", "fnostab", "shootout", "--preset", "cpu", "--gridsize", str(gridsize),
                   "--arm", "control:arch=hybrid", "--seeds", str(args.seeds), "--epochs", str(epochs),
                   "--jobs", "2", "--out", str(sweep), "--quiet", "--json"]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"gridsize {gridsize} failed ({proc.returncode}):\n{proc.stderr}")
        print(f"gridsize {gridsize}: {wall / 60:.1f} min", file=sys.stderr, flush=True)
        results = [json.loads(p.read_text()) for p in sorted(sweep.glob("runs/*/seed-*/result.json"))]
        ok = [r for r in results if r["status"] == "ok" and r["metrics"]]
        floor = noise_floor(cached_dataset(SimulationConfig(**{**PRESETS["cpu"]["data"], "gridsize": gridsize}))[1],
                            train_cfg.val_patches, train_cfg.loss)  # fmt: skip
        rows.append({
            "gridsize": gridsize, "epochs": epochs, "runs": len(results), "ok": len(ok), "wall_min": wall / 60,
            "train_s": [r["timing"]["train_s"] for r in results],
            "amp": [r["metrics"]["amp_ssim"] for r in ok],
            "amp_const": [r["metrics"]["baseline"]["amp_ssim"] for r in ok],
            "phase": [r["metrics"]["phase_ssim"] for r in ok],
            "phase_const": [r["metrics"]["baseline"]["phase_ssim"] for r in ok],
            "phase_aligned": [r["metrics"]["phase_aligned_ssim"] for r in ok],
            "val": [r["training"]["best_val_loss"] for r in ok], "floor": floor,
        })  # fmt: skip
    print(
        "| gridsize | epochs | runs (ok) | train s per run | amp SSIM (const) | amp SSIM − const "
        "| phase SSIM (const) | phase SSIM tile-aligned | best val loss | noise floor |"
    )
    print("|---:|---:|---:|---|---|---|---|---|---|---:|")
    for row in rows:
        gain = [a - c for a, c in zip(row["amp"], row["amp_const"])]
        print(f"| {row['gridsize']} | {row['epochs']} | {row['runs']} ({row['ok']}) | {spread(row['train_s'], 0)} "
              f"| {spread(row['amp'])} ({statistics.median(row['amp_const']):.3f}) | {spread(gain)} "
              f"| {spread(row['phase'])} ({statistics.median(row['phase_const']):.3f}) "
              f"| {spread(row['phase_aligned'])} "
              f"| {spread(row['val'], 4)} | {row['floor']:.4f} |")  # fmt: skip
    print("\nper seed (amp SSIM, phase SSIM, best val loss):")
    for row in rows:
        print(
            f"gridsize {row['gridsize']}: "
            + "; ".join(f"{a:.3f}, {p:.3f}, {v:.4f}" for a, p, v in zip(row["amp"], row["phase"], row["val"]))
        )


if __name__ == "__main__":
    main()

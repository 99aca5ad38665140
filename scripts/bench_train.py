"""Training throughput of fnostab against a bare PyTorch loop, and the cost of grad-norm logging.

Three variants train the same generator on the same data for the same epochs, interleaved
(A, B, C, A, B, C, ...) so that machine noise hits them alike:

* ``bare``: a plain loop — forward, physics loss, backward, Adam step, and the same per-epoch
  validation pass; no Lightning, no failure checks, no logging;
* ``fnostab``: ``run_training`` (Lightning manual optimisation, clipping dispatch, per-step failure
  checks and CSV rows, per-epoch validation); the time is its ``train_s`` (Lightning's fit);
* ``fnostab+gradlog``: the same with ``--log-grad-norm`` every step.

Each variant is timed twice: wall clock, and CPU time of the process (``time.process_time``), which
leaves out time the machine's neighbours steal — on a shared 2-core VM the wall clock of identical
runs varies by ±20%, more than the effects measured here. The table reports both; conclusions use
the CPU time.

Targets (issue 4): fnostab at most 10% slower than bare; grad-norm logging at most 3%.

    python scripts/bench_train.py [--preset cpu] [--epochs 3] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fnostab.config import PRESETS, DataSource, ModelConfig, RunConfig, SimulationConfig, TrainConfig
from fnostab.data.cache import cached_dataset
from fnostab.data.npz import load_pair
from fnostab.models import build_generator, channels_last_convs
from fnostab.physics import physics_loss, predicted_amplitude
from fnostab.training import runner
from fnostab.training.data import eval_loader, train_loader, validation_subset
from fnostab.training.runner import prepare_run, run_training

_fit_cpu_seconds: list[float] = []
_original_fit = runner._fit


def _timed_fit(*args, **kwargs):
    started = time.process_time()
    try:
        return _original_fit(*args, **kwargs)
    finally:
        _fit_cpu_seconds.append(time.process_time() - started)


runner._fit = _timed_fit  # CPU time of Lightning's fit only (not set-up, checkpoint or evaluation)


def bare_loop(prepared, epochs: int) -> tuple[float, float]:
    """(wall, CPU) seconds for ``epochs`` epochs of the plain loop (with the same per-epoch validation)."""
    config = prepared.config
    torch.manual_seed(config.train.seed)
    generator = channels_last_convs(build_generator(config.model, prepared.N))
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.train.lr)
    probe = torch.from_numpy(prepared.train.probe)
    loader = train_loader(prepared.train.diffraction, config.train.batch_size, config.train.seed)
    val = eval_loader(prepared.test.diffraction[validation_subset(prepared.test.n, config.train.val_patches)], 64)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        generator.train()
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            physics_loss("mae", predicted_amplitude(generator(batch), probe), batch).backward()
            optimizer.step()
        generator.eval()
        with torch.no_grad():
            for batch in val:
                physics_loss("mae", predicted_amplitude(generator(batch), probe), batch)
    return time.perf_counter() - started, time.process_time() - cpu_started


def fnostab_run(prepared, log_grad_norm: bool) -> tuple[float, float]:
    config = prepared.config.model_copy(
        update={"train": prepared.config.train.model_copy(update={"log_grad_norm": log_grad_norm})}
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = run_training(
            prepared.__class__(config, prepared.train, prepared.test, prepared.plan, "cpu"), Path(tmp) / "run"
        )
    return result["timing"]["train_s"], _fit_cpu_seconds[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_pair(*cached_dataset(SimulationConfig(**PRESETS[args.preset]["data"])))
    train = dict(PRESETS[args.preset]["train"], epochs=args.epochs, threads=args.threads)
    config = RunConfig(
        data=DataSource(train=data[0].path, test=data[1].path),
        model=ModelConfig(**PRESETS[args.preset]["model"]),
        train=TrainConfig(**train),
    )
    prepared = prepare_run(config, data=data)
    samples = prepared.train.n * args.epochs

    variants = {
        "bare": lambda: bare_loop(prepared, args.epochs),
        "fnostab": lambda: fnostab_run(prepared, False),
        "fnostab+gradlog": lambda: fnostab_run(prepared, True),
    }
    fnostab_run(prepared, False)  # warm-up: imports, allocator, oneDNN kernels
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            w, c = run()
            wall[name].append(w)
            cpu[name].append(c)

    median = {name: statistics.median(values) for name, values in cpu.items()}
    median_wall = {name: statistics.median(values) for name, values in wall.items()}
    print(
        f"command: python scripts/bench_train.py --preset {args.preset} --epochs {args.epochs} "
        f"--repeats {args.repeats} --threads {args.threads}"
    )
    print(
        f"torch {torch.__version__}, {args.threads} threads, {prepared.train.n} patterns × {args.epochs} epochs "
        f"(+ validation on {len(validation_subset(prepared.test.n, config.train.val_patches))} per epoch)\n"
    )
    print(
        "| variant | median CPU s | vs bare (CPU) | median wall s | samples/s (wall) | vs bare (wall) | CPU s per run |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in variants:
        slower = 100 * (median[name] / median["bare"] - 1)
        slower_wall = 100 * (median_wall[name] / median_wall["bare"] - 1)
        runs = ", ".join(f"{t:.1f}" for t in cpu[name])
        print(
            f"| {name} | {median[name]:.2f} | {slower:+.1f}% | {median_wall[name]:.2f} | "
            f"{samples / median_wall[name]:.0f} | {slower_wall:+.1f}% | {runs} |"
        )
    cost = 100 * (median["fnostab+gradlog"] / median["fnostab"] - 1)
    print(f"\ngrad-norm logging every step costs {cost:+.1f}% of CPU time (target ≤ 3%)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Training step time of one run on 1 CPU process vs 2 DDP processes (``fnostab train --devices 2``).

Variants, all on the same data, model and global batch:

* ``1 process × 1 thread``: the single-process baseline with one core's worth of compute;
* ``2 processes × 1 thread``: ``--devices 2 --strategy ddp`` (gloo), each rank half of every batch.

(``--with-threads`` adds ``1 process × 2 threads``, the two cores used by intra-op threads instead; on
a shared VM whose cores are busy, intra-op threads oversubscribe and that variant can take 10× longer.)

Each repeat runs the variants one after another, in a rotated order, so a noisy neighbour on a shared
machine hits all of them alike. The figure is ``timing.train_s / steps`` from result.json: Lightning's
whole fit (set-up, the epochs' steps, one validation per epoch on ``--val-patches`` patterns) per
training step, excluding process start-up and evaluation; for DDP it includes the gradient
all-reduce. Reported: the median over repeats and its ratio to the 1-process, 1-thread baseline.

Usage::

    .venv/bin/python scripts/bench_ddp.py                       # cpu preset, 2 epochs, 3 repeats
    .venv/bin/python scripts/bench_ddp.py --preset smoke --repeats 1
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fnostab.cli.train import build_run_config  # noqa: E402
from fnostab.training.runner import prepare_run, run_training  # noqa: E402

VARIANTS = {"1 process × 1 thread": (1, 1), "2 processes × 1 thread": (2, 1)}
THREADS_VARIANT = {"1 process × 2 threads": (1, 2)}


def step_time(preset: str, devices: int, threads: int, epochs: int, val_patches: int, out: Path) -> tuple[float, int]:
    config = build_run_config(
        train_npz=None,
        test_npz=None,
        preset=preset,
        model={},
        train=dict(
            epochs=epochs,
            devices=devices,
            threads=threads,
            val_patches=val_patches,
            accelerator="cpu",
            log_grad_norm=True,
        ),
    )
    result = run_training(prepare_run(config), out)
    if result["status"] != "ok":
        raise SystemExit(f"{devices} processes: run ended {result['status']}: {result['failure']}")
    return result["timing"]["train_s"] / result["training"]["steps"], result["training"]["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-patches", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--with-threads", action="store_true", help="also 1 process × 2 threads")
    args = parser.parse_args()

    variants = VARIANTS | (THREADS_VARIANT if args.with_threads else {})
    times: dict[str, list[float]] = {name: [] for name in variants}
    steps = 0
    names = list(variants)
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for offset in range(len(names)):
                name = names[(repeat + offset) % len(names)]
                devices, threads = variants[name]
                seconds, steps = step_time(
                    args.preset,
                    devices,
                    threads,
                    args.epochs,
                    args.val_patches,
                    Path(scratch) / f"{repeat}-{devices}-{threads}",
                )
                times[name].append(seconds)
                print(f"repeat {repeat}: {name}: {1000 * seconds:.1f} ms/step", file=sys.stderr)

    base = statistics.median(times[names[0]])
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"preset {args.preset}, {args.epochs} epochs of {steps // args.epochs} steps, {args.repeats} repeats\n")
    print("| variant | ms / step (median) | runs | vs 1 process × 1 thread |")
    print("|---|---:|---:|---:|")
    for name in names:
        median = statistics.median(times[name])
        print(f"| {name} | {1000 * median:.1f} | {len(times[name])} | {median / base:.2f}× |")


if __name__ == "__main__":
    main()

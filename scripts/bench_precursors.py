"""Training-step cost of the precursor signals and of the curvature estimates, at the ``cpu`` preset.

A step is what the training loop pays for every batch: ``zero_grad`` → generator forward → physics
loss (``mae``) → backward → Adam step, then one host read of the loss. Arms:

* ``off``: nothing else.
* ``signals``: :class:`fnostab.training.precursors.PrecursorRecorder` as ``fnostab train
  --precursors-every K`` runs it: ``capture`` (flat copies of weights and gradients) before the step
  and ``finish`` after it (per-block reductions into the device ring buffer, spike check) on every
  step, and the host copy of one row every K-th step.

Machine noise (a shared 2-core box) is cancelled by interleaving: every round runs each arm for
``--steps`` steps in a rotated order on the same generator and optimiser; the overhead is paired with
the ``off`` block of the same round; medians and IQR over rounds are reported.

Curvature is measured every M steps, so its cost is amortised: the script times ``--curvature-reps``
measurements (sharpness and preconditioned sharpness, ``CURVATURE_ITERATIONS`` Hessian-vector products
each, and the batch sharpness) and reports their median divided by M × the median ``off`` step, for each
M of ``--curvature-every``; the same for the batch sharpness alone (``--batch-sharpness-every B``).

Usage::

    .venv/bin/python scripts/bench_precursors.py --threads 1
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fnostab.config import PRESETS, ModelConfig
from fnostab.models import build_generator
from fnostab.physics import physics_loss, predicted_amplitude
from fnostab.training.precursors import CURVATURE_ITERATIONS, PrecursorRecorder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_monitors import load_patterns

ARMS = ("off", "signals")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (each runs every arm)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per arm before the first round")
    parser.add_argument("--every", type=int, default=10, help="K of --precursors-every (host copy every K steps)")
    parser.add_argument(
        "--curvature-every", default="250,500,1000", help="values of M to report the amortised cost for"
    )
    parser.add_argument(
        "--batch-sharpness-every", default="50,100,200", help="values of B to report the amortised cost for"
    )
    parser.add_argument("--curvature-reps", type=int, default=5, help="curvature measurements timed")
    parser.add_argument("--batch-size", type=int, default=PRESETS["cpu"]["train"]["batch_size"])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--random-data", action="store_true", help="random patterns instead of the cpu preset data")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model = ModelConfig(**PRESETS["cpu"]["model"])
    N = PRESETS["cpu"]["data"]["N"]
    patterns_np, probe_np = load_patterns(args.random_data, 512, N)
    patterns = torch.from_numpy(patterns_np).to(device)  # (n, 1, N, N)
    probe = torch.from_numpy(probe_np).to(device)
    torch.manual_seed(0)
    generator = build_generator(model, N).to(device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=PRESETS["cpu"]["train"]["lr"])
    recorder = PrecursorRecorder(generator, every=args.every, window=100, clipped=False)  # the cpu preset: --clip none
    n_batches = patterns.shape[0] // args.batch_size
    cursor = 0

    def batch_at(index: int) -> torch.Tensor:
        return patterns[(index % n_batches) * args.batch_size : (index % n_batches + 1) * args.batch_size]

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        return physics_loss("mae", predicted_amplitude(generator(batch), probe), batch)

    def step(arm: str) -> None:
        nonlocal cursor
        batch = batch_at(cursor)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(batch)
        loss.backward()
        if arm == "signals":
            recorder.capture(cursor, optimizer)
        optimizer.step()
        value = loss.item()  # the training loop reads the loss every step; this also syncs a GPU
        if arm == "signals":
            recorder.finish(cursor, value, 1.0, optimizer, stepped=True)
        cursor += 1

    def run_block(arm: str, steps: int) -> float:
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            step(arm)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    for arm in ARMS:
        run_block(arm, args.warmup)
    per_round: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
        for arm in order:
            per_round[arm].append(run_block(arm, args.steps))

    curvature_times, batch_times = [], []
    for rep in range(args.curvature_reps):
        batch = batch_at(rep)
        for iterations, times in ((CURVATURE_ITERATIONS, curvature_times), (0, batch_times)):
            started = time.perf_counter()
            recorder.measure_curvature(lambda batch=batch: loss_of(batch), optimizer, iterations)
            times.append(time.perf_counter() - started)

    def quartiles(values: list[float]) -> tuple[float, float, float]:
        q = statistics.quantiles(values, n=4, method="inclusive")
        return q[1], q[0], q[2]

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "scripts/bench_precursors.py", *sys.argv[1:]])
    print(f"command: {command}")
    print(
        f"setup: {model.arch} N={N} width={model.width} modes={model.modes} fno_blocks={model.fno_blocks}, "
        f"batch {args.batch_size}, {'random' if args.random_data else 'cpu-preset'} data, device {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}; "
        f"{args.rounds} interleaved rounds × {args.steps} steps per arm, K = {args.every}"
    )
    print()
    print("| arm | median step (ms) | IQR step (ms) | median overhead | IQR overhead |")
    print("|---|---:|---:|---:|---:|")
    for arm in ARMS:
        med, lo, hi = quartiles(per_round[arm])
        if arm == "off":
            overhead = spread = "—"
        else:
            paired = [100 * (t / base - 1) for t, base in zip(per_round[arm], per_round["off"])]
            o_med, o_lo, o_hi = quartiles(paired)
            overhead, spread = f"{o_med:+.1f}%", f"{o_lo:+.1f}% … {o_hi:+.1f}%"
        print(f"| {arm} | {1e3 * med:.2f} | {1e3 * lo:.2f} … {1e3 * hi:.2f} | {overhead} | {spread} |")
    # The least disturbed round of each arm: on a shared machine the minima are the cleanest pair.
    fastest = {arm: min(times) for arm, times in per_round.items()}
    print()
    print(
        f"fastest round: off {1e3 * fastest['off']:.2f} ms, signals {1e3 * fastest['signals']:.2f} ms "
        f"({100 * (fastest['signals'] / fastest['off'] - 1):+.1f}%)"
    )
    base = statistics.median(per_round["off"])
    measurement = statistics.median(curvature_times)
    print()
    print(
        f"curvature: one measurement (2 × {CURVATURE_ITERATIONS} Hessian-vector products) takes "
        f"{1e3 * measurement:.0f} ms median over {args.curvature_reps} = {measurement / base:.0f} off-steps"
    )
    batch_only = statistics.median(batch_times)
    print(f"batch sharpness alone (1 product): {1e3 * batch_only:.0f} ms = {batch_only / base:.1f} off-steps")
    print()
    print("| --curvature-every M | amortised overhead |")
    print("|---:|---:|")
    for every in (int(m) for m in args.curvature_every.split(",")):
        print(f"| {every} | {100 * measurement / (every * base):.1f}% |")
    print()
    print("| --batch-sharpness-every B | amortised overhead |")
    print("|---:|---:|")
    for every in (int(b) for b in args.batch_sharpness_every.split(",")):
        print(f"| {every} | {100 * batch_only / (every * base):.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

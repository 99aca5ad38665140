"""Training-step overhead of the per-block monitors, at the ``cpu`` preset.

A step is what the training loop pays for every batch: ``zero_grad`` → generator forward → physics
loss (``mae``) → backward → Adam step, then one host read of the loss (which also synchronises a
GPU, so the time is honest there). The arms differ only in the monitors around it:

* ``off``: no monitor.
* ``block_monitor``: :class:`fnostab.training.monitoring.BlockMonitor` attached before the forward
  and detached (values read) after the backward on every step — ``fnostab train --monitor-every 1``;
  with ``--monitor-every N`` the other steps carry no hook, so the overhead divides by N.
* ``grad_gain``: one :class:`~fnostab.hooks.GradientGainMonitor` on ``generator.blocks`` kept for the
  whole run; its norms are read and it is reset every step.
* ``grad_gain+activations``: that plus an :class:`~fnostab.hooks.ActivationMonitor` on the generator,
  whose report is read and which is reset every step (the diagnostics monitors of seeds 003/004 used
  as a per-step training monitor, which they are not meant for).

Machine noise (other processes on a shared 2-core box) is cancelled by interleaving: every round
runs each arm for ``--steps`` steps, in a rotated order, on the same generator and optimiser. Per
round and arm the mean step time is taken; the overhead of an arm is paired with the ``off`` block
of the same round. Reported: the median over rounds of the step time and of the overhead, with the
interquartile range (IQR, p25–p75).

Usage::

    .venv/bin/python scripts/bench_monitors.py                 # cpu preset data (simulated once, cached)
    .venv/bin/python scripts/bench_monitors.py --random-data   # random patterns, same statistics
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fnostab.config import PRESETS, ModelConfig, SimulationConfig  # noqa: E402
from fnostab.hooks import ActivationMonitor, GradientGainMonitor  # noqa: E402
from fnostab.models import build_generator  # noqa: E402
from fnostab.physics import physics_loss, predicted_amplitude  # noqa: E402
from fnostab.training.monitoring import BlockMonitor  # noqa: E402

ARMS = ("off", "block_monitor", "grad_gain", "grad_gain+activations")


def load_patterns(random_data: bool, n: int, N: int) -> tuple[np.ndarray, np.ndarray]:
    """(patterns (n, N, N) float32, probe (N, N) complex64): the cpu preset's data, or random ones."""
    from fnostab.data.npz import load_split
    from fnostab.data.probe import normalise_probe, synthetic_probe

    if random_data:
        # Diffraction amplitudes are non-negative and heavy-tailed (a bright centre): an exponential
        # with the simulated data's mean (~0.15) is close enough for timing, which is all this is for.
        rng = np.random.default_rng(0)
        return rng.exponential(0.15, size=(n, 1, N, N)).astype(np.float32), normalise_probe(synthetic_probe(N))
    from fnostab.data.cache import cached_dataset

    # gridsize 1: these benchmarks time the single-pattern step (the cpu preset defaults to gridsize 2)
    train_path, _ = cached_dataset(SimulationConfig(**{**PRESETS["cpu"]["data"], "gridsize": 1}))
    split = load_split(train_path)
    assert split.probe is not None
    return split.diffraction[:n], split.probe  # (n, 1, N, N): gridsize 1


Callbacks = tuple[Callable[[], None], Callable[[], None], Callable[[], None]]


def open_arm(arm: str, generator: torch.nn.Module) -> Callbacks:
    """(before forward, after backward, close) of one arm's block of steps.

    Long-lived monitors are built when the block starts and closed when it ends, so the other arms
    run with no hook at all; building them costs microseconds against a block of many steps.
    """

    def nothing() -> None:
        pass

    if arm == "off":
        return nothing, nothing, nothing
    if arm == "block_monitor":
        monitor = BlockMonitor(generator)
        return monitor.attach, monitor.detach, nothing
    gains = GradientGainMonitor(generator.blocks, norm_type="l2", strict_single_backward=False)
    activations = ActivationMonitor(generator) if arm == "grad_gain+activations" else None

    def read() -> None:
        gains.norms()
        gains.reset()
        if activations is not None:
            activations.report()
            activations.reset()

    def close() -> None:
        gains.close()
        if activations is not None:
            activations.close()

    return nothing, read, close


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (each runs every arm)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per arm before the first round")
    parser.add_argument("--batch-size", type=int, default=PRESETS["cpu"]["train"]["batch_size"])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--random-data", action="store_true", help="random patterns instead of the cpu preset data")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown or "off" not in arms:
        parser.error(f"--arms must include 'off' and name only {', '.join(ARMS)}")
    device = torch.device(args.device)

    model = ModelConfig(**PRESETS["cpu"]["model"])
    N = PRESETS["cpu"]["data"]["N"]
    patterns_np, probe_np = load_patterns(args.random_data, 512, N)
    patterns = torch.from_numpy(patterns_np).to(device)
    probe = torch.from_numpy(probe_np).to(device)
    torch.manual_seed(0)
    generator = build_generator(model, N).to(device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=PRESETS["cpu"]["train"]["lr"])
    n_batches = patterns.shape[0] // args.batch_size
    cursor = 0

    def step(before: Callable[[], None], after: Callable[[], None]) -> None:
        nonlocal cursor
        batch = patterns[(cursor % n_batches) * args.batch_size : (cursor % n_batches + 1) * args.batch_size]
        cursor += 1
        optimizer.zero_grad(set_to_none=True)
        before()
        loss = physics_loss("mae", predicted_amplitude(generator(batch), probe), batch)
        loss.backward()
        after()
        optimizer.step()
        loss.item()  # the training loop reads the loss every step; this also syncs a GPU

    def run_block(arm: str, steps: int) -> float:
        """Median seconds per step over ``steps`` steps of ``arm`` (a median: one preempted step is noise)."""
        before, after, close = open_arm(arm, generator)
        times = []
        try:
            for _ in range(steps):
                started = time.perf_counter()
                step(before, after)
                times.append(time.perf_counter() - started)
        finally:
            close()
        return statistics.median(times)

    for arm in arms:
        run_block(arm, args.warmup)

    per_round: dict[str, list[float]] = {arm: [] for arm in arms}
    for r in range(args.rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]  # rotate, so no arm always follows another
        for arm in order:
            per_round[arm].append(run_block(arm, args.steps))

    def quartiles(values: list[float]) -> tuple[float, float, float]:
        q = statistics.quantiles(values, n=4, method="inclusive")
        return q[1], q[0], q[2]

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "scripts/bench_monitors.py", *sys.argv[1:]])
    print(f"command: {command}")
    print(
        f"setup: {model.arch} N={N} width={model.width} modes={model.modes} fno_blocks={model.fno_blocks}, "
        f"batch {args.batch_size}, {'random' if args.random_data else 'cpu-preset'} data, device {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}; "
        f"{args.rounds} interleaved rounds × {args.steps} steps per arm"
    )
    print()
    print("| arm | median step (ms) | IQR step (ms) | median overhead | IQR overhead |")
    print("|---|---:|---:|---:|---:|")
    for arm in arms:
        med, lo, hi = quartiles(per_round[arm])
        if arm == "off":
            overhead = "—"
            spread = "—"
        else:
            paired = [100 * (t / base - 1) for t, base in zip(per_round[arm], per_round["off"])]
            o_med, o_lo, o_hi = quartiles(paired)
            overhead, spread = f"{o_med:+.1f}%", f"{o_lo:+.1f}% … {o_hi:+.1f}%"
        print(f"| {arm} | {1e3 * med:.2f} | {1e3 * lo:.2f} … {1e3 * hi:.2f} | {overhead} | {spread} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

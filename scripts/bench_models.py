"""Speed and memory of the generators, and of SpectralConv2d against a plain einsum layer.

For each preset (``cpu``, ``paper``: N, width, modes, fno_blocks and batch size from
``fnostab.config.PRESETS``) and each generator, fresh subprocesses build the model and measure a
training step's forward + backward (loss Σ|out|², no optimiser) on random amplitudes:

* time: ``--rounds`` rounds of ``--steps`` steps after ``--warmup`` steps; per round the mean step
  time; reported as the median over rounds with the interquartile range (IQR, p25–p75). Rounds damp
  the noise of a shared machine; on CUDA every round ends with a synchronise.
* peak memory: on CPU the rise of the process's peak resident size (``VmHWM``, reset after the
  warm-up through ``/proc/self/clear_refs``; ``ru_maxrss`` where that is refused) over the resident
  size just before the measured steps, so it counts activations, gradients and workspaces but not the
  weights. It is taken over two steps in a subprocess of its own, run with glibc's mmap threshold fixed
  at 128 KiB so that freed tensors leave the resident set (that costs page faults, so the timing runs
  in another subprocess without it). On CUDA: ``max_memory_allocated`` minus the allocated bytes
  before the measured steps.
  Next to it, the plan's prediction (``fnostab.models.plan``): activation peak + gradients, an upper
  bound on the same quantity, computed on the meta device.

The spectral comparison runs the level-0 layer of each preset (B, width, N, N, modes) as
``SpectralConv2d`` and as the PtychoPINN-style fallback (rfft2 → zero spectrum → ``einsum
('bixy,ioxy->boxy')`` → irfft2), forward + backward with respect to input and weight, interleaved
round by round in one process; the speed-up is the median of the per-round time ratios.

Usage::

    .venv/bin/python scripts/bench_models.py                       # CPU, 2 threads, both presets
    .venv/bin/python scripts/bench_models.py --device cuda --presets paper
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fnostab.config import PRESETS  # noqa: E402
from fnostab.models import GENERATORS, SpectralConv2d, build_generator, plan  # noqa: E402

MiB = 2**20


def preset_options(preset: str) -> dict[str, Any]:
    """Generator options and batch size of a preset: N, width, modes, fno_blocks, batch_size."""
    model = {k: v for k, v in PRESETS[preset]["model"].items() if k != "arch"}
    return {"N": PRESETS[preset]["data"]["N"], **model, "batch_size": PRESETS[preset]["train"]["batch_size"]}


def quartiles(values: list[float]) -> tuple[float, float]:
    """(median, IQR) of ``values``."""
    if len(values) < 2:
        return values[0], 0.0
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q2, q3 - q1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_rss_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ≥ 4.0: ``5`` into ``clear_refs``); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_high_water_mark() -> int:
    """Peak resident set size since start or the last reset (``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# Workers: run in a subprocess, print one JSON line


def einsum_spectral(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The plain formulation SpectralConv2d is measured against (PtychoPINN's fallback layer)."""
    B, _, H, W = x.shape
    m_h, m_w = min(weight.shape[2], H), min(weight.shape[3], W // 2 + 1)
    x_ft = torch.fft.rfft2(x)
    out_ft = torch.zeros(B, weight.shape[1], H, W // 2 + 1, dtype=torch.cfloat, device=x.device)
    out_ft[:, :, :m_h, :m_w] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m_h, :m_w], weight[:, :, :m_h, :m_w])
    return torch.fft.irfft2(out_ft, s=(H, W))


def time_rounds(step, device: torch.device, warmup: int, rounds: int, steps: int) -> list[float]:  # noqa: ANN001
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append((time.perf_counter() - t0) / steps)
    return times


def generator_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """``measure="time"``: per-round step times; ``"memory"``: peak memory rise of the steps."""
    device = torch.device(spec["device"])
    options = preset_options(spec["preset"])
    batch_size = options.pop("batch_size")
    torch.manual_seed(0)
    model = build_generator(spec["name"], **options).to(device)
    x = torch.rand(batch_size, 1, options["N"], options["N"], device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        torch.view_as_real(model(x)).square().sum().backward()

    # Warm up first: the first steps load kernels and grow allocator arenas once per process.
    for _ in range(spec["warmup"]):
        step()
    model.zero_grad(set_to_none=True)
    sync(device)
    if spec["measure"] == "time":
        return {"times": time_rounds(step, device, 0, spec["rounds"], spec["steps"])}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset_rss_high_water_mark()  # if refused, the peak includes the warm-up (same steps, same peak)
        base = rss_bytes()
    for _ in range(2):
        step()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss_high_water_mark()
    return {"peak_bytes": max(peak - base, 0)}


def spectral_worker(spec: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(spec["device"])
    o = preset_options(spec["preset"])
    B, C, N, m = o["batch_size"], o["width"], o["N"], o["modes"]
    torch.manual_seed(0)
    layer = SpectralConv2d(C, C, m).to(device)
    weight = layer.weight.detach().contiguous().requires_grad_()  # same values, plain (in, out, m, m) layout
    x = torch.randn(B, C, N, N, device=device, requires_grad=True)
    torch.testing.assert_close(layer(x), einsum_spectral(x, weight), atol=1e-4, rtol=1e-4)

    def ours() -> None:
        x.grad = layer.weight.grad = None
        layer(x).square().sum().backward()

    def plain() -> None:
        x.grad = weight.grad = None
        einsum_spectral(x, weight).square().sum().backward()

    for f in (ours, plain):
        for _ in range(spec["warmup"]):
            f()
    t_ours, t_plain = [], []
    for r in range(spec["rounds"]):
        order = [(ours, t_ours), (plain, t_plain)][:: 1 if r % 2 == 0 else -1]  # alternate who goes first
        for f, out in order:
            out.extend(time_rounds(f, device, 0, 1, spec["steps"]))
    ratios = [p / o for p, o in zip(t_plain, t_ours, strict=True)]
    return {
        "shape": f"B{B} C{C} {N}×{N} m{m}",
        "ours": quartiles(t_ours),
        "einsum": quartiles(t_plain),
        "speedup": quartiles(ratios),
    }


def run_worker(spec: dict[str, Any]) -> None:
    torch.set_num_threads(spec["threads"])
    result = generator_worker(spec) if spec["kind"] == "generator" else spectral_worker(spec)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Driver


def spawn(spec: dict[str, Any], fixed_mmap_threshold: bool = False) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (its own memory high-water mark)."""
    env = dict(os.environ)
    if fixed_mmap_threshold:
        # glibc raises its mmap threshold after the first large free, and then keeps freed tensors
        # resident in the heap, which would hide the peak of later steps from RSS. A fixed threshold
        # keeps every tensor above 128 KiB in its own mapping, returned to the OS when freed. It costs
        # page faults on every allocation, so timing runs never use it.
        env.update(MALLOC_MMAP_THRESHOLD_=str(128 * 1024), MALLOC_TRIM_THRESHOLD_=str(128 * 1024))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker failed for {spec}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_generator(preset: str, name: str, common: dict[str, Any]) -> dict[str, Any]:
    """Timing and memory of one generator at one preset (two subprocesses), with the plan's figures."""
    spec = {"kind": "generator", "preset": preset, "name": name, **common}
    median, iqr = quartiles(spawn({**spec, "measure": "time"})["times"])
    peak = spawn({**spec, "measure": "memory"}, fixed_mmap_threshold=common["device"] == "cpu")["peak_bytes"]
    options = preset_options(preset)
    predicted = plan(name, **options)
    return {
        "params": predicted.params,
        "median_s": median,
        "iqr_s": iqr,
        "samples_per_s": options["batch_size"] / median,
        "peak_bytes": peak,
        "plan_bytes": predicted.activation_bytes + predicted.grad_bytes,
        "batch_size": options["batch_size"],
        "N": options["N"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--presets", default="cpu,paper", help="comma-separated presets (default: cpu,paper)")
    parser.add_argument("--generators", default=",".join(GENERATORS), help="comma-separated registry names")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default: 7)")
    parser.add_argument("--steps", type=int, default=3, help="steps per round (default: 3)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    names = [n.strip() for n in args.generators.split(",") if n.strip()]
    for p in presets:
        if p not in PRESETS:
            parser.error(f"unknown preset {p!r}; expected one of {', '.join(PRESETS)}")
    for n in names:
        if n not in GENERATORS:
            parser.error(f"unknown generator {n!r}; expected one of {', '.join(GENERATORS)}")
    common = dict(device=args.device, threads=args.threads, warmup=args.warmup, rounds=args.rounds, steps=args.steps)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"`{' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`  ")
    print(f"torch {torch.__version__}, {args.device} ({device_name}), {args.threads} threads, "
          f"{args.rounds} rounds × {args.steps} steps after {args.warmup} warm-up steps\n")  # fmt: skip
    print("| preset | generator | params | batch × N² | fwd+bwd ms (median) | IQR ms | samples/s "
          "| peak Δ MiB (measured) | plan act+grad MiB |")  # fmt: skip
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for preset in presets:
        for name in names:
            r = bench_generator(preset, name, common)
            print(f"| {preset} | {name} | {r['params']:,} | {r['batch_size']} × {r['N']}² | {r['median_s'] * 1e3:.1f} "
                  f"| {r['iqr_s'] * 1e3:.1f} | {r['samples_per_s']:.0f} | {r['peak_bytes'] / MiB:.1f} "
                  f"| {r['plan_bytes'] / MiB:.1f} |", flush=True)  # fmt: skip

    print("\n| preset | level-0 spectral layer | SpectralConv2d ms (IQR) | einsum ms (IQR) | speed-up (IQR) |")
    print("|---|---|---:|---:|---:|")
    for preset in presets:
        r = spawn({"kind": "spectral", "preset": preset, **common})
        (om, oi), (em, ei), (sm, si) = r["ours"], r["einsum"], r["speedup"]
        print(f"| {preset} | {r['shape']} | {om * 1e3:.2f} ({oi * 1e3:.2f}) | {em * 1e3:.2f} ({ei * 1e3:.2f}) "
              f"| {sm:.2f}× ({si:.2f}) |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""Wall time of whole shootouts at the `cpu` preset (issue 5's targets).

Runs each command in a fresh output directory, one after the other, and prints a markdown table:

* the `make demo` study (3 arms × 4 learning rates × 2 seeds, --jobs 2; target at most 6 minutes),
  with each arm's LR sensitivity and stable-LR boundary;
* `--seeds 10` (3 arms × 10 seeds × 20 epochs) with --jobs 1 and with --jobs 2 (target under
  30 minutes on 2 cores), and the parallel speed-up.

    python scripts/bench_shootout.py [--only demo,jobs1,jobs2] [--out /tmp/bench-shootout]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fnostab.report.document import SummaryDocument

CASES = {
    # Keep in step with the Makefile's demo target.
    "demo": ["--seeds", "2", "--lrs", "1e-3,1e-2,3e-2,1e-1", "--epochs", "5", "--jobs", "2"],
    "jobs1": ["--seeds", "10", "--jobs", "1"],
    "jobs2": ["--seeds", "10", "--jobs", "2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-shootout"))
    args = parser.parse_args()
    rows = []
    for name in args.only.split(","):
        sweep = args.out / name
        shutil.rmtree(sweep, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "fnostab",
            "shootout",
            "--preset",
            "cpu",
            *CASES[name],
            "--out",
            str(sweep),
            "--quiet",
            "--json",
        ]
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr}")
        summary = SummaryDocument.model_validate(json.loads(proc.stdout))
        runs = sum(arm.n for arm in summary.arms)
        ok = sum(arm.n_ok for arm in summary.arms)
        ssim = {arm.label: arm.metrics.amp_ssim.median for arm in summary.arms}
        rows.append((name, " ".join(CASES[name]), runs, ok, wall, ssim))
        print(f"{name}: {wall / 60:.1f} min; verdict {summary.verdict.outcome}", file=sys.stderr, flush=True)
        for arm in summary.stress.arms if summary.stress is not None else []:
            sens = arm.lr_sensitivity
            if sens is None:
                continue
            print(
                f"  {arm.arm}: stable-LR boundary {arm.boundary.lr}, LR sensitivity "
                f"{sens.mean} (95% CI {sens.ci95}, ℓ* {sens.best_loss}; common ℓ*: {sens.common.mean})",
                file=sys.stderr,
                flush=True,
            )
    print("| case | options | runs (ok) | wall | per run | median amp SSIM per arm |")
    print("|---|---|---:|---:|---:|---|")
    for name, options, runs, ok, wall, ssim in rows:
        arms = ", ".join(f"{k} {v:.3f}" for k, v in ssim.items() if v is not None)
        print(f"| {name} | `{options}` | {runs} ({ok}) | {wall / 60:.1f} min | {wall / runs:.0f} s | {arms} |")
    walls = {name: wall for name, _, _, _, wall, _ in rows}
    if "jobs1" in walls and "jobs2" in walls:
        print(f"\nparallel speed-up of --jobs 2 over --jobs 1: {walls['jobs1'] / walls['jobs2']:.2f}x")


if __name__ == "__main__":
    main()

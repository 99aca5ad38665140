"""Wall time of `simulate` per preset (issue 2's target: the paper preset in under 20 s on 2 cores).

python scripts/bench_simulate.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fnostab.config import PRESETS, SimulationConfig
from fnostab.data.simulate import simulate, write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"command: python scripts/bench_simulate.py --repeats {args.repeats}\n")
    print("| preset | N | S | train / test patches | simulate s (median) | write s (median) |")
    print("|---|---:|---:|---|---:|---:|")
    for name, preset in PRESETS.items():
        config = SimulationConfig(**preset["data"])
        sim, write = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            train, test = simulate(config)
            sim.append(time.perf_counter() - started)
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                write_dataset(train, test, Path(tmp))
                write.append(time.perf_counter() - started)
        counts = f"{train.metadata['n_patches']:,} / {test.metadata['n_patches']:,}"
        print(
            f"| {name} | {config.N} | {config.object_size} | {counts} | {statistics.median(sim):.2f} | "
            f"{statistics.median(write):.2f} |"
        )


if __name__ == "__main__":
    main()

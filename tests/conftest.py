"""Shared fixtures: an isolated data cache, a smoke data set, and a runner for the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # The in-process models are tiny: one intra-op thread is as fast, and immune to oversubscription
    # when a CLI subprocess or a neighbour holds the other core (2 threads then turn a 12 ms step into
    # seconds). CLI subprocesses keep torch's own default.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fnostab-cache")
    os.environ["FNOSTAB_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """train.npz and test.npz of the `smoke` preset, simulated once per session."""
    from fnostab.config import PRESETS, SimulationConfig
    from fnostab.data.simulate import simulate, write_dataset

    out = tmp_path_factory.mktemp("smoke-data")
    return write_dataset(*simulate(SimulationConfig(**PRESETS["smoke"]["data"])), out)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, timeout: float = 300, env: dict[str, str] | None = None) -> CliResult:
    """Run ``python -m fnostab ARGS`` in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "fnostab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=full_env,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_usage_error(result: CliResult, *fragments: str) -> None:
    """Exit 2, one error line naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], (fragment, error_lines[0])

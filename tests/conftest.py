"""Shared fixtures: an isolated data cache, a smoke data set, and a runner for the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# Process groups of the CLI processes the current test started; the reaper below kills what is left.
_started_groups: list[int] = []


def _default_sigint() -> None:
    # A child of a pytest started with SIGINT ignored (`cmd &` in a script, some CI runners) would
    # inherit the ignore and sit out a test's Ctrl-C: give it the disposition of an interactive shell.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_cli(*args: str | Path, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """Start ``python -m fnostab ARGS`` in its own process group, with the default SIGINT; the
    autouse reaper kills the group (pool workers included) when the test ends, passed or not."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen.setdefault("cwd", REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fnostab", *map(str, args)],
        env=full_env,
        start_new_session=True,
        preexec_fn=_default_sigint,
        **popen,
    )
    _started_groups.append(proc.pid)
    return proc


def run_cli(
    *args: str | Path, timeout: float = 300, env: dict[str, str] | None = None, process: bool = False
) -> CliResult:
    """Run the real program with ``ARGS``: in this process by default, or as ``python -m fnostab ARGS``
    in its own process group with ``process=True``.

    In-process runs go through the same entry point (:func:`fnostab.cli.app.main`: parsing, one-line
    errors, exit codes, stdout/stderr) and skip the interpreter start-up and the torch and Lightning
    imports, seconds per call. A test needs a real process for signals, for process groups whose
    members it must see end, and for a second command running beside the first.
    """
    if not process:
        return _run_cli_in_process(args, env)
    proc = spawn_cli(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise
    return CliResult(proc.returncode, stdout, stderr)


def _run_cli_in_process(args: tuple[str | Path, ...], env: dict[str, str] | None) -> CliResult:
    from typer.testing import CliRunner

    from fnostab.cli.app import main

    # main() installs fnostab's SIGTERM handler and a run may change torch's thread count: both are
    # process-wide, so they are put back for the tests that follow.
    threads = torch.get_num_threads()
    sigterm, sigint = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with CliRunner().isolation(env=env) as (stdout, stderr, _):
        try:
            main([str(arg) for arg in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            torch.set_num_threads(threads)
            signal.signal(signal.SIGTERM, sigterm)
            signal.signal(signal.SIGINT, sigint)
        return CliResult(code, stdout.getvalue().decode(), stderr.getvalue().decode())


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that are still running (zombies do not count)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, group = text[text.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(autouse=True)
def _reap_cli_processes() -> Iterator[None]:
    """No test leaves a process behind, also when it fails or times out: every group a test started
    through spawn_cli / run_cli is killed when it ends."""
    yield
    while _started_groups:
        _kill_group(_started_groups.pop())


def assert_clean_usage_error(result: CliResult, *fragments: str) -> None:
    """Exit 2, one error line naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], (fragment, error_lines[0])

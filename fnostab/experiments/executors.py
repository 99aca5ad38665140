"""Run a sweep's runs: one at a time in-process, in a local process pool, or as Ray tasks.

Every executor calls :func:`execute_run` for a run and gets back its short outcome; the run itself
writes its run dir (atomic files, ``result.json`` last), so results land in the same layout
whoever executes them. CPU threads are split between concurrent runs (``--jobs K`` on C cores
gives each run C // K threads) so parallel runs do not oversubscribe the machine.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from fnostab.devices import available_cores, threads_per_run
from fnostab.errors import InputError
from fnostab.experiments.store import RunSpec
from fnostab.interrupts import exit_on_sigterm
from fnostab.sweep_plan import PlannedRun
from fnostab.training.result import SweepInfo

Outcome = dict[str, Any]
_DATA_CACHE: dict[tuple[str, str], Any] = {}


def execute_run(spec_document: dict[str, Any], sweep_dir: str, kind: str, threads: int) -> Outcome:
    """Train one run of a sweep into its run dir; returns {dir, status, failure}. Never raises for a failed run."""
    import torch

    from fnostab.config import RunConfig
    from fnostab.data.npz import load_pair
    from fnostab.training.runner import prepare_run, run_training

    torch.set_num_threads(threads)
    config = RunConfig.model_validate(spec_document["config"])
    key = (str(config.data.train), str(config.data.test))
    if key not in _DATA_CACHE:  # a worker keeps the shared data set in memory across its runs
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_pair(*key)
    prepared = prepare_run(config, data=_DATA_CACHE[key])
    planned = PlannedRun.model_validate(spec_document)
    run_dir = Path(sweep_dir) / planned.dir
    sweep = SweepInfo(kind=kind, arm=planned.arm, seed=planned.seed, depth=planned.depth, lr=planned.lr)
    logging = spec_document.get("logging")
    if logging is not None:
        from fnostab.training.loggers import LoggingOptions

        logging = LoggingOptions.from_dict(logging)
    result = run_training(prepared, run_dir, sweep=sweep, memory_plan=planned.plan, logging=logging)
    return {"dir": planned.dir, "status": result["status"], "failure": result["failure"]}


def _document(spec: RunSpec, logging: Any = None) -> dict[str, Any]:
    """What a worker gets for one run: the spec, its config, and its loggers (an MLflow run named after
    its dir in the sweep, tagged with arm, seed, depth and lr)."""
    document = {**spec.planned().to_document(), "config": spec.config.to_json_dict()}
    if logging is not None and logging.loggers:
        name = spec.relative_dir.removeprefix("runs/")
        tags = {"arm": spec.arm, "seed": spec.seed, "depth": spec.depth, "lr": spec.lr}
        document["logging"] = logging.for_run(name, tags).to_dict()
    return document


def run_in_process(
    specs: list[RunSpec], sweep_dir: Path, kind: str, threads: int, logging: Any = None
) -> Iterator[Outcome]:
    for spec in specs:
        yield execute_run(_document(spec, logging), str(sweep_dir), kind, threads)


def run_in_pool(
    specs: list[RunSpec],
    sweep_dir: Path,
    kind: str,
    jobs: int,
    threads: int,
    worker: Callable[..., Outcome] = execute_run,
    logging: Any = None,
) -> Iterator[Outcome]:
    """K runs at once in spawned worker processes (spawn: torch and fork do not mix safely).

    A worker that dies without a word (the kernel's out-of-memory killer, a segfault) breaks the
    whole pool and takes every run in flight with it. Those runs are rerun alone, one at a time, so
    only the run that kills its worker again is recorded (``oom`` when SIGKILL ended it, else
    ``error``) and the others are not blamed; the rest of the sweep goes on in a fresh pool.
    ``worker`` is :func:`execute_run`, or a stand-in with its signature (tests).
    """
    queue = deque(specs)
    while queue:
        lost = yield from _pool_pass(queue, sweep_dir, kind, jobs, threads, worker, logging)
        for spec, _ in lost:
            shutil.rmtree(sweep_dir / spec.relative_dir, ignore_errors=True)  # half-written by the dead pool
            again = yield from _pool_pass(deque([spec]), sweep_dir, kind, 1, threads, worker, logging)
            if again:
                yield _record_worker_death(spec, sweep_dir, kind, again[0][1])


def _pool_pass(
    queue: deque[RunSpec],
    sweep_dir: Path,
    kind: str,
    jobs: int,
    threads: int,
    worker: Callable[..., Outcome],
    logging: Any = None,
) -> Generator[Outcome, None, list[tuple[RunSpec, int | None]]]:
    """Run ``queue`` (consumed) with at most ``jobs`` runs in flight; on a dead worker, return the
    runs that were in flight with the exit code of the dead process, leaving the rest queued."""
    context = multiprocessing.get_context("spawn")
    # Workers die at once on SIGTERM, so stopping them below ends their run without a result.json
    # (it restarts on resume) instead of Lightning finishing it behind our back.
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=exit_on_sigterm)
    in_flight: dict[Future, RunSpec] = {}
    processes: dict[int, multiprocessing.Process] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < jobs:
                spec = queue.popleft()
                in_flight[pool.submit(worker, _document(spec, logging), str(sweep_dir), kind, threads)] = spec
                processes.update(getattr(pool, "_processes", None) or {})
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    return [(spec, _death_code(processes.values())) for spec in in_flight.values()]
                del in_flight[future]
                yield outcome
        return []
    except BaseException:
        # Ctrl-C, SIGTERM (or an error) in the parent: stop the workers now instead of waiting for
        # their current runs, which are unfinished and restart on resume; no worker may outlive the
        # command. ProcessPoolExecutor has no public way to terminate its workers before Python 3.14.
        _stop_workers(list((getattr(pool, "_processes", None) or {}).values()))
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(processes: list[multiprocessing.Process], grace_s: float = 10.0) -> None:
    """SIGTERM every worker, then SIGKILL those still alive after ``grace_s`` seconds."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _death_code(processes: Iterable[multiprocessing.Process]) -> int | None:
    """The exit code of the worker that broke the pool: SIGKILL if any died of it (the pool
    SIGTERMs the survivors), else the first abnormal one."""
    codes = []
    for process in processes:
        process.join(timeout=5)  # its pipe closes a moment before it can be reaped
        if process.exitcode not in (None, 0):
            codes.append(process.exitcode)
    return -signal.SIGKILL if -signal.SIGKILL in codes else (codes[0] if codes else None)


def _record_worker_death(spec: RunSpec, sweep_dir: Path, kind: str, exit_code: int | None) -> Outcome:
    from fnostab.training.runner import record_bare_result

    if exit_code == -signal.SIGKILL:
        status, reason = "oom", "its process was killed by SIGKILL, most likely by the kernel's out-of-memory killer"
    else:
        status, reason = "error", f"its process died without a result (exit code {exit_code})"
    run_dir = sweep_dir / spec.relative_dir
    shutil.rmtree(run_dir, ignore_errors=True)  # whatever the dead process half-wrote
    result = record_bare_result(run_dir, spec.config, status, reason, plan=spec.plan, sweep=spec.sweep_info(kind))
    failure = None if result.failure is None else result.failure.to_document()
    return {"dir": spec.relative_dir, "status": status, "failure": failure}


def run_on_ray(
    specs: list[RunSpec],
    sweep_dir: Path,
    kind: str,
    threads: int,
    address: str | None,
    gpus_per_run: float,
    logging: Any = None,
) -> Iterator[Outcome]:
    """Each run a Ray task asking for ``threads`` CPUs (and GPUs); results land in ``sweep_dir``.

    Without an address a local Ray instance is started. On a cluster, ``sweep_dir`` and the data
    files must be on a filesystem every node sees.
    """
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'fnostab[ray]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            check_ray_address(address)
            try:
                ray.init(address=address, **options)
            except (ConnectionError, TimeoutError, ValueError, RuntimeError) as error:
                detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
                raise InputError(f"--ray-address {address}: cannot connect to a Ray cluster ({detail})") from None
        else:
            ray.init(num_cpus=available_cores(), **options)
    task = ray.remote(num_cpus=threads, num_gpus=gpus_per_run, max_retries=0)(execute_run)
    pending = [task.remote(_document(spec, logging), str(sweep_dir.resolve()), kind, threads) for spec in specs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


def check_ray_address(address: str) -> None:
    """The documented forms are ``auto``, ``HOST:PORT`` (a node of the cluster) and ``ray://HOST:PORT``
    (Ray Client, which needs grpcio: ``pip install 'fnostab[ray]'`` installs ``ray[client]``)."""
    import importlib.util

    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise InputError(
            f"--ray-address {address} uses Ray Client, which needs grpcio: pip install 'fnostab[ray]' "
            "(or 'ray[client]')"
        )


def execute(
    specs: list[RunSpec],
    sweep_dir: Path,
    kind: str,
    *,
    jobs: int,
    executor: str,
    ray_address: str | None = None,
    gpus_per_run: float = 0.0,
    on_outcome: Callable[[Outcome], None] | None = None,
    logging: Any = None,
) -> list[Outcome]:
    """Run ``specs`` with the chosen executor, calling ``on_outcome`` as each run finishes;
    ``logging`` (:class:`fnostab.training.loggers.LoggingOptions`) adds TensorBoard / MLflow loggers."""
    threads = threads_per_run(jobs)
    if executor == "ray":
        stream = run_on_ray(specs, sweep_dir, kind, threads, ray_address, gpus_per_run, logging)
    elif jobs == 1 or len(specs) <= 1:
        stream = run_in_process(specs, sweep_dir, kind, threads, logging)
    else:
        stream = run_in_pool(specs, sweep_dir, kind, min(jobs, len(specs)), threads, logging=logging)
    outcomes = []
    for outcome in stream:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes

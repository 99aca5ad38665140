"""One training run across K processes (``fnostab train --devices K --strategy ddp``).

:func:`launch` starts K spawned processes and sets the variables of Lightning's own cluster
environment in each (``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so every process is one rank
of the same Trainer with a :class:`~lightning.pytorch.strategies.DDPStrategy` (gloo on CPU, nccl on
CUDA).

How the numbers stay those of one process with the same global batch:

* every rank draws the same seeded order of global batches and takes its contiguous part of each
  (:func:`fnostab.training.data.train_loader`);
* each rank's mean loss is weighted by its share of the global batch before backward, so DDP's
  averaged gradient is the gradient of the global batch mean even when the parts differ by one;
* the logged loss is the all-reduced global mean, and clipping, AGC and the gradient norms run after
  backward, on the all-reduced gradients, which are the same on every rank;
* validation sums are all-reduced, so every rank's failure detector sees the same values and all
  ranks stop at the same step; only rank 0 writes the run dir (result.json once).

A rank that fails alone (an exception only it raised) ends its process with an error; the launcher
then stops the others and records the run as ``error`` (or ``oom``) once.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from fnostab.errors import InputError

# How long the other ranks may take to wind down once rank 0 has written result.json: they only
# tear down their process group by then, so a rank still alive after this is stuck in a collective.
_WIND_DOWN_S = 30.0
# A collective that waits longer than this means a rank died or hangs: fail instead of waiting
# torch's default 30 minutes.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


def launched() -> bool:
    """Whether this process is one rank of a multi-process run (started by :func:`launch`)."""
    return "LOCAL_RANK" in os.environ


def global_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def is_rank_zero() -> bool:
    return global_rank() == 0


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (``tensor`` itself in a single process)."""
    if world_size() == 1:
        return tensor
    tensor = tensor.clone()
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def check_devices(devices: int, accelerator: str, n_val: int) -> None:
    """K processes need K GPUs on CUDA, and every rank must validate at least one pattern (a rank with
    no validation batch would skip the validation loop and leave the others waiting in its all-reduce)."""
    if devices <= 1:
        return
    if accelerator == "cuda" and torch.cuda.device_count() < devices:
        found = torch.cuda.device_count()
        raise InputError(f"invalid --devices: {devices} CUDA processes need {devices} GPUs, found {found}")
    if n_val < devices:
        raise InputError(f"invalid --devices: {n_val} validation patterns cannot be split across {devices} processes")


def strategy(devices: int) -> Any:
    """The Trainer's strategy: Lightning's default for one device, DDP (gloo on CPU, nccl on CUDA) for more."""
    if devices == 1:
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    # No buffer sync before each forward: the only buffer is the fixed probe, the same on every rank.
    return DDPStrategy(find_unused_parameters=False, forward_sync_buffers=False, timeout=COLLECTIVE_TIMEOUT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(local_rank: int, port: int, threads: int, arguments: dict[str, Any]) -> None:
    """One spawned rank: Lightning reads its place from these variables and joins the process group."""
    os.environ.update(LOCAL_RANK=str(local_rank), NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("WORLD_SIZE", None)
    torch.set_num_threads(threads)
    from fnostab.training.runner import run_training

    run_training(**arguments)


def launch(prepared: Any, run_dir: Path, **arguments: Any) -> dict[str, Any]:
    """Run ``prepared`` on ``prepared.config.train.devices`` processes; returns rank 0's result document.

    A rank that raises, or dies, ends the run: the others are stopped and the run is recorded as
    ``error`` (``oom`` for an out-of-memory error or a SIGKILL) with the rank's reason.
    """
    import torch.multiprocessing as mp

    from fnostab.devices import threads_per_run
    from fnostab.rundir import RESULT_NAME, read_run_result
    from fnostab.training.runner import record_bare_result

    devices = prepared.config.train.devices
    threads = prepared.config.train.threads or threads_per_run(devices)  # the cores split between the ranks
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_NAME).unlink(missing_ok=True)
    context = mp.start_processes(
        _rank_main,
        args=(_free_port(), threads, {"prepared": prepared, "run_dir": run_dir, **arguments}),
        nprocs=devices,
        join=False,
        start_method="spawn",
    )
    try:
        failure = _wait(context)
    finally:
        _stop(context.processes)
    if failure is not None and context.processes[0].exitcode == 0 and (run_dir / RESULT_NAME).is_file():
        failure = None  # rank 0 finished and recorded the run; another rank failed only while winding down
    if failure is not None:
        status = "oom" if ("OutOfMemoryError" in failure or "SIGKILL" in failure) else "error"
        return record_bare_result(run_dir, prepared.config, status, failure[:500], plan=None).to_document()
    return read_run_result(run_dir).to_document()


def _wait(context: Any) -> str | None:
    """Wait for the ranks; the reason the run failed as a whole, or None once rank 0 has finished."""
    import torch.multiprocessing as mp

    rank_zero = context.processes[0]
    finished_at: float | None = None
    while True:
        try:
            if context.join(timeout=0.5):
                return None
        except mp.ProcessRaisedException as error:
            return f"rank {error.error_index} failed: {_last_line(error.msg)}"
        except mp.ProcessExitedException as error:
            name = f"signal {error.signal_name}" if error.signal_name else f"exit code {error.exit_code}"
            return f"rank {error.error_index} died ({name})"
        if not rank_zero.is_alive() and rank_zero.exitcode == 0:
            # Rank 0 wrote the result; a rank that is not done by now waits on a collective that never comes.
            finished_at = finished_at or time.monotonic()
            if time.monotonic() - finished_at > _WIND_DOWN_S:
                return None


def _last_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else message


def _stop(processes: list[Any]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


def finish_other_rank(error: BaseException | None) -> dict[str, Any]:
    """What a rank other than 0 returns: nothing to write; its own exception ends its process, so the
    launcher records it (rank 0 may be waiting for this rank in a collective)."""
    if error is not None:
        raise RuntimeError(f"{type(error).__name__}: {error}".strip()) from error
    return {}

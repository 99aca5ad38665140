"""Which device a command runs on: ``cpu``, ``cuda`` or ``auto`` (cuda when one is available), and how
many CPU cores the processes of one command share."""

from __future__ import annotations

import os

from fnostab.errors import InputError

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device_name(requested: str, option: str = "--device") -> str:
    """``"cpu"`` or ``"cuda"``; an InputError naming ``option`` for an unknown name or a missing GPU."""
    import torch

    if requested not in DEVICE_CHOICES:
        raise InputError(f"invalid {option}: expected one of {', '.join(DEVICE_CHOICES)}, got {requested!r}")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError(f"invalid {option}: cuda was requested but no CUDA device is available; use {option} cpu")
    return requested


def available_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_run(jobs: int) -> int:
    """torch threads for each of ``jobs`` processes sharing the cores, so they do not oversubscribe them."""
    return max(1, available_cores() // jobs)

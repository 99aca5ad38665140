"""Which device a command runs on: ``cpu``, ``cuda`` or ``auto`` (cuda when one is available)."""

from __future__ import annotations

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

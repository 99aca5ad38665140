"""Signals that stop a command: SIGINT (Ctrl-C) and SIGTERM end it the same way, with its own exit code.

Python turns SIGINT into KeyboardInterrupt but leaves SIGTERM at the kernel's default, which kills
the process on the spot: no "interrupted" line, no --json document, pool workers left orphaned.
:func:`raise_on_sigterm` makes SIGTERM raise :class:`~fnostab.errors.Terminated` (a
KeyboardInterrupt) instead, in the CLI's process and in every pool worker.

An inherited *ignored* SIGINT (``cmd &`` from a script, some CI runners) is kept: that is the
shell's request not to be stopped by Ctrl-C, and POSIX programs, Python itself included, honour it.
SIGTERM still stops such a process.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from fnostab.errors import Terminated


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def raise_on_sigterm() -> None:
    """SIGTERM raises Terminated in the main thread from now on (a no-op off the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)

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

import os
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


def _exit_now(signum: int, frame: FrameType | None) -> None:
    os._exit(128 + signum)


def exit_on_sigterm() -> None:
    """For pool workers: SIGTERM ends the process at once, idle or mid-run, also inside Lightning's
    fit (whose own handler would only set a flag and let the run go on). Its run dir has no
    result.json, so the run restarts on resume; an exception instead would print a traceback from
    an idle worker's loop."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_now)

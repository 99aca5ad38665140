"""How the library reports progress: a small protocol the caller implements (the CLI prints it).

Long-running library calls (:func:`fnostab.training.runner.run_training`,
:func:`fnostab.experiments.sweep.run_sweep`) take a :class:`Progress`; without one they are silent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol


class Progress(Protocol):
    """Where a long library call reports what it is doing."""

    def log(self, message: str) -> None:
        """One line of context for a human (what starts, what finished, a warning)."""

    def progress(self, description: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """A task of ``total`` units; the context yields ``advance(n)``, called as units finish."""


class Silent:
    """The :class:`Progress` of a caller that wants no reports."""

    def log(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None


SILENT = Silent()

"""Conventions every subcommand follows (README.md, The commands).

* Exit codes: 0 done; 1 the job ran and failed (a failed run, a failed write such as a full disk),
  or a requested gate failed; 2 bad usage or bad input (one line on stderr, no traceback, nothing
  written); 130 interrupted by Ctrl-C (SIGINT); 143 stopped by SIGTERM.
* ``--json`` prints exactly one JSON document on stdout whatever the exit code: the result, or
  ``{"status": "error" | "interrupted", "exit_code": N, "message": ...}``; logs go to stderr.
* Progress bars only on a terminal, never with ``--quiet``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fnostab.errors import InputError, Terminated

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM killed

F = TypeVar("F", bound=Callable[..., Any])

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)
# Whether this invocation has printed its one result document (so a failure after it adds none).
_result_printed = False


def begin_invocation() -> None:
    """Start a new invocation's output state: ``main`` may run more than once in one process."""
    global _result_printed
    _result_printed = False


class Output:
    """Where a command's words go: results on stdout (or one JSON document), the rest on stderr.

    It is the :class:`fnostab.progress.Progress` the CLI hands to the library (``log``, ``progress``).
    """

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet

    def log(self, message: str) -> None:
        """A progress or context line for a human, on stderr (silent with --quiet)."""
        if not self.quiet:
            _stderr.print(message, markup=False)

    def warn(self, message: str) -> None:
        _stderr.print(f"warning: {message}", markup=False)

    def result(self, text: str, document: Any) -> None:
        """The command's result: ``document`` as JSON with --json, else ``text`` on stdout."""
        global _result_printed
        _result_printed = True
        if self.json_mode:
            from fnostab.io import to_jsonable

            sys.stdout.write(json.dumps(to_jsonable(document), indent=2, allow_nan=False) + "\n")
        else:
            sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()

    @property
    def show_progress(self) -> bool:
        return not self.quiet and _stderr.is_terminal

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar over ``total`` items; yields ``advance(n)``. A no-op off a terminal."""
        if not self.show_progress:
            yield lambda n=1: None
            return
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_stderr,
            transient=True,
        )
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


def print_error_document(status: str, exit_code: int, message: str) -> None:
    """The one --json document of a command that ended without a result (bad input, interrupt, crash)."""
    global _result_printed
    if _result_printed:
        return
    _result_printed = True
    sys.stdout.write(json.dumps({"status": status, "exit_code": exit_code, "message": message}, indent=2) + "\n")
    sys.stdout.flush()


def report_failure(status: str, exit_code: int, message: str, *, json_mode: bool, prefix: str = "error: ") -> NoReturn:
    """One line on stderr (and the error document with --json), then exit ``exit_code``."""
    _stderr.print(f"{prefix}{message}", markup=False)
    if json_mode:
        print_error_document(status, exit_code, message)
    raise typer.Exit(exit_code)


def describe_os_error(error: OSError) -> str:
    """An OSError in our words, one line: what could not be done to which file, and why."""
    reason = error.strerror or str(error) or type(error).__name__
    where = f"{error.filename}: " if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}could not write: {reason} (free some space or choose another --out)"
    if error.strerror is None:  # raised with a message of ours (no errno)
        return str(error)
    return f"{where}{reason}"


def command(fn: F) -> F:
    """Wrap a subcommand so that every way it can end follows the conventions above.

    InputError → exit 2; Ctrl-C → 130 and SIGTERM → 143 with "interrupted" on stderr; an OSError
    (a full disk, a file that vanished) → exit 1 with one line; any other exception is a bug: its
    traceback, then one line, exit 1. With --json each of them also prints the error document.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begin_invocation()
        json_mode = bool(kwargs.get("json_output"))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:  # a RuntimeError: must not be taken for a crash below
            raise
        except InputError as error:
            report_failure("error", EXIT_USAGE, str(error), json_mode=json_mode)
        except KeyboardInterrupt as interrupt:
            terminated = isinstance(interrupt, Terminated)
            message = "interrupted by SIGTERM" if terminated else "interrupted"
            report_failure(
                "interrupted",
                EXIT_TERMINATED if terminated else EXIT_INTERRUPTED,
                message,
                json_mode=json_mode,
                prefix="",
            )
        except OSError as error:
            report_failure("error", EXIT_FAILED, describe_os_error(error), json_mode=json_mode)
        except Exception as error:  # noqa: BLE001 - a bug: keep its traceback, still end by the conventions
            _stderr.print("".join(traceback.format_exception(error)).rstrip(), markup=False)
            message = f"internal error: {type(error).__name__}: {error}"
            report_failure("error", EXIT_FAILED, message, json_mode=json_mode)

    return wrapper  # type: ignore[return-value]


# Option declarations shared by several subcommands, so that they read the same everywhere.
JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout; logs go to stderr.")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bars or log lines on stderr.")
LOGGER_OPTION = typer.Option(
    None,
    "--logger",
    help="Also log to tensorboard or mlflow (repeatable; metrics.csv is always written).",
    rich_help_panel="Logging",
)
MLFLOW_URI_OPTION = typer.Option(
    None,
    "--mlflow-uri",
    help="MLflow tracking URI (default: a file store mlruns/ in the run or sweep dir).",
    rich_help_panel="Logging",
)
PRESET_HELP = "Size preset: smoke (tests, seconds), cpu (default, minutes on 2 cores), paper (Stage A, GPU)."

GRIDSIZE_HELP = (
    "Patterns per sample as a g×g group (PtychoPINN's gridsize, 1 or 2; docs/gridsize.md). Without data "
    "files it picks the simulated data set; with files it must match what they hold (default: theirs)."
)


def gridsize_option(panel: str | None = None) -> Any:
    """The ``--gridsize`` declaration shared by the commands that train or probe a generator."""
    return typer.Option(None, "--gridsize", help=GRIDSIZE_HELP, rich_help_panel=panel)

"""The ``fnostab`` console program: one table maps each subcommand to a plain function."""

from __future__ import annotations

import sys

import typer

try:  # typer ≥ 0.25 runs on its own copy of click, whose exceptions are not click's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as click_errors

from fnostab import __version__
from fnostab.cli.common import EXIT_OK
from fnostab.cli.explain import explain_command
from fnostab.cli.grad_gain import grad_gain_command
from fnostab.cli.probe import probe_activations_command
from fnostab.cli.simulate import simulate_command
from fnostab.cli.summarize import summarize_command
from fnostab.cli.sweeps import shootout_command, stress_command
from fnostab.cli.train import train_command

app = typer.Typer(
    name="fnostab",
    help="Find out why Fourier-neural-operator generators blow up in training, and which fix keeps them stable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

COMMANDS = {
    "simulate": simulate_command,
    "train": train_command,
    "shootout": shootout_command,
    "stress": stress_command,
    "summarize": summarize_command,
    "explain": explain_command,
    "probe-activations": probe_activations_command,
    "grad-gain": grad_gain_command,
}
for _name, _function in COMMANDS.items():
    app.command(_name)(_function)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fnostab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool | None = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """fnostab: stability studies of FNO generators for ptychography."""


def main(argv: list[str] | None = None) -> None:
    """Run the program; every way it ends is an exit code of :mod:`fnostab.cli.common`.

    Click's own errors (an unknown option, ``--lr abc``, a misspelt command) are reported here in
    one line instead of typer's framed box; typer is run with ``standalone_mode=False`` for that.
    """
    from fnostab.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, begin_invocation, print_error_document
    from fnostab.interrupts import raise_on_sigterm

    begin_invocation()
    raise_on_sigterm()
    args = sys.argv[1:] if argv is None else list(argv)
    json_mode = "--json" in args
    try:
        code = app(args=args, prog_name="fnostab", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as error:
        if error.ctx is not None:
            typer.echo(error.ctx.get_help())  # the rich formatter prints it and returns ""
        code = EXIT_USAGE  # as click does: no command is a usage error
    except click_errors.UsageError as error:
        hint = f"; see '{error.ctx.command_path} --help'" if error.ctx is not None else ""
        message = error.format_message().replace("\n", " ") + hint
        typer.echo(f"error: {message}", err=True)
        if json_mode:
            print_error_document("error", EXIT_USAGE, message)
        code = EXIT_USAGE
    except click_errors.ClickException as error:
        typer.echo(f"error: {error.format_message()}", err=True)
        if json_mode:
            print_error_document("error", error.exit_code, error.format_message())
        code = error.exit_code
    except typer.Abort:  # Ctrl-C while click was still parsing
        typer.echo("interrupted", err=True)
        if json_mode:
            print_error_document("interrupted", EXIT_INTERRUPTED, "interrupted")
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else EXIT_OK)

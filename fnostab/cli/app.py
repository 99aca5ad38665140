"""The ``fnostab`` console program: one table maps each subcommand to a plain function."""

from __future__ import annotations

from typing import Optional

import typer

from fnostab import __version__
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
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """fnostab: stability studies of FNO generators for ptychography."""


def main() -> None:
    app()

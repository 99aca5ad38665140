"""``fnostab summarize``: run dirs → summary.json, summary.md, plots, the verdict and CI gates."""

from __future__ import annotations

from pathlib import Path

import typer

from fnostab.cli.common import EXIT_FAILED, JSON_OPTION, QUIET_OPTION, Output, command


@command
def summarize_command(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Run dirs, sweep dirs or result.json files."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Directory for summary.json, summary.md and plots (default: the single PATH; required for several).",
    ),
    fail_on: list[str] | None = typer.Option(
        None,
        "--fail-on",
        # Backslashes keep rich from reading [ARM] as markup in --help.
        help="Gate METRIC\\[ARM]OP NUMBER, e.g. 'failure_rate<=0.3' or 'amp_ssim\\[arch]>=0.4' "
        "(repeatable; exit 1 if one fails).",
    ),
    grad_norm_threshold: float = typer.Option(
        1.0, "--grad-norm-threshold", help="Report the fraction of logged steps with pre-clip gradient norm above this."
    ),
    json_output: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Summarise finished runs: failure rates, metrics vs the constant baseline, grad norms, verdict.

    Exit 0 when done, 1 when a --fail-on gate failed (the summary is still written), 2 on bad input.
    """
    from fnostab.report import format_terminal, summarize
    from fnostab.report.gates import describe_failure, parse_gates

    output = Output(json_mode=json_output, quiet=quiet)
    gates = parse_gates(fail_on or [])  # a malformed gate is exit 2 before any work
    document = summarize(paths, out_dir=out, threshold=grad_norm_threshold, gates=gates)
    output.log(f"summarized {document.runs.finished} runs into {document.out_dir}")
    for run_dir in document.runs.unfinished:
        output.log(f"skipped unfinished run (no result.json): {run_dir}")
    for warning in document.warnings:
        output.warn(warning)
    for name, why in document.plots.skipped.items():
        output.log(f"plot {name} skipped: {why}")
    output.result(format_terminal(document), document.to_json())
    failed = [entry for entry in document.gates if entry.passed is False]
    for entry in failed:
        output.warn(f"gate failed: {describe_failure(entry)}")
    if failed:
        raise typer.Exit(EXIT_FAILED)

"""``fnostab explain``: why a run failed — the first precursor signal, its block and lead, curvature;
text, JSON, plot.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fnostab.cli.common import JSON_OPTION, QUIET_OPTION, Output, command


@command
def explain_command(
    run_dir: Path = typer.Argument(
        ..., metavar="RUN_DIR", help="A run dir written by fnostab train (best with --precursors-every)."
    ),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the timeline explain.png into RUN_DIR."),
    json_output: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Explain a failed run: which signal moved first, in which block, by how much, how many steps before.

    Reads result.json, metrics.csv and precursors.csv of RUN_DIR. Exit 0 when explained (also when
    there is nothing to explain), 2 when RUN_DIR is not a finished run dir (nothing written).
    """
    from fnostab.report.explain import EXPLAIN_PNG, analyse_run, format_explanation, plot_explanation
    from fnostab.report.plots import save_figure

    output = Output(json_mode=json_output, quiet=quiet)
    document, traces = analyse_run(run_dir)
    document["plot"] = None
    if plot and document["event"] is not None:
        save_figure(plot_explanation(document, traces), run_dir / EXPLAIN_PNG)
        document["plot"] = str(run_dir / EXPLAIN_PNG)
    text = format_explanation(document)
    if document["plot"]:
        text += f"\ntimeline: {document['plot']}"
    output.result(text, document)

"""Summaries of finished runs: statistics per arm, the verdict of the decision rules, CI gates, plots.

``summarize(paths, out_dir=..., threshold=..., gates=...)`` is the one way in (``fnostab
summarize`` and the end of a sweep call it); the modules underneath are usable on their own:
``collect`` (find and load runs), ``stats`` (pure statistics), ``document`` (the typed summary.json),
``verdict`` (the decision rules, returning data), ``verdict_text`` (every sentence of the verdict),
``gates`` (the ``--fail-on`` grammar), ``plots``, ``markdown`` (summary.md and the terminal table).
"""

from fnostab.report.collect import Collection, RunRecord, collect
from fnostab.report.document import SUMMARY_SCHEMA, ArmSummary, SummaryDocument, Verdict, read_summary
from fnostab.report.gates import GATE_METRICS, Gate, evaluate_gates, parse_gate
from fnostab.report.markdown import format_summary_table, format_terminal, render_markdown
from fnostab.report.stats import wilson_interval
from fnostab.report.summary import build_summary, summarize
from fnostab.report.verdict import decide

__all__ = [
    "GATE_METRICS",
    "SUMMARY_SCHEMA",
    "ArmSummary",
    "Collection",
    "Gate",
    "RunRecord",
    "SummaryDocument",
    "Verdict",
    "build_summary",
    "collect",
    "decide",
    "evaluate_gates",
    "format_summary_table",
    "format_terminal",
    "parse_gate",
    "read_summary",
    "render_markdown",
    "summarize",
    "wilson_interval",
]

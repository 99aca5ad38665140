"""``fnostab summarize`` as a user runs it: a subprocess from the repo root, exit codes and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import make_result, write_run, write_sweep

from conftest import CliResult, assert_clean_usage_error, run_cli
from fnostab.report import SummaryDocument, read_summary
from fnostab.report.verdict_text import next_steps


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """control 1/2 failed, arch 0/2: enough for a table, a verdict and every shootout plot."""
    root = tmp_path_factory.mktemp("cli") / "sweep"
    write_sweep(root, "shootout", ["control", "arch"], [0, 1])
    rows = [{"epoch": 0, "step": s, "grad_norm_preclip": v} for s, v in enumerate([0.5, 3.0, 0.7])]
    write_run(root / "runs/control/seed-0", make_result("control", 0, best=0.02), rows)
    write_run(root / "runs/control/seed-1", make_result("control", 1, status="diverged", step=40, epoch=2, best=0.3))
    write_run(root / "runs/arch/seed-0", make_result("arch", 0, best=0.01, amp_ssim=0.55))
    write_run(root / "runs/arch/seed-1", make_result("arch", 1, best=0.012, amp_ssim=0.57))
    return root


@pytest.fixture(scope="module")
def json_run_with_failed_gate(sweep: Path) -> CliResult:
    """One CLI run shared by several tests (each subprocess costs about a second)."""
    return run_cli(
        "summarize", sweep, "--json", "--fail-on", "failure_rate<=0.6", "--fail-on", "failure_rate[control]<=0.3"
    )


def test_failed_gate_exits_1_naming_the_gate_and_its_value(json_run_with_failed_gate: CliResult) -> None:
    result = json_run_with_failed_gate
    assert result.returncode == 1, result.stderr
    assert "gate failed: failure_rate[control] = 0.5, required <= 0.3" in result.stderr
    assert "failure_rate<=0.6" not in result.stderr  # passing gates are not reported as failures
    assert "Traceback" not in result.stderr


def test_json_prints_one_parseable_summary_document(json_run_with_failed_gate: CliResult) -> None:
    data = json.loads(json_run_with_failed_gate.stdout)
    assert data["schema"] == "fnostab.summary/2"
    document = SummaryDocument.model_validate(data)  # every key where the model expects it
    control = next(g for g in document.arms if g.arm == "control")
    assert (control.n, control.failures, control.time_to_failure.steps) == (2, 1, [40])
    assert document.gates_passed is False
    assert [g.passed for g in document.gates] == [True, True, False]
    # The verdict's text in the JSON is the text of its codes.
    assert data["verdict"]["next_steps"] == next_steps(document.verdict)


def test_summary_json_markdown_and_plots_are_written_into_the_sweep_dir(
    json_run_with_failed_gate: CliResult, sweep: Path
) -> None:
    assert json_run_with_failed_gate.returncode == 1  # the summary is written before the gate fails
    assert read_summary(sweep / "summary.json").arms[1].arm == "arch"
    assert "## Verdict" in (sweep / "summary.md").read_text()
    for name in ("val_loss.png", "grad_norm.png", "ssim.png", "failure_times.png"):
        assert (sweep / name).read_bytes().startswith(b"\x89PNG"), name
    assert not (sweep / "stress_map.png").exists()


def test_human_output_is_a_per_arm_table_and_the_verdict(sweep: Path, tmp_path: Path) -> None:
    result = run_cli("summarize", sweep, "--out", tmp_path / "out", "--quiet", "--fail-on", "amp_ssim[arch]>=0.5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["arm", "n", "failed", "rate"]
    assert lines[1].split()[:4] == ["control", "2", "1", "50%"]
    assert any(line.startswith("verdict: ") for line in lines)
    assert result.stderr == ""
    assert (tmp_path / "out/summary.json").is_file()


def test_dir_without_runs_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_clean_usage_error(run_cli("summarize", tmp_path / "empty"), "no finished runs")


def test_corrupt_result_json_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", None)
    (run / "result.json").write_text('{"schema": "fnostab.result/1", "status"')
    assert_clean_usage_error(run_cli("summarize", run), str(run / "result.json"), "corrupt")


def test_malformed_gate_and_unknown_arm_are_usage_errors_with_nothing_written(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    assert_clean_usage_error(
        run_cli("summarize", sweep, "--out", out, "--fail-on", "failure_rate=0.3"), "failure_rate=0.3", "valid metrics"
    )
    assert_clean_usage_error(
        run_cli("summarize", sweep, "--out", out, "--fail-on", "failure_rate[opt]<=0.3"),
        "no arm 'opt'",
        "arms: arch, control",
    )
    assert not out.exists()

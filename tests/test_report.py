"""fnostab.report: statistics, verdict, stress boundary and gates on hand-made run dirs (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fnostab.errors import InputError
from fnostab.report import build_summary, collect, decide, evaluate_gates, parse_gate, summarize, wilson_interval
from fnostab.report.stats import first_block_to_blow_up, quartiles, series_stats, stable_boundary, stress_boundaries
from fnostab.sweep_plan import ArmOptions, SweepPlan
from fnostab.training.result import FailureInfo, ModelInfo, RunResult, SweepInfo, Timing, TrainingInfo

ARCH = {"control": ("hybrid", "none"), "arch": ("stable_hybrid", "none"), "opt": ("hybrid", "agc:0.01")}


# ------------------------------------------------------------------------------ run-dir writers
def make_result(
    arm: str,
    seed: int,
    *,
    status: str = "ok",
    step: int | None = None,
    epoch: int | None = None,
    best: float | None = 0.05,
    amp_ssim: float | None = 0.45,
    phase_ssim: float = 0.85,
    kind: str = "shootout",
    depth: int | None = None,
    lr: float | None = None,
    memory_plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A result.json document built through RunResult with only what summarize reads filled in."""
    arch, clip = ARCH.get(arm, ("hybrid", "none"))
    failure = None if status == "ok" else FailureInfo(status=status, reason=f"planted {status}", step=step, epoch=epoch)
    metrics = None
    if amp_ssim is not None and status != "infeasible":
        baseline = {"amp_ssim": 0.336, "amp_mae": 0.52, "phase_ssim": 0.879, "phase_aligned_ssim": 0.9}
        metrics = {
            "amp_ssim": amp_ssim,
            "amp_mae": 0.2,
            "phase_ssim": phase_ssim,
            "phase_aligned_ssim": 0.91,
            "baseline": baseline,
        }
    val_losses = [] if best is None else [2 * best, 1.5 * best, best]
    result = RunResult(
        name=arm,
        status=status,
        failure=failure,
        seed=seed,
        model=ModelInfo(arch=arch, params=1000, params_real=1500, config={"arch": arch, "fno_blocks": depth or 2}),
        training=TrainingInfo(
            config={"clip": clip, "lr": lr or 1e-3},
            epochs_completed=len(val_losses),
            steps=100,
            val_loss_name="mae_val_loss",
            val_losses=val_losses,
            train_losses=val_losses,
            best_val_loss=best,
            best_epoch=None if best is None else len(val_losses) - 1,
            final_val_loss=best,
            final_train_loss=best,
        ),
        grad_norm=None,
        metrics=metrics,
        evaluation_note=None,
        memory_plan=memory_plan,
        timing=Timing(wall_s=1.0, train_s=1.0, eval_s=0.1, samples_per_s=100.0),
        sweep=SweepInfo(kind=kind, arm=arm, seed=seed, depth=depth, lr=lr),
    )
    return result.to_document()


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.csv in CSVLogger layout: sorted union header, empty cells where a row lacks a key."""
    header = sorted({key for row in rows for key in row})
    lines = [",".join(header)] + [",".join("" if row.get(k) is None else str(row[k]) for k in header) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def write_run(run_dir: Path, result: dict[str, Any] | None, csv_rows: list[dict[str, Any]] | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text("{}")
    if result is not None:
        (run_dir / "result.json").write_text(json.dumps(result))
    if csv_rows is not None:
        write_csv(run_dir / "metrics.csv", csv_rows)
    return run_dir


def write_sweep(root: Path, kind: str, arms: list[str], seeds: list[int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    plan = SweepPlan(kind=kind, arms={a: ArmOptions() for a in arms}, seeds=seeds, runs=[])
    (root / "sweep.json").write_text(json.dumps(plan.to_document()))


# control seed 0 logs these pre-clip norms at steps 0..5, between sparse validation rows.
CONTROL_NORMS = [0.5, 2.0, 0.8, 150.0, 1.5, 0.9]


def grad_rows(norms: list[float]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for step, norm in enumerate(norms):
        rows.append({"epoch": step // 3, "step": step, "mae_train_loss": 0.1, "lr": 0.001, "grad_norm_preclip": norm})
        if step % 3 == 2:
            rows.append({"epoch": step // 3, "step": step, "mae_val_loss": 0.05})
    return rows


def block_rows() -> list[dict[str, Any]]:
    """Per-block monitor rows: block 1 crosses 10× its median (2.0) first, at step 6 (40 = 20×)."""
    series = {
        0: [1.0] * 8 + [50.0, 1.0],
        1: [2.0] * 6 + [40.0, "inf", 2.0, 2.0],
        2: [3.0] * 7 + [100.0, 3.0, 3.0],
    }
    rows = []
    for step in range(10):
        row: dict[str, Any] = {"epoch": 0, "step": step, "mae_train_loss": 0.1}
        row.update({f"block_grad_norm/{b}": values[step] for b, values in series.items()})
        row["block_act_mean/0"] = 0.5
        rows.append(row)
    return rows


@pytest.fixture()
def shootout(tmp_path: Path) -> Path:
    """A shootout sweep dir: control 2/4 failed, arch 0/3, opt 1/3, plus one unfinished control run."""
    root = tmp_path / "sweep"
    write_sweep(root, "shootout", ["control", "arch", "opt"], [0, 1, 2, 3])
    runs = root / "runs"
    write_run(runs / "control/seed-0", make_result("control", 0, best=0.02, amp_ssim=0.40), grad_rows(CONTROL_NORMS))
    write_run(
        runs / "control/seed-1", make_result("control", 1, status="diverged", step=120, epoch=3, best=0.5), block_rows()
    )
    write_run(runs / "control/seed-2", make_result("control", 2, status="collapsed", step=200, epoch=5, best=0.3))
    write_run(runs / "control/seed-3", make_result("control", 3, best=0.04, amp_ssim=0.50))
    write_run(runs / "control/seed-4", None)  # unfinished: config.json only
    for seed, best in enumerate([0.01, 0.015, 0.02]):
        write_run(runs / f"arch/seed-{seed}", make_result("arch", seed, best=best, amp_ssim=0.6))
    write_run(runs / "opt/seed-0", make_result("opt", 0, best=0.03))
    write_run(runs / "opt/seed-1", make_result("opt", 1, best=0.035))
    write_run(runs / "opt/seed-2", make_result("opt", 2, status="diverged", step=50, epoch=1, best=None, amp_ssim=None))
    # Lightning's scratch dir and train --force's staging dir are dot-dirs: a result.json there is no run.
    (runs / "opt/seed-2/.logs").mkdir()
    (runs / "opt/seed-2/.logs/result.json").write_text("{torn")
    return root


def arm_of(document: dict[str, Any], label: str) -> dict[str, Any]:
    return next(g for g in document["arms"] if g["label"] == label)


# ------------------------------------------------------------------------------------ statistics
def test_wilson_interval_matches_hand_computed_values() -> None:
    lo, hi = wilson_interval(3, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.1078, 0.6032)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(4, 3)


def test_quartiles_ignore_missing_and_nonfinite_values() -> None:
    assert quartiles([0.02, None, 0.04, math.nan]) == {"n": 2, "median": 0.03, "p25": 0.025, "p75": 0.035}
    assert quartiles([]) == {"n": 0, "median": None, "p25": None, "p75": None}


def test_series_stats_counts_steps_above_threshold_and_finds_the_spike() -> None:
    stats = series_stats([10, 20, 30, 40], [0.5, 3.0, math.inf, 2.0], threshold=1.0)
    assert stats["logged_steps"] == 4 and stats["nonfinite"] == 1
    assert stats["frac_above"] == pytest.approx(2 / 3) and stats["max"] == 3.0 and stats["max_step"] == 20


def test_first_block_to_blow_up_is_the_earliest_to_exceed_its_own_median() -> None:
    blocks = {
        0: (list(range(10)), [1.0] * 8 + [50.0, 1.0]),
        1: (list(range(10)), [2.0] * 6 + [40.0, math.inf, 2.0, 2.0]),
        2: (list(range(10)), [3.0] * 7 + [100.0, 3.0, 3.0]),
    }
    found = first_block_to_blow_up(blocks)
    assert (found["block"], found["step"], found["factor"], found["crossed"]) == (1, 6, 20.0, True)
    calm = first_block_to_blow_up({0: ([0, 1, 2], [1.0, 2.0, 1.0]), 1: ([0, 1, 2], [1.0, 1.0, 3.0])})
    assert (calm["block"], calm["step"], calm["factor"], calm["crossed"]) == (1, 2, 3.0, False)


def test_a_blow_up_reaching_every_block_at_once_names_the_block_with_the_largest_factor() -> None:
    # A run that diverges at step 1: the whole-run median is the exploded level, the earlier steps are not.
    blocks = {
        0: ([0, 1, 2, 3], [0.004, 5e10, 1.6e12, 3.7e12]),
        1: ([0, 1, 2, 3], [0.002, 1.7e7, 6e7, 1.5e8]),
        2: ([0, 1, 2, 3], [0.002, 1.6e5, 5e5, 5.9e5]),
    }
    found = first_block_to_blow_up(blocks)
    assert (found["block"], found["step"], found["crossed"]) == (0, 1, True)
    assert found["factor"] == pytest.approx(5e10 / 0.004)


def test_stable_boundary_stops_at_the_first_unstable_value() -> None:
    assert stable_boundary({1e-4: True, 1e-3: True, 1e-2: False}) == 1e-3
    assert stable_boundary({1e-4: True, 1e-3: False, 1e-2: True}) == 1e-4  # stable above a failure is luck
    assert stable_boundary({1e-4: False}) is None


# --------------------------------------------------------------------------------- summary numbers
def test_summary_of_a_hand_made_sweep_matches_its_runs(shootout: Path) -> None:
    document, _ = build_summary(collect([shootout]), threshold=1.0)
    assert [g["label"] for g in document["arms"]] == ["control", "arch", "opt"]
    assert document["runs"]["finished"] == 10
    assert document["runs"]["unfinished"] == [str(shootout / "runs/control/seed-4")]

    control = arm_of(document, "control")
    assert (control["n"], control["n_ok"], control["failures"], control["failure_rate"]) == (4, 2, 2, 0.5)
    assert control["failures_by_status"] == {"diverged": 1, "collapsed": 1, "oom": 0, "error": 0}
    assert control["failure_ci95"] == pytest.approx(list(wilson_interval(2, 4)))
    ttf = control["time_to_failure"]
    assert (ttf["steps"], ttf["epochs"]) == ([120, 200], [3, 5])
    assert ttf["step"] == {"median": 160.0, "min": 120.0, "max": 200.0} and ttf["epoch"]["median"] == 4.0
    # Conditional on ok runs: the failed runs' losses 0.5 and 0.3 must not enter the median.
    assert control["metrics"]["best_val_loss"] == {
        "n": 2,
        "median": 0.03,
        "p25": 0.025,
        "p75": 0.035,
        "baseline_median": None,
    }
    assert control["metrics"]["amp_ssim"]["median"] == pytest.approx(0.45)
    assert control["metrics"]["amp_ssim"]["baseline_median"] == pytest.approx(0.336)
    assert control["metrics"]["amp_ssim_gain"]["median"] == pytest.approx(0.45 - 0.336)
    assert control["metrics"]["phase_ssim"]["baseline_median"] == pytest.approx(0.879)

    grads = control["grad_norm"]
    assert (grads["runs_with_series"], grads["runs_without_series"], grads["logged_steps"]) == (1, 3, 6)
    assert grads["frac_above"] == pytest.approx(0.5) and grads["above"] == 3
    assert (
        grads["max"] == 150.0 and grads["max_step"] == 3 and grads["max_run"] == str(shootout / "runs/control/seed-0")
    )
    assert grads["median"] == pytest.approx(1.2)

    diverged = next(r for r in control["runs"] if r["seed"] == 1)
    assert diverged["first_block_to_blow_up"]["block"] == 1 and diverged["first_block_to_blow_up"]["step"] == 6

    opt = arm_of(document, "opt")
    assert (opt["failures"], opt["time_to_failure"]["steps"]) == (1, [50])
    assert opt["metrics"]["best_val_loss"]["median"] == pytest.approx(0.0325)


def test_grad_norm_threshold_changes_the_fraction_above(shootout: Path) -> None:
    document, _ = build_summary(collect([shootout / "runs/control/seed-0"]), threshold=1.0)
    assert document["arms"][0]["grad_norm"]["frac_above"] == pytest.approx(3 / 6)
    document, _ = build_summary(collect([shootout / "runs/control/seed-0"]), threshold=100.0)
    assert document["arms"][0]["grad_norm"]["frac_above"] == pytest.approx(1 / 6)


def test_summarize_writes_json_markdown_and_plots_into_the_sweep_dir(shootout: Path) -> None:
    document = summarize([shootout])
    assert document["out_dir"] == str(shootout)
    on_disk = json.loads((shootout / "summary.json").read_text())
    assert on_disk["schema"] == "fnostab.summary/1" and on_disk["arms"][0]["failures"] == 2
    assert "NaN" not in (shootout / "summary.json").read_text()
    markdown = (shootout / "summary.md").read_text()
    assert "## Verdict" in markdown and "| control | 4 | 2 | 50% |" in markdown
    assert set(document["plots"]["written"]) == {
        "val_loss.png",
        "grad_norm.png",
        "train_loss.png",
        "ssim.png",
        "failure_times.png",
    }
    assert document["plots"]["skipped"] == {
        "stress_map.png": "no stress runs",
        "lr_curves.png": "no learning-rate grid with at least two rates",
    }
    for name in document["plots"]["written"]:
        assert (shootout / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(shootout.glob(".*.tmp"))


def test_collect_rejects_missing_paths_empty_dirs_and_corrupt_results(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        collect([tmp_path / "absent"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no finished runs"):
        collect([tmp_path / "empty"])
    bad = write_run(tmp_path / "bad", None)
    (bad / "result.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad/result\.json"):
        collect([tmp_path / "bad"])


def test_several_paths_need_an_out_dir(shootout: Path, tmp_path: Path) -> None:
    paths = [shootout / "runs/control", shootout / "runs/arch"]
    with pytest.raises(InputError, match="--out"):
        summarize(paths)
    document = summarize(paths, out_dir=tmp_path / "both", plots=False)
    assert [g["label"] for g in document["arms"]] == ["control", "arch"]
    assert (tmp_path / "both/summary.json").is_file()


# ------------------------------------------------------------------------------------ verdict
def arm(name: str, n: int, failures: int, median_loss: float | None, **extra: Any) -> dict[str, Any]:
    """A per-arm summary entry with the fields the verdict reads."""
    arch, clip = ARCH[name]
    return {
        "arm": name,
        "label": name,
        "kind": "shootout",
        "arch": arch,
        "clip": clip,
        "n": n,
        "failures": failures,
        "failure_rate": failures / n,
        "failure_ci95": list(wilson_interval(failures, n)),
        "metrics": {"best_val_loss": {"n": n - failures, "median": median_loss}},
        **extra,
    }


def cell(name: str, depth: int, lr: float, n: int, failures: int, infeasible: bool = False) -> dict[str, Any]:
    arch, clip = ARCH[name]
    return {
        "arm": name,
        "arch": arch,
        "clip": clip,
        "depth": depth,
        "lr": lr,
        "n": 0 if infeasible else n,
        "failures": failures,
        "infeasible": infeasible,
    }


def test_verdict_gold_when_arch_wins_stage_a_and_scales_further_in_stage_b() -> None:
    groups = [arm("control", 10, 4, 0.050), arm("arch", 10, 0, 0.040), arm("opt", 10, 2, 0.052)]
    stress = {
        "cells": [
            cell("control", 4, 1e-3, 3, 0),
            cell("control", 4, 1e-2, 3, 2),
            cell("arch", 4, 1e-3, 3, 0),
            cell("arch", 4, 1e-2, 3, 0),
        ]
    }
    verdict = decide(groups, stress)
    assert verdict["outcome"] == "gold"
    assert verdict["stage_a"]["arch"]["passes"] is True
    assert verdict["stage_a"]["arch"]["numbers"]["failure_rate"] == 0.0
    assert verdict["stage_b"]["arch"]["fix"]["boundary"]["lr"] == 1e-2
    assert verdict["stage_b"]["arch"]["control"]["boundary"]["lr"] == 1e-3
    assert "control failed 4/10 (40%" in verdict["explanation"]
    assert verdict["stage_a"]["arch"]["intervals_overlap"] is True  # 0/10 vs 4/10 still overlap at n = 10


def test_verdict_silver_when_arch_loses_on_loss_and_agc_cuts_failures_within_10_percent() -> None:
    groups = [arm("control", 10, 4, 0.050), arm("arch", 10, 0, 0.060), arm("opt", 10, 1, 0.054)]
    verdict = decide(groups)
    assert verdict["outcome"] == "silver"
    assert verdict["stage_a"]["arch"]["passes"] is False
    assert verdict["stage_a"]["opt"]["checks"] == {"lower_failure_rate": True, "loss_within_10pct": True}
    assert verdict["stage_a"]["opt"]["loss_ratio"] == pytest.approx(1.08)
    # An 11% regression is too much for the opt fix.
    assert decide([groups[0], groups[1], arm("opt", 10, 1, 0.0555)])["stage_a"]["opt"]["passes"] is False


def test_stage_a_does_not_compare_losses_of_arms_validated_with_different_losses() -> None:
    mae, poisson = {"val_loss_names": ["mae_val_loss"]}, {"val_loss_names": ["poisson_val_loss"]}
    groups = [
        arm("control", 10, 4, 0.050, **mae),
        arm("arch", 10, 0, 0.040, **poisson),
        arm("opt", 10, 1, 0.052, **mae),
    ]
    stage_a = decide(groups)["stage_a"]
    assert stage_a["arch"]["checks"] == {"lower_failure_rate": True, "beats_control_loss": None}
    assert stage_a["arch"]["passes"] is None and stage_a["arch"]["loss_ratio"] is None
    assert any("cannot be compared" in reason for reason in stage_a["arch"]["reasons"])
    assert stage_a["opt"]["passes"] is True  # same loss as the control: compared as usual


def test_verdict_pivot_when_both_fixes_fail_the_stress_test() -> None:
    groups = [arm("control", 10, 4, 0.050), arm("arch", 10, 1, 0.045), arm("opt", 10, 2, 0.051)]
    stress = {
        "cells": [
            cell(name, 6, lr, 3, fails) for name in ("control", "arch", "opt") for lr, fails in ((1e-3, 0), (1e-2, 3))
        ]
    }
    verdict = decide(groups, stress)
    assert verdict["outcome"] == "pivot"
    assert verdict["stage_b"]["arch"]["passes"] is False and verdict["stage_b"]["opt"]["passes"] is False
    assert verdict["stage_b"]["arch"]["fix"]["deep"] == {
        "n": 6,
        "failures": 3,
        "failure_rate": 0.5,
        "failure_ci95": pytest.approx(list(wilson_interval(3, 6))),
    }


def test_verdict_inconclusive_when_the_control_never_failed() -> None:
    groups = [arm("control", 10, 0, 0.050), arm("arch", 10, 0, 0.040), arm("opt", 10, 0, 0.050)]
    verdict = decide(groups)
    assert verdict["outcome"] == "inconclusive"
    assert verdict["stage_a"]["arch"]["passes"] is None
    assert verdict["stage_a"]["arch"]["checks"]["lower_failure_rate"] is None
    assert any("never failed in 10 runs" in step and "fnostab shootout --lrs" in step for step in verdict["next_steps"])


def test_verdict_inconclusive_when_the_control_never_failed_even_if_both_fixes_lose() -> None:
    groups = [arm("control", 2, 0, 0.227), arm("arch", 2, 0, 0.234), arm("opt", 2, 2, None)]
    verdict = decide(groups)
    assert verdict["stage_a"]["arch"]["passes"] is False and verdict["stage_a"]["opt"]["passes"] is False
    assert verdict["outcome"] == "inconclusive"


def test_verdict_inconclusive_when_a_role_arm_crashed() -> None:
    crashed = arm(
        "opt",
        10,
        2,
        0.05,
        failures_by_status={"error": 2},
        runs=[{"status": "error", "failure": {"reason": "ValueError: bad clip"}}],
    )
    verdict = decide([arm("control", 10, 4, 0.05), arm("arch", 10, 0, 0.06), crashed])
    assert verdict["outcome"] == "inconclusive"
    assert "Fix the error of opt and rerun its runs: ValueError: bad clip" in verdict["next_steps"]


def test_verdict_pivot_when_both_fixes_lose_stage_a_to_a_failing_control() -> None:
    groups = [arm("control", 10, 3, 0.05), arm("arch", 10, 1, 0.06), arm("opt", 10, 5, 0.05)]
    assert decide(groups)["outcome"] == "pivot"


def test_verdict_inconclusive_when_stage_b_was_not_measured() -> None:
    groups = [arm("control", 10, 4, 0.050), arm("arch", 10, 0, 0.040), arm("opt", 10, 4, 0.050)]
    verdict = decide(groups)
    assert verdict["outcome"] == "inconclusive" and verdict["stage_a"]["arch"]["passes"] is True
    assert any("Stage B was not measured" in step for step in verdict["next_steps"])


def test_verdict_finds_the_control_by_architecture_when_no_arm_is_named_control() -> None:
    groups = [dict(arm("control", 10, 4, 0.05), arm="hybrid/none", label="hybrid/none"), arm("arch", 10, 0, 0.04)]
    assert decide(groups)["stage_a"]["roles"]["control"] == "hybrid/none"
    assert decide([arm("arch", 10, 0, 0.04)])["outcome"] == "inconclusive"


# ---------------------------------------------------------------------------------- stress grid
def test_stress_boundary_from_hand_made_stress_runs(tmp_path: Path) -> None:
    root = tmp_path / "stress"
    write_sweep(root, "stress", ["control"], [0, 1])
    plan = {"params": 4_417_975_522, "total_bytes": 141_375_216_704, "geometry_error": None}
    outcomes = {  # (depth, lr) → statuses of seeds 0 and 1
        (4, 1e-4): ["ok", "ok"],
        (4, 1e-3): ["ok", "ok"],
        (4, 1e-2): ["diverged", "ok"],
        (6, 1e-4): ["ok", "ok"],
        (6, 1e-3): ["diverged", "collapsed"],
        (6, 1e-2): ["diverged", "diverged"],
        (8, 1e-4): ["infeasible"] * 2,
        (8, 1e-3): ["infeasible"] * 2,
        (8, 1e-2): ["infeasible"] * 2,
    }
    for (depth, lr), statuses in outcomes.items():
        for seed, status in enumerate(statuses):
            result = make_result(
                "control",
                seed,
                status=status,
                step=0 if status == "infeasible" else 30,
                epoch=1,
                kind="stress",
                depth=depth,
                lr=lr,
                memory_plan=plan if depth == 8 else None,
            )
            write_run(root / f"runs/control/d{depth}-lr{lr:g}/seed-{seed}", result)
    document, _ = build_summary(collect([root]))
    stress = document["stress"]
    boundaries = stress["arms"][0]
    assert boundaries["lr_by_depth"] == [
        {"depth": 4, "lr": 1e-3, "infeasible": False},
        {"depth": 6, "lr": 1e-4, "infeasible": False},
        {"depth": 8, "lr": None, "infeasible": True},
    ]
    assert boundaries["depth_by_lr"] == [
        {"lr": 1e-4, "depth": 6},
        {"lr": 1e-3, "depth": 4},
        {"lr": 1e-2, "depth": None},
    ]
    assert boundaries["boundary"] == {"lr": 1e-4, "depth": None, "lr_swept": True, "depth_swept": True}
    d6 = next(c for c in stress["cells"] if c["depth"] == 6 and c["lr"] == 1e-3)
    assert (d6["n"], d6["failures"], d6["statuses"], d6["stable"]) == (2, 2, {"collapsed": 1, "diverged": 1}, False)
    assert [(i["depth"], i["lr"], i["seeds"]) for i in stress["infeasible"]] == [
        (8, 1e-4, [0, 1]),
        (8, 1e-3, [0, 1]),
        (8, 1e-2, [0, 1]),
    ]
    assert (
        stress["infeasible"][0]["params"] == 4_417_975_522 and stress["infeasible"][0]["total_bytes"] == 141_375_216_704
    )
    assert arm_of(document, "control@d4-lr0.01")["failure_rate"] == 0.5
    # Infeasible runs never trained, so they have no time to failure.
    assert arm_of(document, "control@d8-lr0.001")["time_to_failure"]["steps"] == []
    assert document["verdict"]["outcome"] == "inconclusive"  # only the control was stressed


def test_stress_boundaries_compare_arms_on_a_shared_grid() -> None:
    cells = [cell("control", 4, 1e-3, 2, 0), cell("control", 4, 1e-2, 2, 1), cell("control", 8, 1e-3, 2, 0)]
    # lr 1e-2 fails even at depth 4
    assert stress_boundaries(cells)["boundary"] == {"lr": 1e-3, "depth": None, "lr_swept": True, "depth_swept": True}
    # restricted to one lr, the lr axis is not swept: only the depth boundary remains
    assert stress_boundaries(cells, lrs=[1e-3])["boundary"] == {
        "lr": None,
        "depth": 8,
        "lr_swept": False,
        "depth_swept": True,
    }


# -------------------------------------------------------------------------------------- gates
def test_gates_pass_and_fail_on_per_arm_numbers(shootout: Path) -> None:
    document, _ = build_summary(collect([shootout]))
    gates = [
        parse_gate(text)
        for text in (
            "failure_rate<=0.5",
            "failure_rate[control] < 0.5",
            "amp_ssim[arch]>=0.6",
            "best_val_loss[opt]<1e-1",
        )
    ]
    results = evaluate_gates(gates, document["arms"])
    verdicts = {(r["gate"], r["arm"]): (r["value"], r["passed"]) for r in results}
    assert verdicts[("failure_rate<=0.5", "control")] == (0.5, True)
    assert verdicts[("failure_rate<=0.5", "opt")] == (pytest.approx(1 / 3), True)
    assert verdicts[("failure_rate[control] < 0.5", "control")] == (0.5, False)
    assert verdicts[("amp_ssim[arch]>=0.6", "arch")] == (pytest.approx(0.6), True)
    assert verdicts[("best_val_loss[opt]<1e-1", "opt")] == (pytest.approx(0.0325), True)
    assert len(results) == 6


def test_a_gate_without_a_value_fails(shootout: Path) -> None:
    document, _ = build_summary(collect([shootout / "runs/opt/seed-2"]))  # the only run diverged: no median
    [result] = evaluate_gates([parse_gate("best_val_loss<1")], document["arms"])
    assert result["value"] is None and result["passed"] is False


@pytest.mark.parametrize(
    "text", ["failure_rate=0.3", "failure_rate<=", "<=0.3", "failure_rate[control<=0.3", "failure_rate<=abc"]
)
def test_malformed_gates_are_input_errors_listing_valid_metrics(text: str) -> None:
    with pytest.raises(InputError, match="valid metrics: failure_rate"):
        parse_gate(text)


def test_unknown_gate_metric_and_unknown_arm_are_input_errors(shootout: Path) -> None:
    with pytest.raises(InputError, match="unknown metric 'accuracy'.*valid metrics"):
        parse_gate("accuracy>0.5")
    with pytest.raises(InputError, match="no arm 'nope'.*arms: arch, control, opt"):
        summarize([shootout], gates=["failure_rate[nope]<=0.5"])
    assert not (shootout / "summary.json").exists()  # nothing written on bad input


def test_roles_fall_back_to_architecture_and_clip_without_giving_one_arm_two_roles() -> None:
    from fnostab.report.verdict import resolve_roles

    roles = resolve_roles(
        {
            "base": ("hybrid", "none"),
            "stable": ("stable_hybrid", "none"),
            "agc_t": ("hybrid", "agc_tensor:0.01"),
            "agc_u": ("hybrid", "agc:0.01"),
        }
    )
    assert roles == {"control": "base", "arch": "stable", "opt": "agc_u"}
    assert resolve_roles({"arch": ("hybrid", "none")}) == {"control": None, "arch": "arch", "opt": None}


def test_an_axis_with_one_tested_value_has_no_boundary_and_says_not_swept() -> None:
    from fnostab.report.verdict import stage_b_check

    cells = [
        {"arm": arm, "depth": 2, "lr": lr, "n": 1, "failures": int(lr > limit), "infeasible": False}
        for arm, limit in (("control", 1e-2), ("arch", 3e-2))
        for lr in (1e-3, 1e-2, 3e-2, 1e-1)
    ]
    bounds = stress_boundaries([c for c in cells if c["arm"] == "control"])["boundary"]
    assert bounds == {"lr": 1e-2, "depth": None, "lr_swept": True, "depth_swept": False}
    check = stage_b_check("arch", cells, "control", "arch")
    assert check["checks"]["lr_beyond"] is True and check["checks"]["depth_beyond"] is None
    assert check["passes"] is True

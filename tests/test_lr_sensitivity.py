"""LR sensitivity (Wortsman et al. 2023): the definition by hand, the verdict that uses it, and the CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_report import arm as arm_entry
from test_report import cell, grid_section, run_entry, sensitivity

from conftest import run_cli
from fnostab.config import DataSource
from fnostab.experiments.arms import DEFAULT_ARMS
from fnostab.experiments.shootout import plan_shootout
from fnostab.report.document import ArmSummary, SeedSensitivity, SensitivityScores, StressCell, SummaryDocument
from fnostab.report.lr_sensitivity import LrPoint, arm_lr_sensitivity, lr_sensitivities, score, seeds_to_separate
from fnostab.report.verdict import decide
from fnostab.report.verdict_text import explanation

T_975_1DF = 12.706204736174698  # Student t, 97.5% quantile, 1 degree of freedom


def _points(seed: int, initial: float, outcomes: list[tuple[float, str, float | None]]) -> list[LrPoint]:
    return [LrPoint(seed, lr, status, final, initial) for lr, status, final in outcomes]


ARM_POINTS = _points(0, 1.0, [(1e-3, "ok", 0.2), (1e-2, "ok", 0.3), (1e-1, "diverged", None)]) + _points(
    1, 0.9, [(1e-3, "ok", 0.25), (1e-2, "ok", 1.2), (1e-1, "collapsed", 0.05)]
)


def test_a_failed_run_scores_its_initial_loss_and_a_worse_than_initial_run_is_capped() -> None:
    assert score(LrPoint(0, 1e-1, "diverged", None, 1.0)) == (1.0, None)
    assert score(LrPoint(0, 1e-1, "collapsed", 0.05, 0.9)) == (0.9, None)  # a low loss does not rescue a collapse
    assert score(LrPoint(0, 1e-2, "ok", 1.2, 0.9)) == (0.9, None)
    assert score(LrPoint(0, 1e-2, "ok", 0.3, 0.9)) == (0.3, None)
    value, why = score(LrPoint(0, 1e-2, "oom", None, 0.9))
    assert value is None and "oom" in why


def test_lr_sensitivity_equals_the_hand_computed_definition() -> None:
    entry = arm_lr_sensitivity(ARM_POINTS)
    # ℓ* = 0.2; seed 0: (0.2 + 0.3 + 1.0)/3 − 0.2 = 0.3; seed 1: (0.25 + 0.9 + 0.9)/3 − 0.2 = 0.48333…
    assert entry["grid"] == [1e-3, 1e-2, 1e-1] and entry["best_loss"] == 0.2
    assert [s["value"] for s in entry["per_seed"]] == pytest.approx([0.3, 2.05 / 3 - 0.2])
    assert entry["per_seed"][1]["scores"] == [0.25, 0.9, 0.9]
    mean = (0.3 + 2.05 / 3 - 0.2) / 2
    half = T_975_1DF * (abs(2.05 / 3 - 0.2 - 0.3) / math.sqrt(2)) / math.sqrt(2)
    assert entry["mean"] == pytest.approx(mean)
    assert entry["ci95"] == pytest.approx([mean - half, mean + half])


def test_common_best_loss_shifts_every_seed_by_the_gap_to_the_best_arm() -> None:
    entries = lr_sensitivities(
        {"own": ARM_POINTS, "better": _points(0, 1.0, [(1e-3, "ok", 0.15), (1e-2, "ok", 0.16), (1e-1, "ok", 0.17)])}
    )
    own, better = entries["own"], entries["better"]
    assert own["mean"] == arm_lr_sensitivity(ARM_POINTS)["mean"]
    assert own["common"]["best_loss"] == better["common"]["best_loss"] == 0.15
    assert [s["value"] for s in own["common"]["per_seed"]] == pytest.approx([0.35, 2.05 / 3 - 0.15])
    assert better["common"]["mean"] == pytest.approx(better["mean"]) == pytest.approx(0.01)
    assert better["ci95"] is None  # one seed: no interval


def test_a_seed_with_an_oom_or_a_missing_rate_is_left_out_with_its_reason() -> None:
    points = ARM_POINTS + _points(2, 1.0, [(1e-3, "ok", 0.2), (1e-2, "oom", None)])
    entry = arm_lr_sensitivity(points)
    assert entry["n_seeds"] == 2 and [s["seed"] for s in entry["per_seed"]] == [0, 1]
    (left_out,) = entry["excluded_seeds"]
    assert left_out["seed"] == 2
    assert any("status oom" in r for r in left_out["reasons"]) and any("0.1: no run" in r for r in left_out["reasons"])


def test_one_learning_rate_is_no_grid() -> None:
    assert arm_lr_sensitivity(_points(0, 1.0, [(1e-3, "ok", 0.2)])) is None


# ----------------------------------------------------------------------------------------- verdict
def _grid_group(name: str, lr: float, statuses: list[str], best: float = 0.1) -> ArmSummary:
    failures = sum(s != "ok" for s in statuses)
    return arm_entry(
        name,
        len(statuses),
        failures,
        best,
        label=f"{name}@d2-lr{lr}",
        grid_cell=True,
        depth=2,
        lr=lr,
        val_loss_names=["mae_val_loss"],
        runs=[run_entry(i, s, best if s == "ok" else None) for i, s in enumerate(statuses)],
    )


def _cells(groups: list[ArmSummary]) -> list[StressCell]:
    return [cell(g.arm, g.depth, g.lr, g.n, g.failures) for g in groups]


def test_stage_a_is_taken_at_the_learning_rates_where_the_control_fails() -> None:
    groups = [
        _grid_group("control", 1e-3, ["ok"] * 3),
        _grid_group("control", 1e-2, ["collapsed"] * 3),
        _grid_group("arch", 1e-3, ["ok"] * 3, 0.09),
        _grid_group("arch", 1e-2, ["ok", "ok", "collapsed"], 0.095),
    ]
    verdict = decide(groups, grid_section(_cells(groups)))
    stage_a = verdict.stage_a
    assert stage_a.source == "lr_grid" and stage_a.lrs == [1e-2]
    assert stage_a.control.failures == 3 and stage_a.control.n == 3
    assert stage_a.arch.numbers.failures == 1 and stage_a.arch.numbers.median_best_val_loss == 0.095
    assert stage_a.arch.passes is True  # fewer failures, and the control has no successful run there
    assert "Stage A (at the learning rates where the control fails: 0.01)" in explanation(verdict)


def test_stage_b_passes_on_lower_lr_sensitivity_beyond_seed_noise_only() -> None:
    # Same boundary (both fail at 1e-2 in some seed), same failure count: only the sensitivity differs.
    groups = [
        _grid_group("control", 1e-3, ["ok"] * 3),
        _grid_group("control", 1e-2, ["ok", "diverged", "diverged"]),
        _grid_group("opt", 1e-3, ["ok"] * 3),
        _grid_group("opt", 1e-2, ["ok", "ok", "diverged"]),
    ]
    cells = _cells(groups)
    stress = grid_section(cells, [sensitivity("control", 0.5, [0.4, 0.6]), sensitivity("opt", 0.2, [0.1, 0.3])])
    check = decide(groups, stress).stage_b.opt
    assert check.checks.lr_beyond is False and check.checks.less_lr_sensitive is True
    assert check.passes is True
    assert "LR sensitivity 0.2 [0.1, 0.3] (control 0.5 [0.4, 0.6])" in explanation(decide(groups, stress))

    # Lower but within seed noise: undecided, not failed, and the next step says how many seeds would tell.
    overlapping = grid_section(cells, [sensitivity("control", 0.5, [0.4, 0.6]), sensitivity("opt", 0.35, [0.25, 0.45])])
    undecided = decide(groups, overlapping)
    assert undecided.stage_b.opt.checks.less_lr_sensitive is None
    assert undecided.stage_b.opt.passes is None
    (reason,) = undecided.stage_b.opt.reason_codes
    assert (reason.code, reason.sensitivity.mean, reason.control_sensitivity.mean) == (
        "sensitivity_within_noise",
        0.35,
        0.5,
    )
    assert next(s for s in undecided.next_step_codes if s.code == "add_seeds_for_sensitivity").role == "opt"
    higher = grid_section(cells, [sensitivity("control", 0.5, [0.4, 0.6]), sensitivity("opt", 0.55, [0.5, 0.6])])
    worse = decide(groups, higher)
    assert worse.stage_b.opt.passes is False
    # Failed, and within noise: the note names the arm.
    (note,) = [n for n in worse.note_codes if n.code == "sensitivity_intervals_overlap"]
    assert note.roles == ["opt"] and "LR-sensitivity intervals of opt overlap" in explanation(worse)
    # An arm that barely learns is "insensitive" for free: its best loss must be within 10% of the control's.
    lazy = grid_section(
        cells, [sensitivity("control", 0.5, [0.4, 0.6]), sensitivity("opt", 0.01, [0.0, 0.02], best=0.5)]
    )
    assert decide(groups, lazy).stage_b.opt.checks.less_lr_sensitive is False


def test_shootout_over_lrs_plans_one_run_per_arm_rate_and_seed() -> None:
    data = DataSource(train=Path("train.npz"), test=Path("test.npz"))
    specs = plan_shootout(list(DEFAULT_ARMS), [0, 1], "smoke", data, {}, lrs=[1e-3, 3e-2])
    assert len(specs) == 3 * 2 * 2
    assert {(s.arm, s.lr, s.seed) for s in specs} == {
        (a.name, lr, seed) for a in DEFAULT_ARMS for lr in (1e-3, 3e-2) for seed in (0, 1)
    }
    assert all(s.config.train.lr == s.lr and s.depth == s.config.model.fno_blocks for s in specs)
    assert specs[2].relative_dir == "runs/control/lr0.03/seed-0"


# -------------------------------------------------------------------------------------------- CLI
def test_stress_summary_lr_sensitivity_equals_the_definition_from_the_run_dirs(tmp_path) -> None:
    out = tmp_path / "lr"
    result = run_cli(
        "stress",
        "--preset",
        "smoke",
        "--lrs",
        "1e-3,3e-2,10",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--arm",
        "control:arch=hybrid,clip=none",
        "--arm",
        "arch:arch=stable_hybrid",
        "--jobs",
        "2",  # one thread per run: two threads per tiny run crawl on a busy machine
        "--out",
        out,
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    summary = run_cli("summarize", out, "--json")
    assert summary.returncode == 0, summary.stderr
    document = SummaryDocument.model_validate(json.loads(summary.stdout))

    # The definition, from result.json alone.
    scores: dict[str, dict[int, dict[float, float]]] = {}
    statuses = []
    for path in sorted(out.glob("runs/*/*/seed-*/result.json")):
        run = json.loads(path.read_text())
        training, sweep = run["training"], run["sweep"]
        initial = training["initial_val_loss"]
        statuses.append(run["status"])
        value = initial if run["status"] != "ok" else min(training["final_val_loss"], initial)
        scores.setdefault(sweep["arm"], {}).setdefault(sweep["seed"], {})[sweep["lr"]] = value
    assert len(statuses) == 12 and {"diverged", "collapsed"} & set(statuses), statuses
    best = {arm: min(v for seed in seeds.values() for v in seed.values()) for arm, seeds in scores.items()}
    common = min(best.values())
    entries = {a.arm: a.lr_sensitivity for a in document.stress.arms}
    for arm, seeds in scores.items():
        entry = entries[arm]
        expected = [sum(seeds[s].values()) / 3 - best[arm] for s in (0, 1)]
        assert entry.grid == [1e-3, 3e-2, 10.0] and entry.best_loss == pytest.approx(best[arm])
        assert [s.value for s in entry.per_seed] == pytest.approx(expected)
        assert entry.mean == pytest.approx(sum(expected) / 2)
        assert entry.common.best_loss == pytest.approx(common)
        assert entry.common.mean == pytest.approx(sum(expected) / 2 + best[arm] - common)
    # The noise floor of the test split travels into every result.json and into the summary.
    test_npz = json.loads(next(out.glob("runs/*/*/seed-*/result.json")).read_text())["data"]["test"]
    with np.load(test_npz) as f:
        floor = json.loads(f["_metadata"].item())["noise_floor"]["mae"]
    assert all(group.noise_floor == floor for group in document.arms)
    # The stable-LR boundary beside it: the largest rate at which every seed, and every smaller rate, is ok.
    for entry in document.stress.arms:
        ok_at = {lr: all(r["status"] == "ok" for r in runs) for lr, runs in _runs_by_lr(out, entry.arm).items()}
        expected = None
        for lr in sorted(ok_at):
            if not ok_at[lr]:
                break
            expected = lr
        assert entry.boundary.lr == expected
    markdown = (out / "summary.md").read_text()
    assert "LR sensitivity and stable-LR boundary" in markdown and "lr_curves.png" in document.plots.written


def test_seeds_to_separate_solves_the_t_intervals_for_the_measured_spread() -> None:
    fix = _scores(0.2, [0.15, 0.25])  # sd 0.0707
    control = _scores(0.4, [0.35, 0.45])  # sd 0.0707
    n = seeds_to_separate(fix, control)
    # Smallest n with t(0.975, n−1)·(0.0707 + 0.0707)/√n < 0.2: n = 4 gives 3.182·0.1414/2 = 0.225, n = 5 gives 0.176.
    assert n == 5
    assert seeds_to_separate(control, fix) is None  # the "fix" is worse: no number of seeds helps


def _scores(mean: float, values: list[float]) -> SensitivityScores:
    per_seed = [SeedSensitivity(seed=i, value=v, scores=[], initial_val_loss=None) for i, v in enumerate(values)]
    return SensitivityScores(best_loss=None, mean=mean, ci95=None, per_seed=per_seed)


def test_a_gate_reads_the_loss_as_a_multiple_of_the_noise_floor() -> None:
    from fnostab.report.gates import evaluate_gates, parse_gate

    group = arm_entry("control", 2, 0, 0.1)
    group.metrics.best_val_loss_over_floor.median = 80.0
    (entry,) = evaluate_gates([parse_gate("best_val_loss_over_floor[control]<=50")], [group])
    assert entry.value == 80.0 and entry.passed is False


def _runs_by_lr(out: Path, arm: str) -> dict[float, list[dict]]:
    runs: dict[float, list[dict]] = {}
    for path in out.glob(f"runs/{arm}/*/seed-*/result.json"):
        run = json.loads(path.read_text())
        runs.setdefault(run["sweep"]["lr"], []).append(run)
    return runs

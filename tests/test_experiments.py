"""Sweeps through the real CLI: shootout, resume after SIGKILL, the lock, Ray, stress, bad inputs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_clean_usage_error, live_group_members, run_cli, spawn_cli
from fnostab.errors import InputError
from fnostab.experiments.arms import DEFAULT_ARMS, parse_arm, resolve_arms
from fnostab.rundir import stress_run_dir

SMOKE_ARMS = ["--arm", "control:arch=hybrid,clip=none", "--arm", "opt:arch=hybrid,clip=agc:0.01"]


def _results(sweep: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(sweep)): json.loads(p.read_text()) for p in sweep.glob("runs/**/result.json")}


def _arm(summary: dict, name: str) -> dict:
    return next(group for group in summary["arms"] if group["label"] == name)


# --------------------------------------------------------------------------------------- arms
def test_default_arms_are_the_stage_a_table() -> None:
    assert [(a.name, a.model["arch"], a.train["clip"]) for a in DEFAULT_ARMS] == [
        ("control", "hybrid", "none"),
        ("arch", "stable_hybrid", "none"),
        ("opt", "hybrid", "agc:0.01"),
    ]


def test_arm_flags_parse_keys_into_model_and_training_options() -> None:
    arm = parse_arm("deep:arch=hybrid,fno_blocks=3,clip=norm:5,lr=3e-4,checkpointing=true")
    assert arm.model == {"arch": "hybrid", "fno_blocks": 3, "checkpointing": True}
    assert arm.train == {"clip": "norm:5", "lr": 3e-4}


def test_clip_sweep_adds_control_arms_with_norm_clips() -> None:
    names = [(a.name, a.train["clip"]) for a in resolve_arms([], None, "1,5,100")]
    assert names[3:] == [("control_norm1", "norm:1"), ("control_norm5", "norm:5"), ("control_norm100", "norm:100")]


def test_arms_file_in_toml(tmp_path) -> None:
    (tmp_path / "arms.toml").write_text(
        '[arms.a]\narch = "fno"\nclip = "none"\n[arms.b]\narch = "hybrid"\nlr = 0.003\n'
    )
    arms = resolve_arms([], tmp_path / "arms.toml", None)
    assert [(a.name, a.model, a.train) for a in arms] == [
        ("a", {"arch": "fno"}, {"clip": "none"}),
        ("b", {"arch": "hybrid"}, {"lr": 0.003}),
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x:colour=blue", "unknown arm key 'colour'"),
        ("x:seed=3", "cannot set seed"),
        ("x:arch", "expected NAME:key=val"),
        ("bad name:lr=1", "arm name"),
    ],
)
def test_bad_arms_are_input_errors(text, fragment) -> None:
    with pytest.raises(InputError, match=fragment):
        parse_arm(text)


# ---------------------------------------------------------------------------------- shootout
@pytest.fixture(scope="module")
def smoke_shootout(smoke_data, tmp_path_factory) -> tuple[Path, dict]:
    sweep = tmp_path_factory.mktemp("shootout") / "sweep"
    result = run_cli(
        "shootout",
        *smoke_data,
        "--preset",
        "smoke",
        *SMOKE_ARMS,
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--out",
        sweep,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return sweep, json.loads(result.stdout)


def test_smoke_shootout_writes_every_run_and_a_summary_matching_the_runs(smoke_shootout) -> None:
    sweep, summary = smoke_shootout
    results = _results(sweep)
    assert sorted(results) == ["runs/control/seed-0", "runs/control/seed-1", "runs/opt/seed-0", "runs/opt/seed-1"]
    for run_dir, result in results.items():
        for name in ("config.json", "metrics.csv", "checkpoint.pt"):
            assert (sweep / run_dir / name).is_file()
        assert result["sweep"]["kind"] == "shootout" and result["training"]["config"]["log_grad_norm"]
    for name in ("sweep.json", "summary.json", "summary.md"):
        assert (sweep / name).is_file(), name
    assert json.loads((sweep / "summary.json").read_text()) == summary
    for arm in ("control", "opt"):
        group = _arm(summary, arm)
        runs = [r for r in results.values() if r["name"] == arm]
        assert group["n"] == 2
        assert group["failures"] == sum(r["status"] != "ok" for r in runs)
        ok = sorted(r["training"]["best_val_loss"] for r in runs if r["status"] == "ok")
        assert group["metrics"]["best_val_loss"]["median"] == pytest.approx(sum(ok) / len(ok))


def test_a_planted_diverging_arm_counts_as_failures_with_their_time(smoke_data, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "shootout",
        *smoke_data,
        "--preset",
        "smoke",
        "--arm",
        "boom:lr=1e4",
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--out",
        sweep,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    group = _arm(json.loads(result.stdout), "boom")
    steps = sorted(r["failure"]["step"] for r in _results(sweep).values())
    assert group["failures"] == 2 and group["failure_rate"] == 1.0
    assert {k: v for k, v in group["failures_by_status"].items() if v} == {"diverged": 2}
    assert sorted(group["time_to_failure"]["steps"]) == steps


def test_resume_after_sigkill_keeps_finished_runs_and_completes_the_rest(smoke_data, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "shootout",
        *map(str, smoke_data),
        "--preset",
        "smoke",
        *SMOKE_ARMS,
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--out",
        str(sweep),
        "--quiet",
    ]
    proc = spawn_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(sweep.glob("runs/**/result.json")):
        assert proc.poll() is None, "the shootout ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in sweep.glob("runs/**/result.json")}
    assert 1 <= len(finished) < 4

    result = run_cli(*args[:-1], "--json")
    assert result.returncode == 0, result.stderr
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())
    results = _results(sweep)
    assert len(results) == 4 and all(r["status"] == "ok" for r in results.values())
    assert sum(group["n"] for group in json.loads(result.stdout)["arms"]) == 4
    assert not list(sweep.rglob(".*.tmp"))


def test_a_second_shootout_on_a_busy_dir_is_refused_and_sigterm_stops_the_first_with_its_workers(
    smoke_data, tmp_path
) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "shootout",
        *map(str, smoke_data),
        "--preset",
        "smoke",
        "--arm",
        "a",
        "--seeds",
        "4",
        "--epochs",
        "20",
        "--jobs",
        "2",
        "--out",
        str(sweep),
        "--quiet",
    ]
    proc = spawn_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(sweep.glob("runs/a/seed-*/config.json")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    assert_clean_usage_error(run_cli(*args), "in use by another fnostab process", f"pid {proc.pid}")

    assert len(live_group_members(proc.pid)) >= 3  # the parent and its two workers (and the resource tracker)
    proc.send_signal(signal.SIGTERM)  # the parent only, as a scheduler or `kill` would
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    deadline = time.monotonic() + 10
    while live_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_group_members(proc.pid) == []  # no worker outlives the command (they used to run on, orphaned)
    assert not list(sweep.glob("runs/**/result.json"))  # the stopped runs restart on resume


def test_ray_executor_gives_the_same_results_as_local(smoke_data, smoke_shootout, tmp_path) -> None:
    pytest.importorskip("ray")
    local_sweep, _ = smoke_shootout
    sweep = tmp_path / "ray"
    result = run_cli(
        "shootout",
        *smoke_data,
        "--preset",
        "smoke",
        *SMOKE_ARMS,
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--out",
        sweep,
        "--executor",
        "ray",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    ray_results, local_results = _results(sweep), _results(local_sweep)
    assert sorted(ray_results) == sorted(local_results)
    for run_dir, local in local_results.items():
        assert ray_results[run_dir]["training"]["val_losses"] == local["training"]["val_losses"], run_dir
        assert ray_results[run_dir]["metrics"] == local["metrics"], run_dir


def test_ray_executor_without_ray_installed_is_a_clear_input_error(monkeypatch, tmp_path) -> None:
    from fnostab.experiments.executors import run_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(InputError, match=r"pip install 'fnostab\[ray\]'"):
        next(run_on_ray([], tmp_path, "shootout", threads=1, address=None, gpus_per_run=0.0))


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--arm", "x:colour=red"], ["unknown arm key 'colour'"]),
        (["--epochs", "21"], ["at most 20 epochs", "fnostab stress"]),
        (["--seeds", "0"], ["--seeds", "at least 1"]),
        (["--seed-list", "1,x"], ["--seed-list", "'x'"]),
        (["--clip-sweep", "1,-5"], ["--clip-sweep", "positive"]),
        (["--jobs", "0"], ["--jobs"]),
        (["--executor", "slurm"], ["--executor", "local or ray"]),
    ],
)
def test_bad_shootout_inputs_exit_2_and_write_nothing(smoke_data, tmp_path, args, fragments) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli("shootout", *smoke_data, "--preset", "smoke", "--out", sweep, *args)
    assert_clean_usage_error(result, *fragments)
    assert not sweep.exists()


# ------------------------------------------------------------------------------------ stress
def test_stress_plan_only_reports_the_deep_uncapped_model_infeasible_without_allocating() -> None:
    result = run_cli(
        "stress",
        "--preset",
        "paper",
        "--N",
        "256",
        "--depths",
        "4,6,8",
        "--arm",
        "control",
        "--plan-only",
        "--memory-limit",
        "24GiB",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    plans = {row["depth"]: row for row in json.loads(result.stdout)["plans"]}
    assert plans[8]["params"] == 4_417_975_522 and not plans[8]["feasible"]
    assert plans[4]["params"] == 17_202_402 and plans[4]["feasible"] and plans[6]["feasible"]
    capped = run_cli(
        "stress",
        "--preset",
        "paper",
        "--N",
        "256",
        "--depths",
        "8",
        "--arm",
        "control",
        "--plan-only",
        "--memory-limit",
        "24GiB",
        "--max-hidden-channels",
        "512",
        "--checkpointing",
        "--json",
    )
    row = json.loads(capped.stdout)["plans"][0]
    assert row["params"] == 216_834_786 and row["feasible"] and row["total_bytes"] < 24 * 2**30


def test_stress_records_infeasible_configurations_and_goes_on(smoke_data, tmp_path) -> None:
    sweep = tmp_path / "stress"
    result = run_cli(
        "stress",
        *smoke_data,
        "--preset",
        "smoke",
        "--arm",
        "control",
        "--depths",
        "2,6",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        sweep,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    by_depth = {r["sweep"]["depth"]: r for r in _results(sweep).values()}
    assert by_depth[2]["status"] == "ok"
    # 6 levels would halve N=32 down to a 1×1 bottleneck
    assert by_depth[6]["status"] == "infeasible" and "geometry" in by_depth[6]["failure"]["reason"]
    assert by_depth[6]["memory_plan"]["params"] > 0
    assert not (sweep / "runs/control/d6-lr0.001/seed-0/metrics.csv").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--lrs", "1e-3,abc"], ["--lrs", "'abc'"]),
        (["--depths", "2,2"], ["--depths", "repeated"]),
        ([], ["--depths and/or --lrs"]),
        (["--lrs", "1e-3", "--memory-limit", "lots"], ["--memory-limit", "24GiB"]),
    ],
)
def test_bad_stress_inputs_exit_2(smoke_data, tmp_path, args, fragments) -> None:
    sweep = tmp_path / "sweep"
    assert_clean_usage_error(run_cli("stress", *smoke_data, "--preset", "smoke", "--out", sweep, *args), *fragments)
    assert not sweep.exists()


def test_interrupting_a_parallel_shootout_exits_130_and_the_rerun_completes(smoke_data, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "shootout",
        *map(str, smoke_data),
        "--preset",
        "smoke",
        "--arm",
        "a",
        "--seeds",
        "2",
        "--epochs",
        "3",
        "--jobs",
        "2",
        "--out",
        str(sweep),
        "--quiet",
    ]
    proc = spawn_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(sweep.glob("runs/a/seed-*/config.json")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # the parent only, as `kill -INT` from a script would
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert len(_results(sweep)) == 2 and not list(sweep.rglob(".*.tmp"))


def test_resuming_with_fewer_seeds_summarises_only_the_planned_runs(smoke_data, smoke_shootout, tmp_path) -> None:
    original, _ = smoke_shootout
    sweep = tmp_path / "sweep"
    shutil.copytree(original, sweep)
    result = run_cli(
        "shootout",
        *smoke_data,
        "--preset",
        "smoke",
        *SMOKE_ARMS,
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        sweep,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [(g["label"], g["n"], g["seeds"]) for g in summary["arms"]] == [("control", 1, [0]), ("opt", 1, [0])]
    assert sorted(Path(p).relative_to(sweep).as_posix() for p in summary["runs"]["outside_plan"]) == [
        "runs/control/seed-1",
        "runs/opt/seed-1",
    ]
    assert any("not in its sweep.json plan" in w for w in summary["warnings"])


def test_stress_lr_dirs_keep_distinct_learning_rates_apart() -> None:
    assert stress_run_dir("control", 4, 1e-3, 0) == "runs/control/d4-lr0.001/seed-0"
    assert stress_run_dir("control", 4, 1e-3, 0) != stress_run_dir("control", 4, 1.0000001e-3, 0)


def test_infeasible_runs_are_replanned_when_the_memory_limit_grows(smoke_data, tmp_path) -> None:
    sweep = tmp_path / "stress"
    args = [
        "stress",
        *smoke_data,
        "--preset",
        "smoke",
        "--arm",
        "control",
        "--depths",
        "2",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        sweep,
        "--json",
    ]
    tight = run_cli(*args, "--memory-limit", "1MiB")
    assert tight.returncode == 0, tight.stderr
    [only] = _results(sweep).values()
    assert only["status"] == "infeasible" and "> limit 1.00 MiB" in only["failure"]["reason"]
    cell = _arm(json.loads(tight.stdout), "control@d2-lr0.001")
    assert (cell["n"], cell["n_infeasible"], cell["failure_rate"]) == (0, 1, None)
    gated = run_cli("summarize", sweep, "--fail-on", "failure_rate<=0.3", "--json")
    assert gated.returncode == 0, gated.stderr  # nothing ran, so nothing failed: the gate is skipped
    assert [e["passed"] for e in json.loads(gated.stdout)["gates"]] == [None]

    roomy = run_cli(*args, "--memory-limit", "8GiB")
    assert roomy.returncode == 0, roomy.stderr
    [only] = _results(sweep).values()
    assert only["status"] == "ok" and only["memory_plan"]["memory_limit"] == 8 * 2**30


def _kill_the_arm_named_killer(spec_document: dict, sweep_dir: str, kind: str, threads: int) -> dict:
    """A pool worker stand-in: SIGKILLs its own process for arm 'killer' (as the OOM killer would)."""
    import os as _os

    if spec_document["arm"] == "killer":
        time.sleep(0.3)  # let the innocent run start beside it
        _os.kill(_os.getpid(), signal.SIGKILL)
    time.sleep(1.0)
    return {"dir": spec_document["dir"], "status": "ok", "failure": None}


def test_a_killed_worker_is_recorded_as_oom_for_its_run_only_and_the_sweep_goes_on(smoke_data, tmp_path) -> None:
    from fnostab.config import DataSource, RunConfig
    from fnostab.experiments.executors import run_in_pool
    from fnostab.experiments.store import RunSpec
    from fnostab.rundir import shootout_run_dir

    data = DataSource(train=smoke_data[0], test=smoke_data[1])
    specs = [
        RunSpec(arm, 0, RunConfig(name=arm, data=data), shootout_run_dir(arm, 0))
        for arm in ("innocent", "killer", "later")
    ]
    outcomes = {
        o["dir"]: o
        for o in run_in_pool(specs, tmp_path, "shootout", jobs=2, threads=1, worker=_kill_the_arm_named_killer)
    }
    assert {d: o["status"] for d, o in outcomes.items()} == {
        "runs/innocent/seed-0": "ok",
        "runs/killer/seed-0": "oom",
        "runs/later/seed-0": "ok",
    }
    recorded = json.loads((tmp_path / "runs/killer/seed-0/result.json").read_text())
    assert recorded["status"] == "oom" and "SIGKILL" in recorded["failure"]["reason"]

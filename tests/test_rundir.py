"""fnostab.rundir and the typed documents: layouts, checks, locking, replacement, and who imports whom."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fnostab
import fnostab.rundir as rundir
from fnostab.config import DataSource, RunConfig
from fnostab.errors import InputError
from fnostab.experiments.stress import run_memory_limit
from fnostab.experiments.sweep import ExecutionOptions, plan_only_data, sweep_settings
from fnostab.sweep_plan import ArmOptions, PlanData, PlannedRun, SweepPlan
from fnostab.training.result import SweepInfo, read_result

# The keys of result.json, in order: a renamed or reordered key fails here and in test_training.
RESULT_KEYS = [
    "schema", "name", "status", "failure", "seed", "model", "data", "training", "grad_norm", "metrics",
    "evaluation_note", "memory_plan", "timing", "device", "versions", "created",
]  # fmt: skip
TRAINING_KEYS = [
    "config", "epochs_requested", "epochs_completed", "steps", "val_loss_name", "val_losses", "train_losses",
    "best_val_loss", "best_epoch", "final_val_loss", "final_train_loss", "initial_val_loss", "noise_floor",
    "best_val_loss_over_floor", "final_val_loss_over_floor",
]  # fmt: skip

PACKAGE = Path(fnostab.__file__).parent


# ------------------------------------------------------------------------------------ dependencies
def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (a lazy import is an import too)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # from fnostab import experiments
    return found


def _imports_of(target: str) -> dict[str, set[str]]:
    files = [PACKAGE / target] if target.endswith(".py") else sorted((PACKAGE / target).glob("*.py"))
    return {str(f.relative_to(PACKAGE)): _imported_modules(f) for f in files}


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in packages)


@pytest.mark.parametrize(
    ("target", "forbidden"),
    [
        ("report", ("fnostab.experiments", "fnostab.cli")),
        ("experiments", ("fnostab.report", "fnostab.cli")),
        ("training", ("fnostab.experiments", "fnostab.report", "fnostab.cli")),
        ("rundir.py", ("fnostab.experiments", "fnostab.report", "fnostab.cli", "fnostab.training.runner")),
        ("sweep_plan.py", ("fnostab.experiments", "fnostab.report", "fnostab.training", "fnostab.rundir")),
        ("progress.py", ("fnostab.cli",)),
    ],
)
def test_the_packages_import_only_downwards(target: str, forbidden: tuple[str, ...]) -> None:
    imports = _imports_of(target)
    assert imports, target
    wrong = {name: sorted(m for m in modules if _within(m, forbidden)) for name, modules in imports.items()}
    assert {name: bad for name, bad in wrong.items() if bad} == {}


def test_the_import_walker_sees_lazy_imports() -> None:
    """The check above would pass vacuously if the walker missed imports inside functions."""
    assert "fnostab.rundir" in _imported_modules(PACKAGE / "report" / "collect.py")
    assert "fnostab.training.runner" in _imported_modules(PACKAGE / "experiments" / "executors.py")  # in a function
    assert "fnostab.report" in _imported_modules(PACKAGE / "cli" / "sweeps.py")


def test_the_cli_and_the_run_dir_module_load_neither_numpy_nor_torch() -> None:
    """Every command imports rundir and the documents at start-up; numpy and torch wait for real work."""
    code = "import sys, fnostab.cli.app, fnostab.rundir; print([m for m in ('numpy', 'torch') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PACKAGE.parent)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


# ----------------------------------------------------------------------------------------- layouts
def test_run_dir_layouts_keep_learning_rates_and_seeds_apart() -> None:
    assert rundir.shootout_run_dir("control", 2) == "runs/control/seed-2"
    assert rundir.shootout_lr_run_dir("opt", 0.03, 1) == "runs/opt/lr0.03/seed-1"
    assert rundir.stress_run_dir("arch", 6, 1e-3, 0) == "runs/arch/d6-lr0.001/seed-0"
    assert rundir.lr_tag(1e-3) != rundir.lr_tag(1.0000001e-3)
    assert rundir.is_scratch(Path("/s/runs/a/.logs/result.json"), Path("/s"))
    assert not rundir.is_scratch(Path("/s/runs/a/seed-0/result.json"), Path("/s"))


# ---------------------------------------------------------------------------------------- documents
def _config(name: str = "a") -> RunConfig:
    return RunConfig(name=name, preset="smoke", data=DataSource(train=Path("t.npz"), test=Path("v.npz")))


def test_a_bare_result_has_the_trained_layout_and_reads_back(tmp_path: Path) -> None:
    from fnostab.training.runner import record_bare_result

    run = tmp_path / "run"
    sweep = SweepInfo(kind="stress", arm="a", seed=0, depth=4, lr=0.01)
    plan = {"params": 10, "params_real": 20, "total_bytes": 5}
    returned = record_bare_result(run, _config(), "infeasible", "memory plan over the limit", plan=plan, sweep=sweep)
    saved = json.loads((run / rundir.RESULT_NAME).read_text())
    assert list(saved) == [*RESULT_KEYS, "sweep"] and list(saved["training"]) == TRAINING_KEYS
    assert list(saved["data"]) == ["train", "test", "gridsize"]
    assert saved["failure"] == {"status": "infeasible", "reason": "memory plan over the limit", "step": 0, "epoch": 0}
    assert saved["model"]["params"] == 10 and saved["memory_plan"] == plan
    assert saved["sweep"] == {"kind": "stress", "arm": "a", "seed": 0, "depth": 4, "lr": 0.01}
    assert saved["evaluation_note"] == "not run: infeasible" and saved["device"] is None
    assert returned.to_document() == saved == read_result(run / rundir.RESULT_NAME).to_document()
    assert rundir.finished_status(run) == "infeasible" and rundir.recorded_config(run) == _config().to_json_dict()


def test_a_result_keeps_keys_it_does_not_know_and_defaults_keys_older_files_lack(tmp_path: Path) -> None:
    from test_report import make_result

    document = {**make_result("control", 0), "future_key": {"x": 1}}
    (tmp_path / "result.json").write_text(json.dumps(document))
    result = read_result(tmp_path / "result.json")
    assert result.to_document() == document  # nothing added, nothing lost
    assert result.data is None and result.training.noise_floor is None and result.arch == "hybrid"


def test_the_sweep_plan_round_trips_in_its_documented_order(tmp_path: Path) -> None:
    plan = SweepPlan(
        kind="shootout",
        created="2026-01-01T00:00:00+00:00",
        command=["shootout", "--lrs", "1e-3"],
        preset="smoke",
        data=PlanData(train="t.npz", test="v.npz", gridsize=1),
        arms={"control": ArmOptions(model={"arch": "hybrid"}, train={"clip": "none"})},
        seeds=[0],
        lrs=[1e-3],
        runs=[PlannedRun(arm="control", seed=0, depth=2, lr=1e-3, dir="runs/control/lr0.001/seed-0", plan=None)],
    )
    rundir.write_sweep_plan(tmp_path, plan)
    saved = json.loads((tmp_path / rundir.SWEEP_NAME).read_text())
    assert list(saved) == ["schema", "kind", "created", "command", "preset", "data", "arms", "seeds", "lrs", "runs"]
    assert saved["schema"] == "fnostab.sweep/1" and saved["arms"]["control"] == {
        "model": {"arch": "hybrid"},
        "train": {"clip": "none"},
    }
    assert list(saved["runs"][0]) == ["arm", "seed", "depth", "lr", "dir", "plan"]
    assert rundir.read_sweep_plan(tmp_path / rundir.SWEEP_NAME) == plan
    (tmp_path / rundir.SWEEP_NAME).write_text(json.dumps({**saved, "runs": [{"arm": "control", "seed": 0}]}))
    with pytest.raises(InputError, match=r"sweep.json: invalid sweep.json: key 'runs.0.dir' is missing"):
        rundir.read_sweep_plan(tmp_path / rundir.SWEEP_NAME)


# ------------------------------------------------------------------------------------------- checks
def _holding_a_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / rundir.CONFIG_NAME).write_text(json.dumps(_config().to_json_dict()))
    (path / "old.txt").write_text("old")
    return path


def test_check_run_out_tells_new_replaceable_and_foreign_dirs_apart(tmp_path: Path) -> None:
    assert rundir.check_run_out(tmp_path / "new", force=False) is False
    run = _holding_a_run(tmp_path / "run")
    with pytest.raises(InputError, match="already holds a run; pass --force"):
        rundir.check_run_out(run, force=False)
    assert rundir.check_run_out(run, force=True) is True
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an fnostab run dir"):
        rundir.check_run_out(tmp_path / "other", force=True)


# ---------------------------------------------------------------------------- locking, replacement
def test_replace_run_dir_swaps_in_only_a_finished_write(tmp_path: Path) -> None:
    run = _holding_a_run(tmp_path / "run")

    def fails(staging: Path) -> None:
        (staging / "half.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rundir.replace_run_dir(run, fails)
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging dir left behind

    def writes(staging: Path) -> int:
        assert staging.parent == tmp_path and staging.name.startswith(".run.") and staging.name.endswith(".partial")
        (staging / "new.txt").write_text("new")
        return 7

    assert rundir.replace_run_dir(run, writes) == 7
    assert [p.name for p in run.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_failed_swap_rolls_the_old_run_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _holding_a_run(tmp_path / "run")
    calls = []

    def replace(src: Path, dst: Path) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the staging dir onto the run dir
            raise OSError(28, "No space left on device")
        os.rename(src, dst)

    monkeypatch.setattr(rundir.os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        rundir.replace_run_dir(run, lambda staging: (staging / "new.txt").write_text("new"))
    assert len(calls) == 3 and calls[2][1] == "run"  # retired → run: the rollback
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_write_run_dir_refuses_a_locked_dir_and_leaves_nothing_it_created(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    written = []
    with rundir.lock(run):
        with pytest.raises(InputError, match=f"in use by another fnostab process \\(pid {os.getpid()}\\)"):
            rundir.write_run_dir(run, False, written.append)
    assert written == []

    new = tmp_path / "new"

    def refuse(out: Path, force: bool) -> bool:
        raise InputError(f"{out} filled meanwhile")

    monkeypatch.setattr(rundir, "check_run_out", refuse)
    with pytest.raises(InputError, match="filled meanwhile"):
        rundir.write_run_dir(new, False, written.append)
    assert not new.exists() and written == []
    monkeypatch.undo()

    assert rundir.write_run_dir(new, False, lambda d: (d / "a.txt").write_text("a") and d) == new
    assert sorted(p.name for p in new.iterdir()) == [".lock", "a.txt"]


def test_write_run_dir_with_force_writes_beside_and_replaces(tmp_path: Path) -> None:
    run = _holding_a_run(tmp_path / "run")
    targets = []

    def write(target: Path) -> str:
        targets.append(target)
        (target / "new.txt").write_text("new")
        return "done"

    assert rundir.write_run_dir(run, True, write) == "done"
    assert targets[0] != run and targets[0].parent == tmp_path
    assert "new.txt" in {p.name for p in run.iterdir()} and not (run / "old.txt").exists()


# ------------------------------------------------------------------------- sweep-wide library calls
def test_each_local_run_plans_for_its_share_of_the_memory_limit() -> None:
    assert run_memory_limit("1GiB", None, ExecutionOptions()) == (2**30, "--memory-limit")
    assert run_memory_limit("1GiB", None, ExecutionOptions(jobs=4)) == (2**28, "--memory-limit / 4 runs at once")
    assert run_memory_limit("1GiB", None, ExecutionOptions(jobs=4, executor="ray")) == (2**30, "--memory-limit")


def test_sweep_settings_leave_out_the_axes_a_sweep_does_not_have() -> None:
    from fnostab.experiments.arms import Arm

    data = DataSource(train=Path("t.npz"), test=Path("v.npz"), gridsize=1)
    arms = [Arm("control", {"arch": "hybrid"}, {"clip": "none"})]
    shootout = sweep_settings("smoke", data, arms, [0, 1])
    assert shootout.to_document() == {
        "preset": "smoke",
        "data": {"train": "t.npz", "test": "v.npz", "gridsize": 1},
        "arms": {"control": {"model": {"arch": "hybrid"}, "train": {"clip": "none"}}},
        "seeds": [0, 1],
    }
    stress = sweep_settings("smoke", data, arms, [0], depths=[None], lrs=[1e-3], memory_limit=2**30)
    assert list(stress.to_document())[-3:] == ["depths", "lrs", "memory_limit"] and stress.depths == [None]


def test_plan_only_data_reads_n_and_gridsize_without_simulating(smoke_data, tmp_path: Path) -> None:
    from fnostab.config import SimulationConfig, build, merge

    simulation = build(SimulationConfig, merge("smoke", "data", {}))
    source, size = plan_only_data(None, "smoke")
    assert (size, source.gridsize, source.train) == (simulation.N, simulation.gridsize, Path("train.npz"))
    assert plan_only_data(None, "smoke", 2, 48)[1] == 48 and plan_only_data(None, "smoke", 2, 48)[0].gridsize == 2
    source, size = plan_only_data(smoke_data[0], "cpu")
    assert (size, source.gridsize) == (32, 1)  # the file's, not the cpu preset's
    with pytest.raises(InputError, match="gridsize mismatch: --gridsize 2"):
        plan_only_data(smoke_data[0], "smoke", 2)

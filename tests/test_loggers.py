"""--logger tensorboard / mlflow: the logs, read back with the libraries' own readers, hold metrics.csv."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from conftest import assert_clean_usage_error, run_cli
from fnostab.config import DataSource, ModelConfig, RunConfig, TrainConfig
from fnostab.errors import InputError
from fnostab.training.loggers import MLFLOW_DIR, TENSORBOARD_DIR, LoggingOptions, parse_logging
from fnostab.training.runner import prepare_run, run_training

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

LOGGED = ("grad_norm_preclip", "mae_train_loss", "mae_val_loss", "lr")


@pytest.fixture(autouse=True)
def _file_store_allowed(monkeypatch) -> None:
    # MLflow 3 reads its file store only with this opt-in, as a user reading fnostab's default store would.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _csv_series(run_dir: Path, name: str) -> list[tuple[int, float]]:
    with (run_dir / "metrics.csv").open() as handle:
        rows = csv.DictReader(handle)
        return [(int(row["step"]), float(row[name])) for row in rows if row.get(name) not in (None, "")]


@pytest.fixture(scope="module")
def logged_run(smoke_data, tmp_path_factory) -> tuple[Path, dict]:
    train_path, test_path = smoke_data
    config = RunConfig(
        data=DataSource(train=train_path, test=test_path),
        model=ModelConfig(arch="hybrid", width=8, modes=8, fno_blocks=2),
        train=TrainConfig(epochs=2, batch_size=32, seed=1, log_grad_norm=True, threads=1, val_patches=32),
    )
    run_dir = tmp_path_factory.mktemp("logged") / "run"
    result = run_training(prepare_run(config), run_dir, logging=LoggingOptions(("tensorboard", "mlflow")))
    return run_dir, result


def test_tensorboard_events_hold_the_metrics_csv_values(logged_run) -> None:
    run_dir, _ = logged_run
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    for name in LOGGED:
        expected = _csv_series(run_dir, name)
        assert expected, name
        read = [(event.step, event.value) for event in events.Scalars(name)]
        assert [s for s, _ in read] == [s for s, _ in expected], name
        # TensorBoard stores scalars as float32.
        assert [v for _, v in read] == pytest.approx([v for _, v in expected], rel=1e-6), name


def test_mlflow_run_holds_the_metrics_the_parameters_and_the_status(logged_run) -> None:
    run_dir, result = logged_run
    client = MlflowClient((run_dir / MLFLOW_DIR).as_uri())
    experiment = client.get_experiment_by_name("fnostab")
    (run,) = client.search_runs([experiment.experiment_id])
    for name in LOGGED:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert history == _csv_series(run_dir, name), name
    params = run.data.params
    assert params["model/arch"] == "hybrid" and params["train/batch_size"] == "32" and params["train/lr"] == "0.001"
    assert run.data.tags["fnostab.status"] == result["status"] == "ok"
    assert run.info.run_name == "run"


def test_a_shootout_logs_each_run_as_its_own_tagged_mlflow_run(smoke_data, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "shootout",
        *smoke_data,
        "--preset",
        "smoke",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--val-patches",
        "16",
        "--arm",
        "plain:clip=none",
        "--arm",
        "clipped:clip=norm:1",
        "--logger",
        "mlflow",
        "--logger",
        "tensorboard",
        "--out",
        sweep,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert "Creating" not in result.stderr  # the experiment is made before the runs, without Lightning's notice
    assert json.loads(result.stdout)["runs"]["finished"] == 2
    client = MlflowClient((sweep / MLFLOW_DIR).as_uri())
    experiment = client.get_experiment_by_name("sweep")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"plain/seed-0", "clipped/seed-0"}
    for name, run in runs.items():
        arm = name.split("/")[0]
        assert (run.data.tags["arm"], run.data.tags["seed"], run.data.tags["fnostab.status"]) == (arm, "0", "ok")
        assert run.data.params["train/clip"] == ("none" if arm == "plain" else "norm:1.0")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "grad_norm_preclip")]
        assert steps == [s for s, _ in _csv_series(sweep / "runs" / arm / "seed-0", "grad_norm_preclip")]
        assert list((sweep / "runs" / arm / "seed-0" / TENSORBOARD_DIR).glob("events.out.tfevents.*"))


def test_missing_extra_or_unknown_logger_is_one_clear_line(monkeypatch, tmp_path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a)
    )
    with pytest.raises(InputError, match=r"--logger mlflow needs the mlflow extra: pip install 'fnostab\[mlflow\]'"):
        parse_logging(["csv", "mlflow"], None)
    assert parse_logging(["csv", "tensorboard", "tensorboard"], None).loggers == ("tensorboard",)
    result = run_cli("train", "--preset", "smoke", "--logger", "wandb", "--out", tmp_path / "run")
    assert_clean_usage_error(result, "--logger", "wandb")
    result = run_cli(
        "shootout", "--preset", "smoke", "--mlflow-uri", "http://localhost:5000", "--out", tmp_path / "sweep"
    )
    assert_clean_usage_error(result, "--mlflow-uri needs --logger mlflow")
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()

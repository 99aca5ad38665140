"""One run across two CPU processes (DDP, gloo): same numbers as one process, one run dir, failures once."""

from __future__ import annotations

import csv
import importlib.util
import math
import multiprocessing
from pathlib import Path

import pytest
import torch

from conftest import assert_clean_usage_error, run_cli
from fnostab.config import DataSource, ModelConfig, RunConfig, TrainConfig
from fnostab.models import build_generator
from fnostab.training.data import train_loader
from fnostab.training.loggers import LoggingOptions
from fnostab.training.runner import prepare_run, run_training

SMOKE_MODEL = ModelConfig(arch="hybrid", width=8, modes=8, fno_blocks=2)
FIRST_STEPS = 5
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None  # the mlflow extra (make test installs it)


def _config(smoke_data, **train) -> RunConfig:
    train_path, test_path = smoke_data
    options = dict(epochs=1, batch_size=16, seed=3, log_grad_norm=True, threads=1, val_patches=32) | train
    return RunConfig(data=DataSource(train=train_path, test=test_path), model=SMOKE_MODEL, train=TrainConfig(**options))


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _per_step(rows: list[dict[str, str]], name: str) -> dict[int, float]:
    return {int(row["step"]): float(row[name]) for row in rows if row.get(name) not in (None, "")}


def _no_child_left() -> None:
    assert multiprocessing.active_children() == []


def test_rank_parts_of_a_global_batch_are_the_one_process_batch() -> None:
    """Two ranks' parts concatenate to the one-process batch; a batch smaller than the ranks pads with weight 0."""
    data = torch.arange(7 * 4, dtype=torch.float32).reshape(7, 2, 2).numpy()
    single = list(train_loader(data, 3, seed=1))
    parts = [list(train_loader(data, 3, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(single) == 3
    for whole, (a, count_a), (b, count_b) in zip(single, parts[0], parts[1]):
        if whole.shape[0] >= 2:
            assert torch.equal(torch.cat([a, b]), whole) and count_a + count_b == whole.shape[0]
    # 7 = 3 + 3 + 1: the last global batch has one pattern; rank 1 gets a stand-in that counts 0.
    (_, last_a), (stand_in, last_b) = parts[0][-1], parts[1][-1]
    assert (last_a, last_b) == (1, 0) and stand_in.shape[0] == 1


def test_two_process_ddp_run_matches_one_process_with_the_same_global_batch(smoke_data, tmp_path, monkeypatch) -> None:
    single = run_training(prepare_run(_config(smoke_data)), tmp_path / "one")
    # With MLflow on: every rank builds the logger, rank 0 alone writes one MLflow run.
    logging = LoggingOptions(("mlflow",), mlflow_uri=(tmp_path / "mlruns").as_uri()) if HAS_MLFLOW else None
    prepared = prepare_run(_config(smoke_data, devices=2, strategy="ddp"))
    double = run_training(prepared, tmp_path / "two", logging=logging)
    _no_child_left()
    assert single["status"] == double["status"] == "ok", double["failure"]
    assert sorted(p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*")) == [
        "checkpoint.pt",
        "config.json",
        "metrics.csv",
        "reconstruction.npz",
        "reconstruction.png",
        "result.json",
    ]
    if HAS_MLFLOW:
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient((tmp_path / "mlruns").as_uri())
        (run,) = client.search_runs([client.get_experiment_by_name("fnostab").experiment_id])
        history = client.get_metric_history(run.info.run_id, "grad_norm_preclip")
        assert len(history) == double["training"]["steps"] and run.data.tags["fnostab.status"] == "ok"
    assert double["device"]["devices"] == 2
    # The same steps over the same samples: the ranks' parts add up to the global batches.
    assert double["training"]["steps"] == single["training"]["steps"] == math.ceil(single["data"]["n_train"] / 16)
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    for name in ("mae_train_loss", "grad_norm_preclip"):
        a, b = _per_step(one, name), _per_step(two, name)
        assert sorted(a) == sorted(b)
        for step in range(FIRST_STEPS):
            assert b[step] == pytest.approx(a[step], rel=1e-5), (name, step)
        # The smoke split leaves a last global batch of 1 pattern: rank 1 trains on a weight-0 stand-in.
        last = max(a)
        assert b[last] == pytest.approx(a[last], rel=1e-3), (name, last)
    assert double["timing"]["samples_per_s"] > 0


class NaNOnRank(torch.nn.Module):
    """A generator whose output turns NaN on one rank at one training step (a fault only that rank sees)."""

    def __init__(self, inner: torch.nn.Module, rank: int, step: int) -> None:
        super().__init__()
        self.inner, self.rank, self.step, self.calls = inner, rank, step, 0

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        out = self.inner(patterns)
        if self.training:
            self.calls += 1
            if self.calls - 1 == self.step and torch.distributed.get_rank() == self.rank:
                return out * float("nan")
        return out


def test_a_nan_on_one_rank_stops_every_rank_and_is_recorded_once(smoke_data, tmp_path) -> None:
    config = _config(smoke_data, devices=2, strategy="ddp")
    generator = NaNOnRank(build_generator("hybrid", N=32, width=8, modes=8, fno_blocks=2), rank=1, step=3)
    result = run_training(prepare_run(config), tmp_path / "run", generator=generator)
    _no_child_left()
    assert result["status"] == "diverged"
    assert result["failure"]["step"] == 3 and "non-finite" in result["failure"]["reason"]
    assert result["training"]["steps"] == 4  # rank 0 stopped at the same step, though its own batch was fine
    assert len(list(tmp_path.rglob("result.json"))) == 1
    losses = _per_step(_rows(tmp_path / "run"), "mae_train_loss")
    assert sorted(losses) == [0, 1, 2, 3] and math.isnan(losses[3])
    assert all(math.isfinite(losses[s]) for s in range(3))


def test_validation_smaller_than_the_processes_is_a_usage_error(tmp_path) -> None:
    result = run_cli(
        "train",
        "--preset",
        "smoke",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--val-patches",
        "1",
        "--out",
        tmp_path / "run",
    )
    assert_clean_usage_error(result, "--devices", "validation patterns")
    assert not (tmp_path / "run").exists()


def test_memory_plan_is_per_device_a_share_of_the_global_batch(smoke_data) -> None:
    from fnostab.training.runner import plan_run

    split = plan_run(_config(smoke_data, batch_size=15, devices=2), 32)
    alone = plan_run(_config(smoke_data, batch_size=8), 32)  # ⌈15 / 2⌉ patterns on each device
    assert split.total_bytes == alone.total_bytes
    assert split.total_bytes < plan_run(_config(smoke_data, batch_size=15), 32).total_bytes


@pytest.mark.parametrize("loss", ["mae", "poisson"])
def test_parts_of_a_batch_weighted_by_their_loss_denominator_give_the_batch_loss(loss) -> None:
    """The identity the DDP loss weights rest on, for both losses: uneven parts (5 + 2 patterns)."""
    from fnostab.physics import loss_denominator, physics_loss

    generator = torch.Generator().manual_seed(0)
    observed = torch.rand(7, 1, 8, 8, generator=generator) * 3
    predicted = torch.rand(7, 1, 8, 8, generator=generator) * 3
    parts = [(predicted[:5], observed[:5]), (predicted[5:], observed[5:])]
    weights = [loss_denominator(loss, obs) * obs.shape[0] for _, obs in parts]
    combined = sum(physics_loss(loss, pred, obs) * w for (pred, obs), w in zip(parts, weights)) / sum(weights)
    assert combined.item() == pytest.approx(physics_loss(loss, predicted, observed).item(), rel=1e-6)
    # Plain sample-count weights would not do: the parts' denominators differ.
    by_count = sum(physics_loss(loss, pred, obs) * obs.shape[0] for pred, obs in parts) / 7
    assert by_count.item() != pytest.approx(combined.item(), rel=1e-6)

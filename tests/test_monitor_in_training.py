"""Per-block monitors inside training (``--monitor-every N``): what reaches metrics.csv, and when."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from fnostab.config import DataSource, ModelConfig, RunConfig, TrainConfig
from fnostab.data.npz import load_split
from fnostab.models import build_generator
from fnostab.physics import physics_loss, predicted_amplitude, train_loss_name
from fnostab.training.data import train_loader
from fnostab.training.runner import prepare_run, run_training

SMOKE_MODEL = ModelConfig(arch="hybrid", width=8, modes=8, fno_blocks=2)
N_BLOCKS = 3  # two encoder levels and the bottleneck
BATCH, SEED = 32, 11


def _train(smoke_data: tuple[Path, Path], run_dir: Path, monitor_every: int) -> list[dict[str, str]]:
    train, test = smoke_data
    config = RunConfig(
        data=DataSource(train=train, test=test),
        model=SMOKE_MODEL,
        train=TrainConfig(
            epochs=1, batch_size=BATCH, seed=SEED, monitor_every=monitor_every, val_patches=16, accelerator="cpu"
        ),
    )
    result = run_training(prepare_run(config), run_dir)
    assert result["status"] == "ok", result["failure"]
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # Training rows only (validation rows carry the val loss, at the last step of the epoch).
    return [row for row in rows if row.get(train_loss_name("mae"))]


@pytest.fixture(scope="module")
def every_step(smoke_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    return _train(smoke_data, tmp_path_factory.mktemp("monitor") / "every-1", 1)


@pytest.fixture(scope="module")
def every_third(smoke_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    return _train(smoke_data, tmp_path_factory.mktemp("monitor") / "every-3", 3)


def _columns() -> list[str]:
    return [f"{kind}/{i}" for kind in ("block_grad_norm", "block_act_mean") for i in range(N_BLOCKS)]


def test_monitor_every_step_logs_positive_finite_block_values_on_every_step(every_step: list[dict[str, str]]) -> None:
    steps = [int(row["step"]) for row in every_step]
    assert steps == list(range(len(steps))) and len(steps) >= 5
    for row in every_step:
        for column in _columns():
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (row["step"], column, row[column])


def test_monitor_every_third_step_logs_block_values_only_on_steps_0_3_6(every_third: list[dict[str, str]]) -> None:
    assert len(every_third) >= 7
    for row in every_third:
        monitored = int(row["step"]) % 3 == 0
        for column in _columns():
            assert (row.get(column) not in (None, "")) == monitored, (row["step"], column)


def test_block_grad_norms_at_step_0_equal_an_independent_autograd_computation(
    every_step: list[dict[str, str]], smoke_data: tuple[Path, Path]
) -> None:
    # The run seeds everything and then builds its generator; its first batch is the first batch
    # of the seeded train loader. Repeat both and take ∂L/∂h_i with autograd at the block outputs.
    split = load_split(smoke_data[0])
    pl.seed_everything(SEED, verbose=False)
    generator = build_generator(SMOKE_MODEL, split.N)
    batch = next(iter(train_loader(split.diffraction, BATCH, SEED)))
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in generator.blocks]
    loss = physics_loss("mae", predicted_amplitude(generator(batch), torch.from_numpy(split.probe)), batch)
    grads = torch.autograd.grad(loss, outputs)
    for handle in handles:
        handle.remove()
    row = every_step[0]
    assert float(row[train_loss_name("mae")]) == pytest.approx(loss.item(), rel=1e-6)
    logged = [float(row[f"block_grad_norm/{i}"]) for i in range(N_BLOCKS)]
    assert logged == pytest.approx([g.norm().item() for g in grads], rel=1e-5)
    logged_act = [float(row[f"block_act_mean/{i}"]) for i in range(N_BLOCKS)]
    assert logged_act == pytest.approx([o.detach().abs().mean().item() for o in outputs], rel=1e-5)


def test_out_of_memory_before_the_first_block_on_a_monitored_step_is_still_recorded_as_oom(
    smoke_data: tuple[Path, Path], tmp_path: Path
) -> None:
    train, test = smoke_data
    config = RunConfig(
        data=DataSource(train=train, test=test),
        model=SMOKE_MODEL,
        train=TrainConfig(epochs=1, batch_size=BATCH, seed=SEED, monitor_every=1, accelerator="cpu"),
    )
    generator = build_generator(SMOKE_MODEL, 32)

    def out_of_memory(module: torch.nn.Module, inputs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    generator.blocks[0].register_forward_pre_hook(out_of_memory)
    result = run_training(prepare_run(config), tmp_path / "run", generator=generator)
    assert result["status"] == "oom" and "2.00 GiB" in result["failure"]["reason"]

"""The training engine: clipping in the loop, grad-norm logging, schedules, failures, determinism."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from test_rundir import RESULT_KEYS, TRAINING_KEYS

from conftest import run_cli, spawn_cli
from fnostab.config import PRESETS, DataSource, ModelConfig, RunConfig, TrainConfig
from fnostab.io import to_jsonable
from fnostab.models import build_generator
from fnostab.physics import physics_loss, predicted_amplitude
from fnostab.training.data import train_loader
from fnostab.training.failure import COLLAPSE_PATIENCE, FailureDetector
from fnostab.training.result import read_result
from fnostab.training.runner import prepare_run, run_training
from fnostab.training.schedules import build_optimizer, build_scheduler, warmup_cosine_factor

SMOKE_MODEL = ModelConfig(arch="hybrid", width=8, modes=8, fno_blocks=2)


def _config(smoke_data, **train) -> RunConfig:
    train_path, test_path = smoke_data
    options = dict(epochs=2, batch_size=16, seed=3, log_grad_norm=True, threads=1) | train
    return RunConfig(data=DataSource(train=train_path, test=test_path), model=SMOKE_MODEL, train=TrainConfig(**options))


def _metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name) not in (None, "")]


# ----------------------------------------------------------------------------------- schedules
def test_warmup_cosine_gives_the_expected_learning_rate_at_chosen_epochs() -> None:
    factor = lambda e: warmup_cosine_factor(e, warmup_epochs=4, epochs=20, min_lr_ratio=0.1)  # noqa: E731
    assert factor(0) == pytest.approx(0.1)
    assert factor(2) == pytest.approx(0.55)  # halfway through the linear warm-up
    assert factor(4) == pytest.approx(1.0)
    assert factor(12) == pytest.approx(0.1 + 0.9 * 0.5)  # cosine midpoint: (1 + cos(π/2))/2 = 0.5
    assert factor(20) == pytest.approx(0.1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_schedule_accepts_a_one_epoch_run(preset: str) -> None:
    # A warm-up epoch in a preset would make `--epochs 1` (bench_ddp, quick checks) a usage error.
    config = TrainConfig(**{**PRESETS[preset]["train"], "epochs": 1})
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    build_scheduler(optimizer, config)
    assert optimizer.param_groups[0]["lr"] == config.lr  # the first epoch runs at the peak rate


def test_warmup_cosine_scheduler_is_stepped_per_epoch() -> None:
    config = TrainConfig(epochs=10, lr=1e-2, scheduler="warmup_cosine", warmup_epochs=2, min_lr_ratio=0.0)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1e-2 * warmup_cosine_factor(e, warmup_epochs=2, epochs=10, min_lr_ratio=0.0) for e in range(10)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(1e-2)


def test_plateau_scheduler_halves_the_rate_after_patience_epochs_without_improvement() -> None:
    config = TrainConfig(lr=1.0, scheduler="plateau", plateau_patience=1, plateau_factor=0.5)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    scheduler = build_scheduler(optimizer, config)
    for loss in (1.0, 1.0, 1.0):
        scheduler.step(loss)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- failure rules
def test_non_finite_loss_or_gradient_is_diverged_at_that_step() -> None:
    detector = FailureDetector(blowup_factor=10)
    assert detector.check_step(1.0, 2.0, step=0, epoch=0) is None
    failure = detector.check_step(1.0, math.inf, step=1, epoch=0)
    assert (failure.status, failure.step, failure.epoch) == ("diverged", 1, 0)
    assert "gradient norm" in failure.reason
    assert FailureDetector(10).check_step(math.nan, 1.0, step=7, epoch=2).reason.startswith("non-finite training loss")


def test_loss_blowup_is_measured_against_the_best_smoothed_loss() -> None:
    detector = FailureDetector(blowup_factor=10)
    for step in range(60):
        assert detector.check_step(1.0 if step < 15 else 0.5, 1.0, step=step, epoch=0) is None
    # the smoothed loss has settled at 0.5 + 0.5·0.9^45 ≈ 0.504: 4.9 is below 10×, 6.0 above
    assert detector.check_step(4.9, 1.0, step=60, epoch=1) is None
    failure = detector.check_step(6.0, 1.0, step=61, epoch=1)
    assert failure.status == "diverged" and failure.step == 61 and "blow-up" in failure.reason


def test_collapse_needs_consecutive_constant_validations_or_the_last_epoch() -> None:
    detector = FailureDetector(blowup_factor=10)
    assert detector.check_validation(0.1, 0.0, step=10, epoch=0, last_epoch=False) is None
    assert detector.check_validation(0.1, 0.5, step=20, epoch=1, last_epoch=False) is None  # recovered
    for epoch in range(2, 2 + COLLAPSE_PATIENCE - 1):
        assert detector.check_validation(0.1, 8e-3, step=30, epoch=epoch, last_epoch=False) is None  # nearly flat
    failure = detector.check_validation(0.1, 1e-6, step=40, epoch=2 + COLLAPSE_PATIENCE - 1, last_epoch=False)
    assert failure.status == "collapsed" and failure.epoch == 2 and "< 0.01" in failure.reason
    last = FailureDetector(10).check_validation(0.1, 0.0, step=5, epoch=4, last_epoch=True)
    assert last.status == "collapsed" and last.epoch == 4


# ------------------------------------------------------------------------------ real training
def test_logged_preclip_norm_equals_an_independent_computation(smoke_data, tmp_path) -> None:
    config = _config(smoke_data, epochs=1)
    prepared = prepare_run(config)
    run_training(prepared, tmp_path / "run")
    logged = _column(_metrics_rows(tmp_path / "run"), "grad_norm_preclip")
    assert len(logged) == math.ceil(prepared.train.n / 16)

    pl.seed_everything(config.train.seed, verbose=False)
    generator = build_generator("hybrid", N=32, width=8, modes=8, fno_blocks=2)
    batch = next(iter(train_loader(prepared.train.diffraction, 16, config.train.seed)))
    probe = torch.from_numpy(prepared.train.probe)
    loss = physics_loss("mae", predicted_amplitude(generator(batch), probe), batch)
    loss.backward()
    squares = [
        torch.view_as_real(p.grad).square().sum() if p.grad.is_complex() else p.grad.square().sum()
        for p in generator.parameters()
    ]
    assert logged[0] == pytest.approx(math.sqrt(sum(s.item() for s in squares)), rel=1e-5)


def test_norm_clipping_bounds_the_logged_postclip_norm(smoke_data, tmp_path) -> None:
    result = run_training(prepare_run(_config(smoke_data, epochs=1, clip="norm:0.05")), tmp_path / "run")
    rows = _metrics_rows(tmp_path / "run")
    pre, post = _column(rows, "grad_norm_preclip"), _column(rows, "grad_norm_postclip")
    assert len(pre) == len(post) == result["training"]["steps"]
    assert max(post) <= 0.05 * (1 + 1e-4)
    assert all(b == pytest.approx(min(a, 0.05), rel=1e-3) for a, b in zip(pre, post))


def test_grad_norm_log_frequency_and_default_off(smoke_data, tmp_path) -> None:
    run_training(prepare_run(_config(smoke_data, epochs=1, grad_norm_log_freq=5)), tmp_path / "every5")
    rows = _metrics_rows(tmp_path / "every5")
    steps = [int(row["step"]) for row in rows if row.get("grad_norm_preclip")]
    assert steps and all(s % 5 == 0 for s in steps)
    run_training(prepare_run(_config(smoke_data, epochs=1, log_grad_norm=False)), tmp_path / "off")
    assert "grad_norm_preclip" not in _metrics_rows(tmp_path / "off")[0]


def test_same_seed_gives_identical_results_and_another_seed_does_not(smoke_data, tmp_path) -> None:
    runs = [
        run_training(prepare_run(_config(smoke_data, seed=s)), tmp_path / f"run{i}") for i, s in enumerate((5, 5, 6))
    ]
    keys = ("training", "grad_norm", "metrics")
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]
    assert runs[0]["training"]["val_losses"] != runs[2]["training"]["val_losses"]
    assert runs[0]["metrics"]["amp_ssim"] != runs[2]["metrics"]["amp_ssim"]


def test_a_poisoned_batch_ends_the_run_as_diverged_at_its_step(smoke_data, tmp_path) -> None:
    prepared = prepare_run(_config(smoke_data, epochs=2, batch_size=300))  # one batch = the whole split
    poisoned = prepared.train.diffraction.copy()
    poisoned[5, 0, 3, 3] = np.nan
    prepared = replace(prepared, train=replace(prepared.train, diffraction=poisoned))
    result = run_training(prepared, tmp_path / "run")
    assert result["status"] == "diverged"
    assert result["failure"]["step"] == 0 and result["failure"]["epoch"] == 0
    assert "non-finite" in result["failure"]["reason"]
    assert result["training"]["epochs_completed"] == 0  # the failing epoch did not complete
    assert result["metrics"] is not None  # the weights were never updated, so they are still finite
    rows = _metrics_rows(tmp_path / "run")
    assert math.isnan(_column(rows, "mae_train_loss")[0])


class _ConstantObject(torch.nn.Module):
    """A generator whose object is the same constant for every pixel and pattern."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = value
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        real = patterns * 0 * self.weight + self.value
        return torch.complex(real, torch.zeros_like(real))


def test_a_zero_output_model_is_collapsed(smoke_data, tmp_path) -> None:
    result = run_training(prepare_run(_config(smoke_data, epochs=3)), tmp_path / "run", generator=_ConstantObject(0.0))
    assert result["status"] == "collapsed"
    assert result["failure"]["epoch"] == 0 and "constant-amplitude" in result["failure"]["reason"]
    assert result["training"]["epochs_completed"] == COLLAPSE_PATIENCE


def test_a_constant_output_is_collapsed_and_scores_exactly_the_constant_baseline(smoke_data, tmp_path) -> None:
    result = run_training(prepare_run(_config(smoke_data, epochs=1)), tmp_path / "run", generator=_ConstantObject(0.7))
    assert result["status"] == "collapsed" and result["failure"]["epoch"] == 0  # last epoch ends the streak
    metrics = result["metrics"]
    for key in ("amp_ssim", "amp_mae", "phase_ssim"):
        assert metrics[key] == pytest.approx(metrics["baseline"][key], abs=1e-9), key


class _OutOfMemory(_ConstantObject):
    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB")


def test_out_of_memory_is_recorded_as_oom_not_raised(smoke_data, tmp_path) -> None:
    result = run_training(prepare_run(_config(smoke_data)), tmp_path / "run", generator=_OutOfMemory())
    assert result["status"] == "oom" and "18.00 GiB" in result["failure"]["reason"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "oom"
    assert (tmp_path / "run" / "error.log").read_text().count("OutOfMemoryError") >= 1


class _Broken(_ConstantObject):
    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch in a user generator")


def test_an_unexpected_exception_is_recorded_as_error_with_its_traceback(smoke_data, tmp_path) -> None:
    result = run_training(prepare_run(_config(smoke_data)), tmp_path / "run", generator=_Broken())
    assert result["status"] == "error" and "shape mismatch" in result["failure"]["reason"]
    assert result["metrics"] is None and "status error" in result["evaluation_note"]
    assert "RuntimeError: shape mismatch" in (tmp_path / "run" / "error.log").read_text()


class _OutOfMemoryAtInference(_ConstantObject):
    """Trains and validates (batches of at most 64) but runs out of memory on evaluation's larger batches."""

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        if not self.training and patterns.shape[0] > 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB")
        return super().forward(patterns) + 0.1 * patterns.to(torch.complex64)


def test_a_failing_evaluation_is_recorded_and_keeps_the_training_status(smoke_data, tmp_path) -> None:
    result = run_training(
        prepare_run(_config(smoke_data, epochs=1)), tmp_path / "run", generator=_OutOfMemoryAtInference()
    )
    assert result["status"] == "ok" and result["metrics"] is None
    assert result["evaluation_note"].startswith("evaluation failed: OutOfMemoryError")
    assert json.loads((tmp_path / "run" / "result.json").read_text())["evaluation_note"] == result["evaluation_note"]
    assert "6.00 GiB" in (tmp_path / "run" / "error.log").read_text()


class _RecordingProgress:
    """A Progress that keeps what the library reports."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.tasks: list[tuple[str, int]] = []
        self.advanced = 0

    def log(self, message: str) -> None:
        self.lines.append(message)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        self.tasks.append((description, total))

        def advance(n: int = 1) -> None:
            self.advanced += n

        yield advance


def test_result_json_documents_the_run(smoke_data, tmp_path) -> None:
    progress = _RecordingProgress()
    result = run_training(prepare_run(_config(smoke_data, epochs=2)), tmp_path / "run", progress=progress)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    # The layout readers rely on, key by key and in order; the model reads the file back to the same object.
    assert list(saved) == RESULT_KEYS and list(saved["training"]) == TRAINING_KEYS
    assert list(saved["data"]) == ["train", "test", "N", "gridsize", "channels", "offset", "n_train", "n_val", "n_test"]
    assert list(saved["grad_norm"]) == ["steps", "max", "median", "p99", "mean", "frac_above_1", "max_step"]
    assert list(saved["model"]) == ["arch", "params", "params_real", "config"]
    assert list(saved["timing"]) == ["wall_s", "train_s", "eval_s", "samples_per_s"]
    assert list(saved["device"]) == ["accelerator", "threads", "devices", "name"]
    assert read_result(tmp_path / "run" / "result.json").to_document() == saved == to_jsonable(result)
    # The library reported through the Progress it was given: one advance per training step.
    assert progress.tasks == [("training steps", saved["training"]["steps"])]
    assert progress.advanced == saved["training"]["steps"]
    assert progress.lines == [f"training hybrid ({saved['model']['params']:,} params) for 2 epochs on cpu ..."]
    assert saved["schema"] == "fnostab.result/1" and saved["status"] == "ok" and saved["failure"] is None
    assert saved["training"]["epochs_completed"] == 2 and len(saved["training"]["val_losses"]) == 2
    assert saved["training"]["steps"] == 2 * math.ceil(289 / 16)
    assert saved["training"]["val_loss_name"] == "mae_val_loss"
    assert saved["data"]["n_val"] == saved["data"]["n_test"] and saved["device"]["accelerator"] == "cpu"
    assert saved["model"]["params"] == result["model"]["params"] > 0
    for key in ("amp_ssim", "phase_ssim", "amp_mae", "phase_aligned_ssim"):
        assert key in saved["metrics"] and key in saved["metrics"]["baseline"]
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "reconstruction.png", "reconstruction.npz"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not (tmp_path / "run" / ".logs").exists()
    rows = _metrics_rows(tmp_path / "run")
    assert {"epoch", "step", "mae_train_loss", "mae_val_loss", "val_amp_rel_std", "lr"} <= set(rows[0])
    rel_std = _column(rows, "val_amp_rel_std")
    assert len(rel_std) == 2 and all(0.01 < v < 10 for v in rel_std)  # a healthy run is not flat


def test_initial_loss_noise_floor_and_floor_multiples_in_result_json(smoke_data, tmp_path) -> None:
    config = _config(smoke_data, epochs=1)
    prepared = prepare_run(config)
    training = run_training(prepared, tmp_path / "run")["training"]

    # ℓ0: the same initialisation, scored on the validation set before any step, batch by batch.
    pl.seed_everything(config.train.seed, verbose=False)
    generator = build_generator("hybrid", N=32, width=8, modes=8, fno_blocks=2).eval()
    probe = torch.from_numpy(prepared.test.probe)
    patterns = torch.from_numpy(prepared.test.diffraction)  # (n, C, N, N), C = 1
    with torch.no_grad():
        weighted = [
            physics_loss("mae", predicted_amplitude(generator(b), probe), b).item() * len(b) for b in patterns.split(64)
        ]
    assert training["initial_val_loss"] == pytest.approx(sum(weighted) / len(patterns), rel=1e-5)
    assert training["initial_val_loss"] > training["best_val_loss"]

    floor = json.loads(np.load(smoke_data[1])["_metadata"].item())["noise_floor"]["mae"]
    assert training["noise_floor"] == floor
    assert training["best_val_loss_over_floor"] == pytest.approx(training["best_val_loss"] / floor)
    assert training["final_val_loss_over_floor"] == pytest.approx(training["final_val_loss"] / floor)


# ----------------------------------------------------------------------------------------- CLI
def test_smoke_preset_trains_end_to_end_through_the_cli(tmp_path) -> None:
    out = tmp_path / "run"
    result = run_cli("train", "--preset", "smoke", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["status"] == "ok" and document["run_dir"] == str(out)
    assert json.loads((out / "config.json").read_text())["model"]["arch"] == "hybrid"


def test_an_absurd_learning_rate_diverges_with_exit_1_and_a_readable_metrics_csv(smoke_data, tmp_path) -> None:
    out = tmp_path / "run"
    result = run_cli("train", *smoke_data, "--preset", "smoke", "--lr", "1e4", "--epochs", "3", "--out", out, "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["status"] == "diverged" and document["failure"]["step"] >= 1
    rows = _metrics_rows(out)
    assert len(rows) >= document["failure"]["step"]
    assert json.loads((out / "result.json").read_text())["failure"] == document["failure"]


def test_out_that_is_not_a_run_dir_is_refused_even_with_force_and_left_untouched(smoke_data, tmp_path) -> None:
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"unrelated": true}')
    result = run_cli("train", *smoke_data, "--preset", "smoke", "--epochs", "1", "--out", out, "--force")
    assert result.returncode == 2
    assert "not an fnostab run dir" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_force_replaces_a_run_only_once_the_new_one_is_written(smoke_data, tmp_path) -> None:
    out = tmp_path / "run"
    first = run_cli("train", *smoke_data, "--preset", "smoke", "--epochs", "1", "--seed", "1", "--out", out, "--json")
    assert first.returncode == 0, first.stderr
    fresh_mode = out.stat().st_mode & 0o7777
    refused = run_cli("train", *smoke_data, "--preset", "smoke", "--epochs", "1", "--out", out)
    assert refused.returncode == 2 and "--force" in refused.stderr
    second = run_cli(
        "train", *smoke_data, "--preset", "smoke", "--epochs", "1", "--seed", "2", "--out", out, "--force", "--json"
    )
    assert second.returncode == 0, second.stderr
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 2
    assert json.loads((out / "result.json").read_text())["training"] == json.loads(second.stdout)["training"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging or retired dir left beside it
    assert out.stat().st_mode & 0o7777 == fresh_mode  # not the 0700 of a temp dir


def test_ctrl_c_exits_130_and_leaves_no_result_or_temp_file(tmp_path) -> None:
    out = tmp_path / "run"
    # As when pytest itself runs with SIGINT ignored (`make test &` in a script): the child must not inherit that.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = spawn_cli(
            "train",
            "--preset",
            "smoke",
            "--epochs",
            "200",
            "--out",
            out,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    time.sleep(1.0)  # inside the training loop
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    # Lightning's banners stay off stderr in a fresh process, which imports Lightning only to train.
    assert "GPU available" not in stderr, stderr
    assert not (out / "result.json").exists()
    assert not list(out.rglob(".*.tmp"))


def test_bf16_mixed_precision_trains_on_cpu(smoke_data, tmp_path) -> None:
    result = run_training(prepare_run(_config(smoke_data, epochs=1, precision="bf16-mixed")), tmp_path / "run")
    assert result["status"] == "ok"
    assert math.isfinite(result["training"]["best_val_loss"])


@pytest.mark.cuda
def test_smoke_run_on_cuda_matches_the_cpu_statuses_and_logs_the_device(smoke_data, tmp_path) -> None:
    config = _config(smoke_data, epochs=1, accelerator="cuda")
    result = run_training(prepare_run(config), tmp_path / "run")
    assert result["status"] == "ok" and result["device"]["accelerator"] == "cuda"
    rows = _metrics_rows(tmp_path / "run")
    assert len(_column(rows, "grad_norm_preclip")) == result["training"]["steps"]


@pytest.mark.cuda
def test_bf16_mixed_precision_trains_on_cuda(smoke_data, tmp_path) -> None:
    config = _config(smoke_data, epochs=1, accelerator="cuda", precision="bf16-mixed", clip="agc:0.01")
    assert run_training(prepare_run(config), tmp_path / "run")["status"] == "ok"

"""Precursor signals: hand-computed values, the ring-buffer windows, training wiring, explain and summarize."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import assert_clean_usage_error, run_cli
from fnostab.models import build_generator
from fnostab.training.precursor_record import PRECURSORS_NAME, SIGNALS, read_windows
from fnostab.training.precursors import PrecursorRecorder, block_groups


def _tiny_hybrid() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_generator("hybrid", N=16, width=4, modes=4, fno_blocks=2)


def _backward(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    loss = model(torch.rand(2, 1, 16, 16)).abs().mean()
    loss.backward()
    return loss.detach()


def _norm(tensors: list[torch.Tensor]) -> float:
    # |z|² for complex entries: an independent route to the real-view norms the recorder uses.
    return math.sqrt(sum(float(torch.linalg.vector_norm(t).double() ** 2) for t in tensors))


def test_blocks_of_a_hybrid_are_named_in_forward_order_and_hold_every_parameter_once() -> None:
    model = _tiny_hybrid()
    groups = block_groups(model)
    assert list(groups) == ["lifter", "encoder.0", "encoder.1", "bottleneck", "decoder.0", "head"]
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in model.down[0].parameters()} <= {id(p) for p in groups["encoder.0"]}


def test_an_sgd_step_gives_the_hand_computed_update_ratio_and_cosine_one_per_block() -> None:
    model = _tiny_hybrid()
    lr = 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    recorder = PrecursorRecorder(model, every=1, window=4)
    groups = block_groups(model)
    loss = _backward(model)
    weights = {name: _norm([p.detach().clone() for p in params]) for name, params in groups.items()}
    grads = {name: _norm([p.grad.clone() for p in params]) for name, params in groups.items()}
    recorder.capture(0, optimizer)
    optimizer.step()
    logged = recorder.finish(0, float(loss), 1.0, optimizer, stepped=True)
    for name in groups:
        # SGD: ΔW = −η g, so ‖ΔW‖/‖W‖ = η‖g‖/‖W‖ and the step is exactly along −g.
        assert logged[f"precursor/{name}/grad_norm"] == pytest.approx(grads[name], rel=1e-5)
        assert logged[f"precursor/{name}/weight_norm"] == pytest.approx(weights[name], rel=1e-5)
        assert logged[f"precursor/{name}/update_norm"] == pytest.approx(lr * grads[name], rel=1e-4)
        assert logged[f"precursor/{name}/update_ratio"] == pytest.approx(lr * grads[name] / weights[name], rel=1e-4)
        assert logged[f"precursor/{name}/update_grad_cos"] == pytest.approx(1.0, abs=1e-4)
        assert math.isnan(logged[f"precursor/{name}/adam_v_rms"])  # SGD keeps no second moment


def test_adams_first_step_moves_every_coordinate_by_lr_and_its_v_rms_is_the_gradient_rms() -> None:
    model = _tiny_hybrid()
    lr = 1e-3
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    recorder = PrecursorRecorder(model, every=1, window=4)
    groups = block_groups(model)
    loss = _backward(model)
    real = {
        name: torch.cat([(torch.view_as_real(p.grad) if p.is_complex() else p.grad).reshape(-1) for p in params])
        for name, params in groups.items()
    }
    recorder.capture(0, optimizer)
    optimizer.step()
    logged = recorder.finish(0, float(loss), 1.0, optimizer, stepped=True)
    for name, g in real.items():
        # Step 1 of Adam: m̂ = g, v̂ = g², so each coordinate moves by η·g/(|g| + ε) (≈ η), and √mean(v̂) = RMS(g).
        g = g.double()
        expected = lr * float((g / (g.abs() + 1e-8)).pow(2).sum().sqrt())
        assert logged[f"precursor/{name}/update_norm"] == pytest.approx(expected, rel=1e-3)
        assert logged[f"precursor/{name}/adam_v_rms"] == pytest.approx(float(g.double().pow(2).mean().sqrt()), rel=1e-4)


def _fake_failure(status: str, step: int) -> object:
    from fnostab.training.failure import Failure

    return Failure(status, "planted", step, 0)


def test_a_loss_spike_writes_the_last_w_steps_once_and_a_failure_adds_its_own_window(tmp_path: Path) -> None:
    model = _tiny_hybrid()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.0)
    recorder = PrecursorRecorder(model, every=5, window=8, out_dir=tmp_path)
    losses = {25: 5.0, 27: 6.0}  # 5× and 6× the median of 1.0: spikes; the second falls in the first's window
    for step in range(30):
        model.zero_grad()
        _backward(model, seed=step)
        recorder.capture(step, optimizer)
        failed = step == 29
        if not failed:
            optimizer.step()
        recorder.finish(
            step,
            losses.get(step, 1.0),
            1.0,
            optimizer,
            stepped=not failed,
            failure=_fake_failure("diverged", 29) if failed else None,
        )
    windows = read_windows(tmp_path / PRECURSORS_NAME)
    assert [(w["trigger"], w["trigger_step"]) for w in windows] == [("spike", 25), ("diverged", 29)]
    assert windows[0]["steps"] == list(range(18, 26)) and windows[1]["steps"] == list(range(22, 30))
    assert "loss spike ×5" in windows[0]["reason"]
    assert recorder.spikes_seen == 2
    assert windows[0]["columns"]["precursor/loss"][-1] == 5.0
    # The failed step took no update: its update signals are NaN, its gradient is recorded.
    assert math.isnan(windows[1]["columns"]["precursor/head/update_ratio"][-1])
    assert windows[1]["columns"]["precursor/head/grad_norm"][-1] > 0
    recorder.record_failure(_fake_failure("diverged", 29))  # the detector repeats its failure: no second window
    assert len(read_windows(tmp_path / PRECURSORS_NAME)) == 2
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------------------- in training
def _train(
    smoke_data: tuple[Path, Path], run_dir: Path, monkeypatch: pytest.MonkeyPatch | None = None, **train: object
) -> dict:
    from fnostab.cli.train import build_run_config
    from fnostab.training.runner import prepare_run, run_training

    config = build_run_config(train_npz=smoke_data[0], test_npz=smoke_data[1], preset="smoke", model={}, train=train)
    return run_training(prepare_run(config), run_dir)


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def plain_and_recorded(smoke_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("precursors")
    _train(smoke_data, root / "plain", epochs=1)
    _train(smoke_data, root / "recorded", epochs=1, precursors_every=3, curvature_every=10, batch_sharpness_every=4)
    return root / "plain", root / "recorded"


def test_recording_precursors_and_curvature_leaves_the_training_numbers_unchanged(plain_and_recorded) -> None:
    plain, recorded = (json.loads((d / "result.json").read_text())["training"] for d in plain_and_recorded)
    assert plain["train_losses"] == recorded["train_losses"]
    assert plain["val_losses"] == recorded["val_losses"]


def test_block_signals_are_logged_every_k_steps_curvature_every_m_and_batch_sharpness_every_b(
    plain_and_recorded,
) -> None:
    rows = [r for r in _metrics(plain_and_recorded[1]) if r.get("mae_train_loss")]
    steps = [int(r["step"]) for r in rows]
    assert steps == list(range(19))
    signal_steps = [int(r["step"]) for r in rows if r["precursor/encoder.0/update_ratio"]]
    curvature_steps = [int(r["step"]) for r in rows if r["curvature/sharpness"] not in ("", "nan")]
    batch_steps = [int(r["step"]) for r in rows if r["curvature/batch_sharpness"] not in ("", "nan")]
    assert signal_steps == [0, 3, 6, 9, 12, 15, 18]
    assert curvature_steps == [0, 10]
    assert batch_steps == [0, 4, 8, 10, 12, 16]  # the cheap estimate alone on its own steps, with λmax on M's
    by_step = {int(r["step"]): r for r in rows}
    assert by_step[0]["curvature/sharpness_precond"] == "nan"  # no Adam state before the first step
    assert float(by_step[10]["curvature/sharpness_precond"]) > 0
    assert float(by_step[10]["curvature/sharpness"]) >= float(by_step[10]["curvature/batch_sharpness"])
    assert float(by_step[10]["curvature/edge_gd"]) == pytest.approx(2 / 1e-3)
    assert float(by_step[10]["curvature/edge_adam"]) == pytest.approx(38 / 1e-3)
    for name in ("lifter", "encoder.0", "encoder.1", "bottleneck", "decoder.0", "head"):
        for signal in SIGNALS:
            assert math.isfinite(float(by_step[3][f"precursor/{name}/{signal}"])), (name, signal)
    assert not (plain_and_recorded[1] / PRECURSORS_NAME).exists()  # a healthy 19-step run: no spike, no failure


@pytest.fixture(scope="module")
def planted(smoke_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke run whose learning rate jumps from 1e-3 to 0.3 at the start of epoch 2 (step 38)."""
    from fnostab.training import module

    def jump(optimizer: torch.optim.Optimizer, config: object) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 300.0 if epoch >= 2 else 1.0)

    run_dir = tmp_path_factory.mktemp("planted") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "build_scheduler", jump)
        result = _train(smoke_data, run_dir, epochs=3, precursors_every=5, precursor_window=30)
    assert result["status"] == "diverged"
    return run_dir


def test_a_planted_lr_jump_leaves_a_window_ending_at_the_failure_and_explain_names_a_signal_before_it(
    planted: Path,
) -> None:
    from fnostab.report.explain import explain_run

    failure = json.loads((planted / "result.json").read_text())["failure"]
    assert failure["step"] > 38
    window = [w for w in read_windows(planted / PRECURSORS_NAME) if w["trigger"] == "diverged"][-1]
    assert window["steps"] == list(range(failure["step"] - 29, failure["step"] + 1))
    document = explain_run(planted)
    first = document["first_signal"]
    assert document["event"] == {"kind": "diverged", "step": failure["step"], "reason": failure["reason"]}
    assert first["step"] == 38 < failure["step"]  # the first step at the raised learning rate
    assert first["signal"] == "update_ratio" and first["factor"] > 50
    assert first["steps_before_event"] == failure["step"] - 38


def test_train_at_lr_10_then_explain_json_is_one_document_consistent_with_metrics_csv(tmp_path: Path) -> None:
    run_dir = tmp_path / "R"
    trained = run_cli(
        "train", "--preset", "smoke", "--lr", "10", "--precursors-every", "1", "--out", run_dir, "--quiet"
    )
    assert trained.returncode == 1, trained.stderr
    explained = run_cli("explain", run_dir, "--json")
    assert explained.returncode == 0, explained.stderr
    document = json.loads(explained.stdout)  # one JSON document and nothing else
    failure = json.loads((run_dir / "result.json").read_text())["failure"]
    assert document["event"]["step"] == failure["step"]
    first = document["first_signal"]
    assert first is not None and first["step"] <= failure["step"]
    row = next(r for r in _metrics(run_dir) if r["step"] == str(first["step"]) and r.get(first["column"]))
    logged = float(row[first["column"]])
    assert first["column"] == f"precursor/{first['block']}/{first['signal']}"
    if first["finite"]:
        assert logged == first["value"]
    else:
        assert not math.isfinite(logged)
    assert (run_dir / "explain.png").stat().st_size > 0
    from fnostab.report.explain import format_explanation

    text = format_explanation(document)
    assert f"first signal: {first['block']}:" in text and f"at step {first['step']}" in text
    assert "curvature: not measured" in text


def test_explain_of_a_path_that_is_not_a_run_dir_is_a_usage_error(tmp_path: Path) -> None:
    assert_clean_usage_error(run_cli("explain", tmp_path), "no result.json")
    assert not (tmp_path / "explain.png").exists()


def test_summarize_explains_each_failed_run_and_counts_failures_by_first_signal(planted: Path, tmp_path: Path) -> None:
    from fnostab.report import summarize

    document = summarize([planted], out_dir=tmp_path)
    group = document.arms[0]
    assert group.failures_by_first_signal == {"update_ratio": 1}
    explanation = group.runs[0].explanation
    assert explanation["step"] == 38 and explanation["block"] in (
        "lifter",
        "encoder.0",
        "encoder.1",
        "bottleneck",
        "decoder.0",
        "head",
    )
    markdown = (tmp_path / "summary.md").read_text()
    assert "## Why runs failed (first precursor signal)" in markdown
    assert "update_ratio 1" in markdown


def test_with_norm_clipping_the_gradient_norm_is_pre_clip_and_the_cosine_uses_the_clipped_gradient() -> None:
    from fnostab.clipping import clip_gradients_

    model = _tiny_hybrid()
    lr, limit = 1.0, 1e-2  # a step large enough that float32 ΔW = W′ − W keeps 5 digits
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    recorder = PrecursorRecorder(model, every=1, window=4)
    loss = _backward(model)
    pre = {name: _norm([p.grad.clone() for p in params]) for name, params in block_groups(model).items()}
    recorder.capture(0, optimizer)
    total, _ = clip_gradients_(model, f"norm:{limit}")
    assert float(total) > 10 * limit  # it does clip
    scale = limit / (float(total) + 1e-6)  # torch's clip_grad_norm_ coefficient
    optimizer.step()
    logged = recorder.finish(0, float(loss), float(total), optimizer, stepped=True)
    for name, norm in pre.items():
        assert logged[f"precursor/{name}/grad_norm"] == pytest.approx(norm, rel=1e-5)
        assert logged[f"precursor/{name}/update_norm"] == pytest.approx(lr * scale * norm, rel=1e-3)
        assert logged[f"precursor/{name}/update_grad_cos"] == pytest.approx(1.0, abs=1e-4)


def test_a_collapse_is_explained_from_its_first_spike_and_names_blocks_whose_gradient_died(tmp_path: Path) -> None:
    """A hand-written record: the gradient of encoder.0 jumps ×50 at step 3, the loss spikes at step 4,
    encoder.0's gradient is exactly 0 from step 6 on, and the collapse is found at step 59."""
    from fnostab.report.explain import explain_run, format_explanation

    run_dir = tmp_path / "collapsed"
    run_dir.mkdir()
    failure = {"status": "collapsed", "reason": "constant-amplitude output", "step": 59, "epoch": 0}
    from test_report import make_result  # a whole fnostab.result/1 document: read_result checks the schema

    document = {**make_result("control", 0, status="collapsed", step=59, epoch=0), "failure": failure}
    (run_dir / "result.json").write_text(json.dumps(document))
    encoder = [0.1, 0.11, 0.09, 5.0, 3.0, 0.2] + [0.0] * 54
    head = [1.0 + 0.05 * (i % 3) for i in range(60)]
    head_v = [1e-3] * 30 + [5e-9] * 30  # Adam's second moment of the head falls below 10 ε at step 30
    loss = [0.5, 0.52, 0.49, 0.5, 9.0] + [0.4] * 55
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "epoch",
                "step",
                "mae_train_loss",
                "precursor/encoder.0/grad_norm",
                "precursor/head/grad_norm",
                "precursor/head/adam_v_rms",
            ]
        )
        for step in range(60):
            writer.writerow([0, step, loss[step], encoder[step], head[step], head_v[step]])
    columns = ["precursor/loss", "precursor/encoder.0/grad_norm", "precursor/head/grad_norm"]
    with (run_dir / PRECURSORS_NAME).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["window", "trigger", "trigger_step", "step", "reason", *columns])
        for step in range(5):  # the spike window (steps 0-4), then the collapse's (steps 50-59)
            writer.writerow([0, "spike", 4, step, "loss spike ×18", loss[step], encoder[step], head[step]])
        for step in range(50, 60):
            writer.writerow(
                [1, "collapsed", 59, step, "constant-amplitude output", loss[step], encoder[step], head[step]]
            )
    document = explain_run(run_dir)
    assert document["searched"]["window"] == {"trigger": "spike", "trigger_step": 4}
    first = document["first_signal"]
    assert (first["block"], first["signal"], first["step"]) == ("encoder.0", "grad_norm", 3)
    assert first["factor"] == pytest.approx(5.0 / 0.1)  # the median of 0.1, 0.11, 0.09
    assert first["steps_before_event"] == 56
    assert document["loss_spike_step"] == 4
    assert document["dead_blocks"] == [{"block": "encoder.0", "since_step": 6}]
    assert document["near_epsilon"] == [{"block": "head", "step": 30, "value": 5e-9}]
    text = format_explanation(document)
    assert "encoder.0: gradient exactly 0 from step 6 on" in text
    assert "head: Adam second-moment RMS 5e-09 at step 30, below 10 ε" in text

"""``fnostab probe-activations`` and ``fnostab grad-gain`` as a user runs them, plus their library core.

CLI tests run the real program in a subprocess from the repo root (conftest ``run_cli``); models are
tiny (width 4–8, N 16–32) so each run takes about as long as importing torch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CliResult, assert_clean_usage_error, run_cli
from fnostab.config import DataSource, ModelConfig, RunConfig, TrainConfig
from fnostab.data.npz import load_split
from fnostab.diagnostics import measure_grad_gain, probe_activations
from fnostab.errors import InputError
from fnostab.models import build_generator
from fnostab.physics import physics_loss, predicted_amplitude
from fnostab.rundir import CHECKPOINT_NAME
from fnostab.training.checkpoint import save_checkpoint

FNO_TINY = ("--arch", "fno", "--width", "4", "--modes", "4", "--fno-blocks", "2")


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed 003's input: only 'diffraction', two random 16×16 patterns, no probe."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    np.savez(path, diffraction=np.random.default_rng(0).random((2, 16, 16)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def fno_run(smoke_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run dir (one epoch of a small fno on the smoke data), trained in-process."""
    from fnostab.training.runner import prepare_run, run_training

    train, test = smoke_data
    config = RunConfig(
        data=DataSource(train=train, test=test),
        model=ModelConfig(arch="fno", width=4, modes=4, fno_blocks=2, cnn_blocks=1),
        train=TrainConfig(epochs=1, batch_size=64, seed=5, val_patches=32, accelerator="cpu"),
    )
    run_dir = tmp_path_factory.mktemp("runs") / "fno-run"
    result = run_training(prepare_run(config), run_dir)
    assert result["status"] == "ok", result["failure"]
    return run_dir


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


# ------------------------------------------------------------------------------ probe-activations
def test_seed_003_smoke_tiny_npz_with_only_diffraction_writes_every_layer_and_the_plot(
    tiny_npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_cli("probe-activations", tiny_npz, "--out", out, "--arch", "fno",
                     "--batch-size", "1", "--max-samples", "1", "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "activation_report.json").read_text())
    assert "layers" in report and "summary" in report
    layers = report["layers"]
    n_blocks = report["summary"]["n_blocks"]
    assert n_blocks == 2  # the cpu preset's fno_blocks
    assert layers["lifter"]["kind"] == "lifter"
    for i in range(n_blocks):
        assert layers[f"blocks.{i}"]["kind"] == "block"
        assert layers[f"blocks.{i}.spectral"]["kind"] == "spectral"
        assert layers[f"blocks.{i}.local"]["kind"] == "local"
        assert layers[f"blocks.{i}"]["mean_abs"] > 0
    summary = report["summary"]
    assert (summary["architecture"], summary["n_samples"], summary["batch_size"], summary["N"]) == ("fno", 1, 1, 16)
    assert isinstance(summary["drift"], bool) and summary["depth_slope"] is not None
    assert (out / "activations.png").read_bytes().startswith(b"\x89PNG")
    # Human output: one table row per block and the verdict.
    assert "blocks.1" in result.stdout and "drift" in result.stdout


def test_probe_activations_of_a_run_dir_reports_the_runs_architecture(
    fno_run: Path, smoke_data: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "act"
    result = run_cli("probe-activations", smoke_data[0], "--run", fno_run, "--max-samples", "8",
                     "--batch-size", "4", "--device", "cpu", "--out", out, "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    run_arch = json.loads((fno_run / "config.json").read_text())["model"]["arch"]
    assert document["summary"]["architecture"] == run_arch == "fno"
    assert document["model"]["source"] == "checkpoint"
    assert document["summary"]["n_samples"] == 8 and document["summary"]["n_batches"] == 2
    assert json.loads((out / "activation_report.json").read_text())["summary"] == document["summary"]


def test_probe_activations_library_probes_the_first_max_samples_patterns_in_batches() -> None:
    torch.manual_seed(0)
    generator = build_generator("hybrid", N=16, width=4, modes=4, fno_blocks=2)
    patterns = np.random.default_rng(1).random((10, 16, 16, 1)).astype(np.float32)
    report = probe_activations(patterns, generator, batch_size=3, max_samples=7, device="cpu")
    summary = report["summary"]
    assert (summary["n_samples"], summary["n_batches"], summary["architecture"]) == (7, 3, "hybrid")
    # The lifter output pooled over the 7 patterns equals a direct computation.
    with torch.no_grad():
        lifted = generator.lifter(torch.from_numpy(patterns[:7, ..., 0]).unsqueeze(1))
    assert report["layers"]["lifter"]["mean_abs"] == pytest.approx(lifted.abs().double().mean().item(), rel=1e-6)
    assert [row["name"] for row in report["depth_profile"]] == ["lifter", "blocks.0", "blocks.1", "blocks.2"]


# -------------------------------------------------------------------------------------- grad-gain
def test_grad_gain_norms_equal_autograd_of_the_physics_loss_at_the_block_outputs(
    smoke_data: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "gg"
    result = run_cli("grad-gain", smoke_data[0], "--arch", "hybrid", "--width", "8", "--modes", "8",
                     "--fno-blocks", "2", "--seed", "7", "--batches", "1", "--batch-size", "8", "--device", "cpu",
                     "--out", out, "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    norms, gains = document["norms"], document["gains"]
    n_blocks = len(document["block_names"])
    assert n_blocks == 3  # two encoder levels and the bottleneck
    assert all(n is not None and math.isfinite(n) and n > 0 for n in norms)
    assert len(gains) == n_blocks - 1
    assert gains == pytest.approx([norms[i - 1] / norms[i] for i in range(1, n_blocks)])
    assert json.loads((out / "grad_gain.json").read_text())["norms"] == norms
    assert (out / "grad_gain.png").read_bytes().startswith(b"\x89PNG")

    # Independently: the same seed gives the same fresh generator; the first 8 patterns are batch 0.
    split = load_split(smoke_data[0])
    torch.manual_seed(7)
    generator = build_generator("hybrid", N=32, width=8, modes=8, fno_blocks=2)
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in generator.blocks]
    batch = torch.from_numpy(split.diffraction[:8])  # (8, 1, N, N)
    loss = physics_loss("mae", predicted_amplitude(generator(batch), torch.from_numpy(split.probe)), batch)
    grads = torch.autograd.grad(loss, outputs)
    for handle in handles:
        handle.remove()
    assert norms == pytest.approx([g.norm().item() for g in grads], rel=1e-5)
    assert document["loss"]["mean"] == pytest.approx(loss.item(), rel=1e-6)


def test_grad_gain_without_a_probe_in_the_npz_warns_and_uses_the_synthetic_probe(
    tiny_npz: Path, tmp_path: Path
) -> None:
    result = run_cli("grad-gain", tiny_npz, *FNO_TINY, "--batches", "1", "--batch-size", "2", "--device", "cpu",
                     "--out", tmp_path / "gg")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "synthetic probe" in result.stderr
    report = json.loads((tmp_path / "gg" / "grad_gain.json").read_text())
    assert report["data"]["probe"] == "synthetic"
    # Human output: a norm per block and a flagged or plain gain per transition.
    assert "blocks.0" in result.stdout and "γ=" in result.stdout


def test_grad_gain_averages_norms_over_batches_and_forms_gains_from_the_mean_norms(
    smoke_data: tuple[Path, Path],
) -> None:
    split = load_split(smoke_data[0])
    torch.manual_seed(0)
    generator = build_generator("fno", N=32, width=4, modes=4, fno_blocks=3, cnn_blocks=1)
    report = measure_grad_gain(
        split.diffraction[:10], split.probe, generator, batches=3, batch_size=4, norm_type="mean"
    )
    per_batch = report["per_batch"]
    assert [b["samples"] for b in per_batch] == [4, 4, 2]  # consecutive slices; the last one short
    for i, norm in enumerate(report["norms"]):
        assert norm == pytest.approx(sum(b["norms"][i] for b in per_batch) / 3)
    norms = report["norms"]
    assert report["gains"] == pytest.approx([norms[0] / norms[1], norms[1] / norms[2]])
    assert report["mean_log_gains"] == pytest.approx(
        [sum(math.log(b["norms"][i - 1] / b["norms"][i]) for b in per_batch) / 3 for i in (1, 2)]
    )
    assert report["flags"] == ["amplifying" if g > 2 else "damping" if g < 0.5 else "healthy" for g in report["gains"]]
    assert all(p.grad is None for p in generator.parameters())  # .grad untouched


def test_grad_gain_uses_only_the_batches_that_exist_when_the_data_is_short(smoke_data: tuple[Path, Path]) -> None:
    split = load_split(smoke_data[0])
    generator = build_generator("fno", N=32, width=4, modes=4, fno_blocks=2, cnn_blocks=0)
    report = measure_grad_gain(split.diffraction[:5], split.probe, generator, batches=4, batch_size=4)
    assert (report["settings"]["batches_requested"], report["settings"]["batches_used"]) == (4, 2)


def test_a_blown_up_generator_still_gets_both_reports_naming_the_non_finite_blocks(tmp_path: Path) -> None:
    from fnostab.data.probe import normalise_probe, synthetic_probe
    from fnostab.diagnostics import write_activation_report, write_grad_gain_report

    generator = build_generator("fno", N=16, width=4, modes=4, fno_blocks=2, cnn_blocks=0)
    with torch.no_grad():
        generator.blocks[1].local.weight.fill_(float("nan"))
    patterns = np.random.default_rng(2).random((4, 16, 16)).astype(np.float32)
    activations = probe_activations(patterns, generator, batch_size=2)
    assert activations["summary"]["drift"] is True
    assert activations["summary"]["verdict"].startswith("NON-FINITE activations in blocks.1")
    gains = measure_grad_gain(patterns, normalise_probe(synthetic_probe(16)), generator, batches=1, batch_size=4)
    assert gains["flags"] == ["nonfinite"]
    paths = {
        **write_activation_report(activations, tmp_path),
        **{f"gg_{k}": v for k, v in write_grad_gain_report(gains, tmp_path).items()},
    }
    assert all(path.stat().st_size > 0 for path in paths.values())
    assert json.loads((tmp_path / "grad_gain.json").read_text())["norms"] == [None, None]  # NaN → null


# ------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def corrupt_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corrupt") / "checkpoint.pt"
    path.write_bytes(b"this is not a torch checkpoint")
    return path


@pytest.fixture(scope="module")
def deep_hybrid_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-level hybrid: runs at N=16 (16/4 = 4 ≥ 2) but not at N=6 (not a multiple of 4)."""
    model = ModelConfig(arch="hybrid", width=4, modes=2, fno_blocks=3)
    generator = build_generator(model, 16)
    path = tmp_path_factory.mktemp("deep") / CHECKPOINT_NAME
    save_checkpoint(path, generator, model, 16, epoch=0, step=0)
    return path


@pytest.mark.parametrize(
    ("command", "extra", "fragments"),
    [
        ("probe-activations", ["--arch", "transformer"], ["--arch", "transformer"]),
        ("grad-gain", ["--batches", "0"], ["--batches"]),
        ("grad-gain", ["--norm", "l3"], ["--norm", "l3"]),
        ("probe-activations", ["--max-samples", "0"], ["--max-samples"]),
        ("grad-gain", ["--loss", "l2"], ["--loss"]),
    ],
)
def test_bad_options_exit_2_with_one_line_and_write_nothing(
    command: str, extra: list[str], fragments: list[str], tiny_npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_cli(command, tiny_npz, "--device", "cpu", "--out", out, *extra)
    assert_clean_usage_error(result, *fragments)
    assert not out.exists()


def test_missing_npz_exits_2_naming_the_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("grad-gain", tmp_path / "nowhere.npz", "--device", "cpu", "--out", out)
    assert_clean_usage_error(result, "nowhere.npz", "not found")
    assert not out.exists()


@pytest.mark.parametrize("command", ["probe-activations", "grad-gain"])
def test_checkpoint_together_with_model_options_is_refused_naming_them(
    command: str, fno_run: Path, tiny_npz: Path, tmp_path: Path
) -> None:
    before = _files(fno_run)
    result = run_cli(command, tiny_npz, "--run", fno_run, "--width", "8", "--device", "cpu", "--out", tmp_path / "out")
    assert_clean_usage_error(result, "--run", "--width")
    result = run_cli(command, tiny_npz, "--checkpoint", fno_run / CHECKPOINT_NAME, "--arch", "fno", "--seed", "1",
                     "--device", "cpu", "--out", tmp_path / "out")  # fmt: skip
    assert_clean_usage_error(result, "--checkpoint", "--arch", "--seed")
    assert not (tmp_path / "out").exists() and _files(fno_run) == before


def test_corrupt_checkpoint_exits_2_and_writes_nothing(
    corrupt_checkpoint: Path, tiny_npz: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "probe-activations", tiny_npz, "--checkpoint", corrupt_checkpoint, "--device", "cpu", "--out", tmp_path / "out"
    )
    assert_clean_usage_error(result, str(corrupt_checkpoint), "checkpoint")
    assert not (tmp_path / "out").exists()


def test_checkpoint_whose_model_cannot_run_at_the_npz_size_exits_2(
    deep_hybrid_checkpoint: Path, tmp_path: Path
) -> None:
    npz = tmp_path / "n6.npz"
    np.savez(npz, diffraction=np.ones((2, 6, 6), dtype=np.float32))
    result = run_cli(
        "grad-gain", npz, "--checkpoint", deep_hybrid_checkpoint, "--device", "cpu", "--out", tmp_path / "out"
    )
    assert_clean_usage_error(result, "N=6")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_device_exits_2(tiny_npz: Path, tmp_path: Path) -> None:
    result: CliResult = run_cli("probe-activations", tiny_npz, "--device", "cuda", "--out", tmp_path / "out")
    assert_clean_usage_error(result, "--device", "cuda")
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_stores_the_model_config_and_rebuilds_the_same_generator(deep_hybrid_checkpoint: Path) -> None:
    from fnostab.training.checkpoint import load_generator, read_checkpoint

    stored = read_checkpoint(deep_hybrid_checkpoint)
    generator, model = load_generator(deep_hybrid_checkpoint)
    assert model == ModelConfig(arch="hybrid", width=4, modes=2, fno_blocks=3) == generator.config
    assert all(torch.equal(generator.state_dict()[k], v) for k, v in stored["state_dict"].items())


@pytest.mark.parametrize(
    ("change", "fragment"),
    [({"width": 0}, "invalid width"), ({"arch": "unet"}, "invalid arch"), ({"dropout": 0.1}, "invalid dropout")],
)
def test_a_checkpoint_with_an_invalid_model_config_is_refused_naming_the_option(
    deep_hybrid_checkpoint: Path, tmp_path: Path, change: dict, fragment: str
) -> None:
    from fnostab.training.checkpoint import load_generator, read_checkpoint

    payload = read_checkpoint(deep_hybrid_checkpoint)
    payload["model"] = {**payload["model"], **change}
    path = tmp_path / CHECKPOINT_NAME
    torch.save(payload, path)
    with pytest.raises(InputError, match=re.escape(f"{path}: the checkpoint's model config is not valid: {fragment}")):
        load_generator(path)

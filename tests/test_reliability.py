"""Reliability: signals, concurrent use, unwritable or full disks, damaged documents, and the CLI's
one-line / one-document conventions on every failure path (exit codes in README's "Exit codes").

Checks that fail before any work run in-process (typer's CliRunner: no interpreter start-up);
signals, click's own usage errors and concurrency need a real process (conftest ``spawn_cli``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fnostab.io
from conftest import REPO, assert_clean_usage_error, run_cli, spawn_cli
from fnostab.cli.app import COMMANDS, app
from fnostab.errors import InputError

runner = CliRunner()


def invoke(*args: str | Path, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_one_line_error(result, exit_code: int, *fragments: str) -> str:
    """``exit_code``, exactly one "error:" line on stderr naming ``fragments`` (after any log lines); no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def json_document(stdout: str) -> dict:
    """stdout must be exactly one JSON document (json.loads rejects anything after it)."""
    return json.loads(stdout)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the command ended before the signal could be sent"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# ------------------------------------------------------------------------------- signals and concurrency
def test_a_second_train_into_a_busy_run_dir_is_refused_and_sigterm_stops_the_first_cleanly(
    smoke_data, tmp_path
) -> None:
    out = tmp_path / "run"
    proc = spawn_cli(
        "train",
        *smoke_data,
        "--preset",
        "smoke",
        "--epochs",
        "200",
        "--out",
        out,
        "--json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(out / "config.json", proc)
    second = run_cli(
        "train", *smoke_data, "--preset", "smoke", "--epochs", "1", "--seed", "7", "--out", out, "--force"
    )  # the two used to mix their files in one run dir
    assert_clean_usage_error(second, "in use by another fnostab process", f"pid {proc.pid}")
    assert json.loads((out / "config.json").read_text())["train"]["seed"] != 7
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging dir of the refused run

    # Inside the training loop, where Lightning's own SIGTERM handler used to turn it into exit 0.
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert json_document(stdout) == {"status": "interrupted", "exit_code": 143, "message": "interrupted by SIGTERM"}
    assert not (out / "result.json").exists() and not (out / ".logs").exists()
    assert not list(out.rglob(".*.tmp"))


def _write_sweep_json(directory: Path, kind: str) -> None:
    directory.mkdir(parents=True)
    (directory / "sweep.json").write_text(
        json.dumps({"schema": "fnostab.sweep/1", "kind": kind, "arms": {"control": {}}, "seeds": [0], "runs": []})
    )


def test_stress_over_a_shootout_dir_and_the_reverse_are_refused(smoke_data, tmp_path) -> None:
    shootout, stress = tmp_path / "shootout", tmp_path / "stress"
    _write_sweep_json(shootout, "shootout")
    _write_sweep_json(stress, "stress")
    refused = invoke("stress", *smoke_data, "--preset", "smoke", "--lrs", "1e-3", "--out", shootout)
    assert_one_line_error(refused, 2, str(shootout), "shootout sweep", "not a stress sweep")
    refused = invoke("shootout", *smoke_data, "--preset", "smoke", "--out", stress)
    assert_one_line_error(refused, 2, "stress sweep", "not a shootout sweep")
    assert sorted(p.name for p in shootout.iterdir()) == ["sweep.json"]


# ------------------------------------------------------------------------------------- output locations
def _bad_out(kind: str, tmp_path: Path) -> tuple[Path, str]:
    if kind == "under_proc":
        return Path("/proc/fnostab-out"), "cannot write to --out"
    if kind == "under_file":
        (tmp_path / "plain").write_text("x")
        return tmp_path / "plain" / "out", "is a file"
    return tmp_path / ("x" * 300), "longer than"


@pytest.mark.parametrize("kind", ["under_proc", "under_file", "long_name"])
def test_check_out_dir_rejects_what_cannot_be_written_and_leaves_nothing(kind, tmp_path) -> None:
    out, fragment = _bad_out(kind, tmp_path)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(InputError, match=fragment):
        fnostab.io.check_out_dir(out)
    assert sorted(tmp_path.iterdir()) == before
    fnostab.io.check_out_dir(tmp_path / "new" / "deeper")  # creatable: accepted, and not created
    assert not (tmp_path / "new").exists()


def test_check_out_dir_rejects_a_read_only_file_system(tmp_path, monkeypatch) -> None:
    def read_only(directory: Path, name: str) -> Path:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(directory / name))

    monkeypatch.setattr(fnostab.io, "_create_temp", read_only)  # root writes anywhere else: no chmod test
    with pytest.raises(InputError, match="Read-only file system"):
        fnostab.io.check_out_dir(tmp_path / "out")


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("train", "under_proc"),
        ("simulate", "under_file"),
        ("shootout", "long_name"),
        ("stress", "under_proc"),
        ("summarize", "under_file"),
        ("probe-activations", "long_name"),
        ("grad-gain", "under_proc"),
    ],
)
def test_every_command_refuses_an_unwritable_out_before_any_work(command, kind, smoke_data, tmp_path) -> None:
    out, fragment = _bad_out(kind, tmp_path)
    train, test = smoke_data
    args = {
        "train": ["train", train, test, "--preset", "smoke"],
        "simulate": ["simulate", "--preset", "smoke"],
        "shootout": ["shootout", train, test, "--preset", "smoke"],
        "stress": ["stress", train, test, "--preset", "smoke", "--lrs", "1e-3"],
        "summarize": ["summarize", REPO / "tests"],  # checked before its runs are looked for
        "probe-activations": ["probe-activations", train, "--preset", "smoke"],
        "grad-gain": ["grad-gain", train, "--preset", "smoke"],
    }[command]
    assert_one_line_error(invoke(*args, "--out", out), 2, fragment)


# ------------------------------------------------------------------------------------------------ cache
def test_an_unusable_cache_location_is_exit_2_naming_what_to_set(tmp_path) -> None:
    (tmp_path / "plain").write_text("x")
    out = tmp_path / "run"
    refused = invoke("train", "--preset", "smoke", "--out", out, env={"FNOSTAB_CACHE": str(tmp_path / "plain" / "c")})
    assert_one_line_error(refused, 2, "data cache", "FNOSTAB_CACHE")
    no_home = {"FNOSTAB_CACHE": "", "HOME": str(tmp_path / "plain")}
    refused = invoke("train", "--preset", "smoke", "--out", out, env=no_home)
    assert_one_line_error(refused, 2, str(tmp_path / "plain" / ".cache"), "HOME", "set FNOSTAB_CACHE")
    assert not out.exists()


# -------------------------------------------------------------------------------------------- full disk
def _no_space_for(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Writes of files called ``names`` fail as on a full disk (the temp file cannot be created)."""
    create = fnostab.io._create_temp

    def full(directory: Path, name: str) -> Path:
        if name in names:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / name))
        return create(directory, name)

    monkeypatch.setattr(fnostab.io, "_create_temp", full)


def test_a_full_disk_after_training_is_an_error_outcome_not_ok(smoke_data, tmp_path, monkeypatch) -> None:
    from test_training import _config

    from fnostab.training.runner import prepare_run, run_training

    _no_space_for(monkeypatch, "reconstruction.png")
    result = run_training(prepare_run(_config(smoke_data, epochs=1)), tmp_path / "run")
    assert result["status"] == "error" and result["metrics"] is None
    assert "No space left on device" in result["failure"]["reason"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "error"
    assert not (tmp_path / "run" / "reconstruction.png").exists()


def test_a_full_disk_under_train_is_exit_1_with_one_json_document(smoke_data, tmp_path, monkeypatch) -> None:
    _no_space_for(monkeypatch, "result.json")
    out = tmp_path / "run"
    result = invoke("train", *smoke_data, "--preset", "smoke", "--epochs", "1", "--out", out, "--json")
    line = assert_one_line_error(result, 1, "No space left on device", "result.json")
    assert json_document(result.stdout) == {"status": "error", "exit_code": 1, "message": line.removeprefix("error: ")}
    assert not (out / "result.json").exists()  # unfinished, never passed off as finished


def test_a_full_disk_under_simulate_leaves_no_output_dir(tmp_path, monkeypatch) -> None:
    _no_space_for(monkeypatch, "test.npz")
    out = tmp_path / "data"
    assert_one_line_error(invoke("simulate", "--preset", "smoke", "--out", out), 1, "No space left on device")
    assert not out.exists()


def test_a_checkpoint_write_torch_fails_is_an_os_error(tmp_path, monkeypatch) -> None:
    from fnostab.config import ModelConfig
    from fnostab.training.checkpoint import save_checkpoint

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\nmore torch text")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="could not write the checkpoint"):
        save_checkpoint(tmp_path / "checkpoint.pt", torch.nn.Linear(1, 1), ModelConfig(), 32, epoch=0, step=0)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- inputs
def _unevaluable_test_split(smoke_data, tmp_path: Path, fault: str) -> Path:
    with np.load(smoke_data[1]) as npz:
        arrays = dict(npz)
    if fault == "far_centres":  # centres far outside the object the ground truth is cut from
        del arrays["YY_ground_truth"]
        arrays["coords_offsets"] = arrays["coords_offsets"] + 5000.0
    else:  # a ground truth smaller than the region the patches stitch into
        arrays["YY_ground_truth"] = arrays["YY_ground_truth"][:, :100, :100]
    path = tmp_path / f"{fault}.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        ("far_centres", "does not fit"),
        ("small_truth", "ground_truth has shape"),
    ],
)
def test_a_test_split_that_cannot_be_evaluated_is_refused_before_training(
    fault, fragment, smoke_data, tmp_path
) -> None:
    bad = _unevaluable_test_split(smoke_data, tmp_path, fault)
    out = tmp_path / "run"
    assert_one_line_error(
        invoke("train", smoke_data[0], bad, "--preset", "smoke", "--out", out),
        2,
        str(bad),
        "cannot be evaluated",
        fragment,
    )
    assert not out.exists()
    if fault == "far_centres":
        sweep = tmp_path / "sweep"
        assert_one_line_error(
            invoke("shootout", smoke_data[0], bad, "--preset", "smoke", "--out", sweep), 2, "cannot be evaluated"
        )
        assert not sweep.exists()


def test_ray_client_address_without_grpc_is_one_clear_line(monkeypatch) -> None:
    import importlib.util

    from fnostab.experiments.sweep import ExecutionOptions

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else find_spec(name, *a))
    with pytest.raises(InputError, match=r"Ray Client.*pip install 'fnostab\[ray\]'"):
        ExecutionOptions(executor="ray", ray_address="ray://head:10001")
    ExecutionOptions(executor="ray", ray_address="10.0.0.1:6379")  # a node address needs no Ray Client
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("ray[client]") for req in extras["ray"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--lr", "abc"], "'--lr'"),
        (["train", "--bogus"], "--bogus"),
        (["trian"], "'trian'"),
    ],
)
def test_usage_errors_of_the_parser_are_one_line(args, fragment) -> None:
    result = run_cli(*args, "--json")
    assert_clean_usage_error(result, fragment)
    assert len(result.stderr.strip().splitlines()) == 1 and "╭" not in result.stderr
    assert json_document(result.stdout)["exit_code"] == 2


def test_checkpoint_errors_are_one_line_in_our_words(tmp_path) -> None:
    from fnostab.training.checkpoint import read_checkpoint

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"schema": "fnostab.checkpoint/1", "x": Payload()}, tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"PK\x03\x04 not really a zip")
    for name, fragment in (("evil.pt", "refused to load"), ("garbage.pt", "not a readable fnostab checkpoint")):
        with pytest.raises(InputError) as caught:
            read_checkpoint(tmp_path / name)
        message = str(caught.value)
        assert fragment in message and "\n" not in message and "weights_only" not in message
    with pytest.raises(InputError, match="found a directory"):
        read_checkpoint(tmp_path)


def test_json_mode_prints_one_error_document_on_bad_input_and_on_a_crash(tmp_path, monkeypatch) -> None:
    result = invoke("train", "--preset", "nope", "--json", "--out", tmp_path / "run")
    line = assert_one_line_error(result, 2, "unknown preset")
    assert json_document(result.stdout) == {"status": "error", "exit_code": 2, "message": line.removeprefix("error: ")}

    import fnostab.cli.train

    def crash(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(fnostab.cli.train, "build_run_config", crash)
    result = invoke("train", "--json")
    assert result.exit_code == 1 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: internal error: ZeroDivisionError: planted bug"
    assert json_document(result.stdout)["exit_code"] == 1


def test_options_that_expect_a_file_reject_a_directory_and_seeds_stay_in_numpy_bounds(tmp_path) -> None:
    assert_one_line_error(
        invoke("shootout", "--arms-file", tmp_path, "--out", tmp_path / "s"),
        2,
        "--arms-file expects a TOML file, found a directory",
    )
    assert_one_line_error(
        invoke("probe-activations", tmp_path / "x.npz", "--checkpoint", tmp_path),
        2,
        "--checkpoint expects a checkpoint file, found a directory",
    )
    # Lightning's seed_everything raises for a seed numpy cannot take: after config.json was written.
    assert_one_line_error(invoke("train", "--seed", str(2**32), "--out", tmp_path / "r"), 2, "--seed")
    # torch.set_num_threads raises past a C int (and crashes at exit with 100 000 threads).
    assert_one_line_error(invoke("train", "--threads", str(2**40), "--out", tmp_path / "r"), 2, "--threads")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_a_damaged_cache_entry_is_rebuilt_not_reported(tmp_path, monkeypatch) -> None:
    from fnostab.config import PRESETS, SimulationConfig
    from fnostab.data.cache import cached_dataset, load_cached_pair

    monkeypatch.setenv("FNOSTAB_CACHE", str(tmp_path / "cache"))
    config = SimulationConfig(**{**PRESETS["smoke"]["data"], "nimgs_train": 1, "object_size": 96})
    train, test = cached_dataset(config)
    with np.load(test) as npz:
        arrays = {k: v for k, v in npz.items() if k != "diffraction"}
    np.savez(test, **arrays)  # still a zip (the cheap completeness test passes), but not a test split
    loaded_train, loaded_test = load_cached_pair(config)
    assert loaded_test.diffraction.shape[0] == loaded_test.n > 0
    assert "diffraction" in np.load(test).files


# -------------------------------------------------------------------------------------------- documents
def _result_dir(tmp_path: Path, document: dict) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps(document))
    return run


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"training": "oops"}, "'training' expected an object, found 'oops'"),
        ({"metrics": {"amp_ssim": "high"}}, "'metrics.amp_ssim"),
        (
            {"status": "ok", "failure": {"status": "diverged", "reason": "x", "step": 1, "epoch": 0}},
            "'failure' must be null",
        ),
    ],
)
def test_summarize_names_the_wrong_key_of_a_result(change, key, tmp_path) -> None:
    from test_report import make_result

    run = _result_dir(tmp_path, {**make_result("control", 0), **change})
    assert_one_line_error(invoke("summarize", run), 2, str(run / "result.json"), key)
    assert not (run / "summary.json").exists()


def test_summarize_refuses_a_result_with_only_schema_and_status(tmp_path) -> None:
    run = _result_dir(tmp_path, {"schema": "fnostab.result/1", "status": "ok"})
    assert_one_line_error(invoke("summarize", run), 2, "is missing")  # was summarised as an arm "None/none"


def test_summarize_names_the_wrong_key_of_a_sweep_plan(tmp_path) -> None:
    from test_report import make_result, write_run

    write_run(tmp_path / "sweep" / "runs" / "control" / "seed-0", make_result("control", 0))
    (tmp_path / "sweep" / "sweep.json").write_text(
        json.dumps({"schema": "fnostab.sweep/1", "kind": "shootout", "arms": ["control"], "seeds": [0], "runs": []})
    )
    assert_one_line_error(invoke("summarize", tmp_path / "sweep"), 2, "sweep.json", "'arms' expected an object")


def test_a_damaged_result_in_a_sweep_is_rerun_not_trusted(tmp_path) -> None:
    from fnostab.config import DataSource, RunConfig
    from fnostab.experiments.store import RunSpec, check_resumable
    from fnostab.rundir import shootout_run_dir

    config = RunConfig(name="a", preset="smoke", data=DataSource(train=Path("t.npz"), test=Path("v.npz")))
    specs = [RunSpec("a", seed, config, shootout_run_dir("a", seed)) for seed in (0, 1)]
    for spec, text in zip(specs, ('{"schema": "fnostab.result/1", "status": "ok"}', "{ torn")):
        run = tmp_path / spec.relative_dir
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(config.to_json_dict()))
        (run / "result.json").write_text(text)
    finished, to_run = check_resumable(tmp_path, specs)
    assert finished == [] and to_run == specs
    assert not (tmp_path / specs[0].relative_dir).exists()


# ------------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_help_text_is_printed_whole(name) -> None:
    import typer.main

    command = typer.main.get_command(app).commands[name]
    result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert result.exit_code == 0
    shown = " ".join(result.stdout.split())
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            assert " ".join(text.replace("\\[", "[").split()) in shown, (param.name, text)

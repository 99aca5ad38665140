"""The grid-lines simulator and its NPZ output (docs/data.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_usage_error, run_cli
from fnostab.config import MAX_NPHOTONS, PRESETS, SimulationConfig
from fnostab.data.cache import cached_dataset
from fnostab.data.npz import load_pair, load_split
from fnostab.data.probe import normalise_probe, synthetic_probe
from fnostab.data.simulate import ScanGrid, simulate, write_dataset

SMOKE = SimulationConfig(**PRESETS["smoke"]["data"])


def test_every_contract_key_has_its_dtype_and_shape(smoke_data) -> None:
    train_path, test_path = smoke_data
    S, N = SMOKE.object_size, SMOKE.N
    n_train = ((S - N) // SMOKE.stride_train + 1) ** 2
    n_test = ((S - N) // SMOKE.stride_test + 1) ** 2
    for path, n, extra in ((train_path, n_train, set()), (test_path, n_test, {"YY_ground_truth", "norm_Y_I"})):
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            assert (
                keys
                == {
                    "diffraction",
                    "Y_I",
                    "Y_phi",
                    "coords_offsets",
                    "coords_nominal",
                    "coords_true",
                    "probeGuess",
                    "probe_simulated",
                    "YY_full",
                    "_metadata",
                }
                | extra
            )
            for key in ("diffraction", "Y_I", "Y_phi"):
                assert f[key].dtype == np.float32 and f[key].shape == (n, N, N, 1), key
            for key in ("coords_offsets", "coords_nominal", "coords_true"):
                assert f[key].dtype == np.float32 and f[key].shape == (n, 1, 2, 1), key
            assert not f["coords_nominal"].any() and not f["coords_true"].any()
            for key in ("probeGuess", "probe_simulated"):
                assert f[key].dtype == np.complex64 and f[key].shape == (N, N)
            assert f["YY_full"].dtype == np.complex64 and f["YY_full"].shape == (1, S, S, 1)
            metadata = json.loads(str(f["_metadata"]))
            assert metadata["nphotons"] == SMOKE.nphotons and metadata["N"] == N and metadata["set_phi"]
            assert metadata["probe"]["source"] == "synthetic" and "seed" in metadata
            if "YY_ground_truth" in extra:
                L = (S - N) // SMOKE.stride_test * SMOKE.stride_test + SMOKE.stride_test
                assert f["YY_ground_truth"].shape == (1, L, L, 1)
                assert f["norm_Y_I"].shape == () and f["norm_Y_I"] > 0


def test_same_seed_gives_byte_identical_arrays_and_another_seed_does_not() -> None:
    config = SimulationConfig(N=32, object_size=96, seed=7)
    first, second = simulate(config), simulate(config)
    other = simulate(config.model_copy(update={"seed": 8}))
    for a, b, c in zip(first, second, other):
        for key in a.arrays:
            assert a.arrays[key].tobytes() == b.arrays[key].tobytes(), key
        assert a.arrays["diffraction"].tobytes() != c.arrays["diffraction"].tobytes()


def test_train_and_test_objects_come_from_different_random_streams() -> None:
    train, test = simulate(SimulationConfig(N=32, object_size=96, seed=1))
    assert not np.array_equal(train.arrays["YY_full"], test.arrays["YY_full"])


def test_grid_counts_and_centres_follow_the_scan() -> None:
    grid = ScanGrid(size=392, N=64, stride=4)
    assert grid.steps == 83  # 6,889 patches per train image, as in PtychoPINN
    assert ScanGrid(392, 64, 10).steps == 33 and ScanGrid(392, 128, 4).steps == 67
    centres = grid.centres(n_images=2)
    assert centres.shape == (2 * 83 * 83, 2)
    np.testing.assert_array_equal(centres[0], [31.5, 31.5])
    np.testing.assert_array_equal(centres[1], [31.5, 35.5])


def test_patches_are_normalised_object_windows_and_phase_follows_set_phi() -> None:
    config = SimulationConfig(N=32, object_size=96, stride_train=16, seed=2)
    train, _ = simulate(config)
    objects = train.arrays["YY_full"][..., 0]
    norm = train.metadata["norm_Y_I"]
    window = objects[0, 16:48, 32:64] / norm  # patch (row 1, col 2) of the stride-16 grid
    index = 1 * ScanGrid(96, 32, 16).steps + 2
    probe = train.arrays["probe_simulated"]
    np.testing.assert_allclose(train.arrays["Y_I"][index, ..., 0], np.abs(window * probe), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(train.arrays["Y_phi"][index, ..., 0], np.angle(window), atol=1e-6)
    amplitude = np.abs(objects)
    expected_phase = np.pi * np.tanh((amplitude - amplitude.max() / 2) / (3 * amplitude.mean()))
    np.testing.assert_allclose(np.angle(objects), expected_phase, atol=1e-5)

    flat, _ = simulate(config.model_copy(update={"set_phi": False}))
    assert not flat.arrays["Y_phi"].any()


def test_ground_truth_is_the_region_covered_by_the_stitched_test_crops(smoke_data) -> None:
    _, test = load_pair(*smoke_data)
    b = (SMOKE.N - SMOKE.stride_test) // 2
    L = test.ground_truth.shape[-1]
    np.testing.assert_array_equal(test.ground_truth, test.full_objects[:, b : b + L, b : b + L])


def test_probe_is_normalised_like_ptychopinn() -> None:
    guess = synthetic_probe(32)
    assert np.abs(guess).max() == pytest.approx(1.0)
    simulated = normalise_probe(guess)
    coords = np.arange(32) - 16
    disk = coords[:, None] ** 2 + coords[None, :] ** 2 <= 8**2
    assert np.abs(simulated * disk).mean() == pytest.approx(0.25, rel=1e-5)


def test_user_probe_replaces_the_synthetic_one_through_the_cli(tmp_path) -> None:
    rng = np.random.default_rng(0)
    probe = (rng.normal(size=(32, 32)) + 1j * rng.normal(size=(32, 32))).astype(np.complex64)
    np.savez(tmp_path / "probe.npz", probeGuess=probe)
    out = tmp_path / "data"
    result = run_cli("simulate", "--preset", "smoke", "--probe", tmp_path / "probe.npz", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["probe"] == str(tmp_path / "probe.npz")
    with np.load(out / "train.npz") as f:
        np.testing.assert_array_equal(f["probeGuess"], probe)
        np.testing.assert_allclose(f["probe_simulated"], normalise_probe(probe))


def test_a_user_probe_dark_in_the_centre_exits_2_and_writes_nothing(tmp_path) -> None:
    coords = np.arange(32) - 16
    ring = (coords[:, None] ** 2 + coords[None, :] ** 2 > 8**2).astype(np.complex64)  # nothing in the N/4 disk
    np.savez(tmp_path / "off.npz", probeGuess=ring)
    out = tmp_path / "data"
    result = run_cli("simulate", "--preset", "smoke", "--probe", tmp_path / "off.npz", "--out", out)
    assert_clean_usage_error(
        result, str(tmp_path / "off.npz"), "key 'probeGuess'", "central disk", "found mean |P| = 0"
    )
    assert not out.exists()


def test_the_largest_allowed_photon_count_simulates_the_smoke_preset(tmp_path) -> None:
    out = tmp_path / "data"
    result = run_cli("simulate", "--preset", "smoke", "--nphotons", str(MAX_NPHOTONS), "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # Poisson noise at 1e15 counts is ~3e-8 relative: the mean count is nphotons to float precision.
    assert summary["train"]["mean_total_counts"] == pytest.approx(MAX_NPHOTONS, rel=1e-5)
    train, test = load_pair(out / "train.npz", out / "test.npz")
    assert np.isfinite(train.diffraction).all() and np.isfinite(test.diffraction).all()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--N", "48"], ["--N", "32, 64, 128", "48"]),
        (["--nimgs-train", "0"], ["--nimgs-train", "greater than or equal to 1"]),
        (["--nphotons", "-5"], ["--nphotons", "greater than 0"]),
        (["--nphotons", "1e30"], ["--nphotons", "at most 1e+15", "got 1e+30"]),
        (["--stride-test", "40"], ["stride_test 40", "larger than N 32"]),
        (["--object-size", "20"], ["object_size 20", "smaller than N 32"]),
        (["--preset", "huge"], ["unknown preset 'huge'", "smoke, cpu, paper"]),
    ],
)
def test_bad_simulation_options_exit_2_and_write_nothing(tmp_path, args, fragments) -> None:
    out = tmp_path / "out"
    result = run_cli("simulate", "--preset", "smoke", "--out", out, *args)
    assert_clean_usage_error(result, *fragments)
    assert not out.exists()


def test_simulate_refuses_to_overwrite_without_force(tmp_path) -> None:
    out = tmp_path / "out"
    assert run_cli("simulate", "--preset", "smoke", "--out", out, "--quiet").returncode == 0
    before = (out / "train.npz").stat().st_mtime_ns
    assert_clean_usage_error(run_cli("simulate", "--preset", "smoke", "--out", out), "already exists", "--force")
    assert (out / "train.npz").stat().st_mtime_ns == before
    assert run_cli("simulate", "--preset", "smoke", "--out", out, "--force", "--seed", "3").returncode == 0
    assert (out / "train.npz").stat().st_mtime_ns != before


def test_force_refuses_to_replace_a_directory_named_like_a_split(tmp_path) -> None:
    (tmp_path / "out" / "test.npz").mkdir(parents=True)
    result = run_cli("simulate", "--preset", "smoke", "--out", tmp_path / "out", "--force")
    assert_clean_usage_error(result, str(tmp_path / "out" / "test.npz"), "expected a file", "found a directory")
    assert not (tmp_path / "out" / "train.npz").exists()


def _seeds(out: Path) -> dict[str, int]:
    seeds = {}
    for name in ("train.npz", "test.npz"):
        if (out / name).exists():
            with np.load(out / name, allow_pickle=False) as f:
                seeds[name] = json.loads(str(f["_metadata"]))["seed"]
    return seeds


@pytest.mark.parametrize("moment", ["while writing test.npz", "between moving train.npz and test.npz in"])
def test_an_interrupted_rewrite_never_leaves_a_new_train_beside_an_old_test(moment, tmp_path, monkeypatch) -> None:
    config = SimulationConfig(N=32, object_size=64, seed=1)
    out = tmp_path / "data"
    write_dataset(*simulate(config), out)
    new = simulate(config.model_copy(update={"seed": 2}))
    real_replace = os.replace

    def interrupted(src, dst):
        dst = Path(dst)
        if dst.name == "test.npz" and (moment.startswith("while") or dst == out / "test.npz"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(*new, out)
    monkeypatch.undo()
    seeds = _seeds(out)
    assert seeds in ({"train.npz": 1, "test.npz": 1}, {"train.npz": 2}), seeds  # old pair, or no pair
    assert sorted(p.name for p in out.iterdir()) == sorted(seeds), "staging files left behind"
    write_dataset(*new, out)
    assert _seeds(out) == {"train.npz": 2, "test.npz": 2}


def test_a_damaged_cache_entry_is_rebuilt_instead_of_failing_every_call(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FNOSTAB_CACHE", str(tmp_path / "cache"))
    config = SimulationConfig(N=32, object_size=64, seed=4)
    train, test = cached_dataset(config)
    expected = load_split(test).diffraction
    test.unlink()
    assert cached_dataset(config) == (train, test)
    np.testing.assert_array_equal(load_split(test).diffraction, expected)
    train.write_bytes(train.read_bytes()[:1000])  # truncated
    cached_dataset(config)
    load_pair(train, test)
    assert [p.name for p in train.parent.parent.iterdir()] == [train.parent.name], "damaged copies left behind"


def test_json_output_is_one_document_on_stdout(tmp_path) -> None:
    result = run_cli("simulate", "--preset", "smoke", "--out", tmp_path / "d", "--json")
    assert result.returncode == 0
    summary = json.loads(result.stdout)
    assert summary["train"]["patches"] == 289 and summary["test"]["patches"] == 169
    assert "simulating" in result.stderr


def test_noise_floor_is_the_loss_of_the_true_object_computed_independently(smoke_data) -> None:
    """The floor in _metadata against numpy alone: windows of YY_full, P, FFT, the two loss formulas."""
    for path in smoke_data:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(f["_metadata"].item())
            objects, probe = f["YY_full"][..., 0].astype(np.complex128), f["probe_simulated"].astype(np.complex128)
            measured = f["diffraction"][..., 0].astype(np.float64)
        N, stride = SMOKE.N, meta["stride"]
        patches = (
            np.stack(
                [
                    objects[0, r : r + N, c : c + N]
                    for r in range(0, SMOKE.object_size - N + 1, stride)
                    for c in range(0, SMOKE.object_size - N + 1, stride)
                ]
            )
            / meta["norm_Y_I"]
        )
        true = np.abs(np.fft.fftshift(np.fft.fft2(patches * probe), axes=(-2, -1))) / N
        mae = np.abs(true - measured).mean() / measured.mean()
        rate, counts = true**2 + 1e-8, measured**2
        with np.errstate(divide="ignore", invalid="ignore"):
            deviance = rate - counts + np.where(counts > 0, counts * np.log(counts / rate), 0.0)
        poisson = deviance.mean() / counts.mean()
        assert meta["noise_floor"]["mae"] == pytest.approx(mae, rel=1e-6)
        assert meta["noise_floor"]["poisson"] == pytest.approx(poisson, rel=1e-6)
        # 1e9 photons: the shot noise of the amplitude is tiny, and the floor shows it.
        assert 1e-4 < meta["noise_floor"]["mae"] < 1e-2
        # Validation averages per-batch losses (batches of 64); the whole-split floor is within 1% of that.
        batches = [
            np.abs(t - m).mean() / m.mean() * len(t)
            for t, m in zip(
                np.array_split(true, range(64, len(true), 64)), np.array_split(measured, range(64, len(true), 64))
            )
        ]
        assert sum(batches) / len(true) == pytest.approx(mae, rel=1e-2)

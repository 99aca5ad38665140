"""The NPZ data contract: what loads, and a clear exit-2 error for every violation (docs/data.md)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, assert_clean_usage_error, run_cli
from fnostab.data.npz import load_pair, load_split, write_npz
from fnostab.errors import InputError


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def test_patch_arrays_load_with_or_without_the_channel_axis(smoke_data, tmp_path) -> None:
    arrays = _arrays(smoke_data[0])
    np.savez(
        tmp_path / "flat.npz",
        **{k: (v[..., 0] if k in ("diffraction", "Y_I", "Y_phi") else v) for k, v in arrays.items()},
    )
    with_channel, without = load_split(smoke_data[0]), load_split(tmp_path / "flat.npz")
    assert with_channel.diffraction.shape == without.diffraction.shape == (289, 1, 32, 32)
    np.testing.assert_array_equal(with_channel.diffraction, without.diffraction)


def test_a_file_with_only_diffraction_is_enough_for_probes(tmp_path) -> None:
    np.savez(tmp_path / "tiny.npz", diffraction=np.random.rand(2, 16, 16).astype(np.float32))
    split = load_split(tmp_path / "tiny.npz")
    assert (split.n, split.N, split.probe, split.centres) == (2, 16, None, None)


def test_a_probe_guess_without_probe_simulated_is_normalised_like_the_simulator(smoke_data, tmp_path) -> None:
    arrays = _arrays(smoke_data[0])
    del arrays["probe_simulated"]
    np.savez(tmp_path / "guess.npz", **arrays)
    np.testing.assert_allclose(load_split(tmp_path / "guess.npz").probe, load_split(smoke_data[0]).probe, rtol=1e-6)


def test_a_ptychopinn_ground_truth_of_shape_l_l_1_is_one_image(smoke_data, tmp_path) -> None:
    arrays = _arrays(smoke_data[1])
    L = arrays["YY_ground_truth"].shape[1]
    arrays["YY_ground_truth"] = arrays["YY_ground_truth"][0]  # (L, L, 1), as PtychoPINN's test files hold it
    np.savez(tmp_path / "test.npz", **arrays)
    truth = load_split(tmp_path / "test.npz").ground_truth
    assert truth.shape == (1, L, L)
    np.testing.assert_array_equal(truth, load_split(smoke_data[1]).ground_truth)


def test_stride_is_inferred_from_centres_when_metadata_is_missing(smoke_data, tmp_path) -> None:
    arrays = _arrays(smoke_data[1])
    del arrays["_metadata"]
    np.savez(tmp_path / "test.npz", **arrays)
    assert load_split(tmp_path / "test.npz").stride() == 10


def test_pickle_is_never_loaded(tmp_path) -> None:
    np.savez(tmp_path / "obj.npz", diffraction=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="pickled object array"):
        load_split(tmp_path / "obj.npz")


# ------------------------------------------------------------------- every violation, via the CLI
def _write_variant(tmp_path: Path, source: Path, name: str, change) -> Path:
    arrays = _arrays(source)
    change(arrays)
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _drop(key):
    return lambda a: a.pop(key)


def _set(key, value_fn):
    def change(arrays):
        arrays[key] = value_fn(arrays[key])

    return change


def _poison(key, value):
    """Put ``value`` into the first element of ``arrays[key]``."""

    def change(arrays):
        array = arrays[key].copy()
        array.reshape(-1)[0] = value
        arrays[key] = array

    return change


def _set_metadata(**updates):
    def change(arrays):
        metadata = json.loads(str(arrays["_metadata"]))
        metadata.update(updates)
        arrays["_metadata"] = np.array(json.dumps(metadata))

    return change


def _dark_centre(probe: np.ndarray) -> np.ndarray:
    """A probe lit only outside the disk of radius N/4 that PtychoPINN's normalisation averages over."""
    coords = np.arange(probe.shape[0]) - probe.shape[0] // 2
    outside = coords[:, None] ** 2 + coords[None, :] ** 2 > (probe.shape[0] / 4) ** 2
    return outside.astype(np.complex64)


BAD_TRAIN_FILES = {
    "missing key": (_drop("diffraction"), ["missing key 'diffraction'", "keys present"]),
    "missing probe": (
        lambda a: (a.pop("probe_simulated"), a.pop("probeGuess")),
        ["missing key 'probe_simulated' or 'probeGuess'"],
    ),
    "wrong rank": (
        _set("diffraction", lambda d: d[..., 0, 0]),
        ["key 'diffraction'", "expected shape (n, N, N)", "(289, 32)"],
    ),
    "empty": (_set("diffraction", lambda d: d[:0]), ["key 'diffraction'", "non-empty", "(0, 32, 32, 1)"]),
    "nan": (
        _set("diffraction", lambda d: np.where(np.arange(d.size).reshape(d.shape) == 7, np.nan, d).astype(np.float32)),
        ["key 'diffraction'", "NaN or inf"],
    ),
    "inf": (
        _set("Y_I", lambda d: np.where(np.arange(d.size).reshape(d.shape) == 3, np.inf, d).astype(np.float32)),
        ["key 'Y_I'", "NaN or inf"],
    ),
    "negative": (_set("diffraction", lambda d: d - 1.0), ["key 'diffraction'", "non-negative", "minimum"]),
    "probe shape": (_set("probe_simulated", lambda p: p[:16, :16]), ["key 'probe_simulated'", "(32, 32)", "(16, 16)"]),
    "Y_I mismatch": (_set("Y_I", lambda d: d[:10]), ["key 'Y_I'", "289 patches", "(10, 32, 32, 1)"]),
    "pickled": (_set("Y_phi", lambda d: np.array([object()], dtype=object)), ["key 'Y_phi'", "pickled object array"]),
    "probe guess dark in the centre": (
        lambda a: (a.pop("probe_simulated"), a.update(probeGuess=_dark_centre(a["probeGuess"]))),
        ["key 'probeGuess'", "central disk", "found mean |P| = 0"],
    ),
}

# Keys that only a test split carries (YY_ground_truth, norm_Y_I) are checked the same way.
BAD_TEST_FILES = {
    "centre NaN": (_poison("coords_offsets", np.nan), ["key 'coords_offsets'", "finite centres", "NaN or inf"]),
    "centres as text": (
        _set("coords_offsets", lambda c: np.full(c.shape, "north")),
        ["key 'coords_offsets'", "expected real (row, col) centres", "dtype <U5"],
    ),
    "ground truth NaN": (_poison("YY_ground_truth", np.nan), ["key 'YY_ground_truth'", "NaN or inf"]),
    "full object inf": (_poison("YY_full", np.inf), ["key 'YY_full'", "NaN or inf"]),
    "ground truth not square": (
        _set("YY_ground_truth", lambda t: t[:, :, :-1]),
        ["key 'YY_ground_truth'", "expected square L×L images", "found shape (1, 130, 129, 1)"],
    ),
    "ground truth as text": (
        _set("YY_ground_truth", lambda t: np.full(t.shape, "x")),
        ["key 'YY_ground_truth'", "expected a complex array", "dtype <U1"],
    ),
    "norm_Y_I as text": (_set("norm_Y_I", lambda v: np.array("large")), ["key 'norm_Y_I'", "dtype <U5"]),
    "stride 0 in metadata": (_set_metadata(stride=0), ["key '_metadata'", "'stride'", "positive integer", "found 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_FILES))
def test_bad_train_file_exits_2_names_the_problem_and_writes_nothing(case, smoke_data, tmp_path) -> None:
    change, fragments = BAD_TRAIN_FILES[case]
    bad = _write_variant(tmp_path, smoke_data[0], "train.npz", change)
    out = tmp_path / "run"
    result = run_cli("train", bad, smoke_data[1], "--preset", "smoke", "--out", out)
    assert_clean_usage_error(result, str(bad), *fragments)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(BAD_TEST_FILES))
def test_bad_test_file_exits_2_names_the_problem_and_writes_nothing(case, smoke_data, tmp_path) -> None:
    change, fragments = BAD_TEST_FILES[case]
    bad = _write_variant(tmp_path, smoke_data[1], "test.npz", change)
    out = tmp_path / "run"
    result = run_cli("train", smoke_data[0], bad, "--preset", "smoke", "--out", out)
    assert_clean_usage_error(result, str(bad), *fragments)
    assert not out.exists()


def test_a_zip_member_that_is_not_a_npy_array_exits_2(smoke_data, tmp_path) -> None:
    arrays = _arrays(smoke_data[0])
    del arrays["diffraction"]
    bad = tmp_path / "train.npz"
    np.savez(bad, **arrays)
    with zipfile.ZipFile(bad, "a") as archive:
        archive.writestr("diffraction.npy", "not an array")  # np.load returns such a member as bytes
    out = tmp_path / "run"
    result = run_cli("train", bad, smoke_data[1], "--preset", "smoke", "--out", out)
    assert_clean_usage_error(result, str(bad), "member 'diffraction'", "expected a .npy array", "found 12 bytes")
    assert not out.exists()


def test_missing_not_npz_truncated_and_corrupt_files_exit_2(smoke_data, tmp_path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("not numbers")
    npy = tmp_path / "array.npz"
    with npy.open("wb") as handle:
        np.save(handle, np.zeros(3))
    payload = smoke_data[0].read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(payload[: len(payload) // 2])
    corrupt = tmp_path / "corrupt.npz"
    scrambled = bytearray(payload)
    scrambled[2000:6000] = bytes(4000)  # inside the first member's data, past its header
    corrupt.write_bytes(bytes(scrambled))
    cases = [
        (tmp_path / "absent.npz", ["file not found"]),
        (tmp_path, ["expected an NPZ file"]),
        (text, ["not an NPZ file"]),
        (npy, ["not an NPZ file", ".npy"]),
        (truncated, ["truncated or corrupt"]),
        (corrupt, ["truncated or corrupt"]),
    ]
    # Every case through the loader; two of them also through the CLI (a subprocess costs seconds), for
    # the exit-2 contract: one line, nothing written.
    for path, fragments in cases:
        with pytest.raises(InputError) as error:
            load_pair(path, smoke_data[1])
        assert str(path) in str(error.value) and all(f in str(error.value) for f in fragments), str(error.value)
    out = tmp_path / "run"
    for path, fragments in (cases[0], cases[-1]):
        result = run_cli("train", path, smoke_data[1], "--preset", "smoke", "--out", out)
        assert_clean_usage_error(result, str(path), *fragments)
        assert not out.exists()


def test_n_mismatch_between_train_and_test_exits_2(smoke_data, tmp_path) -> None:
    arrays = _arrays(smoke_data[1])
    for key in ("diffraction", "Y_I", "Y_phi"):
        arrays[key] = np.ascontiguousarray(arrays[key][:, :16, :16])
    arrays["probe_simulated"] = arrays["probe_simulated"][:16, :16]
    arrays["probeGuess"] = arrays["probeGuess"][:16, :16]
    np.savez(tmp_path / "test16.npz", **arrays)
    with pytest.raises(InputError, match="N mismatch"):
        load_pair(smoke_data[0], tmp_path / "test16.npz")
    result = run_cli("train", smoke_data[0], tmp_path / "test16.npz", "--preset", "smoke", "--out", tmp_path / "run")
    assert_clean_usage_error(result, "N mismatch", "32×32", "16×16")
    assert not (tmp_path / "run").exists()


def test_only_one_data_file_is_a_usage_error(smoke_data, tmp_path) -> None:
    result = run_cli("train", smoke_data[0], "--preset", "smoke", "--out", tmp_path / "run")
    assert_clean_usage_error(result, "TRAIN.npz and TEST.npz")


# ------------------------------------------------------------------------------- atomic writing
def test_written_files_get_the_umask_permissions_and_the_umask_is_never_touched(tmp_path) -> None:
    # A subprocess, so the umask and os.umask of the test process stay as they are.
    script = (
        "import os, sys\n"
        "os.umask(0o027)\n"
        "def refuse(mask):\n"
        "    raise AssertionError('fnostab changed the process umask')\n"
        "os.umask = refuse\n"
        "import numpy as np\n"
        "from fnostab.data.npz import write_npz\n"
        "write_npz(sys.argv[1], {'x': np.zeros(3)})\n"
        "print(oct(os.stat(sys.argv[1]).st_mode & 0o777))\n"
    )
    path = tmp_path / "data.npz"
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0o640"
    assert [p.name for p in tmp_path.iterdir()] == ["data.npz"]


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch) -> None:
    synced_directories = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            synced_directories.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_npz(tmp_path / "data.npz", {"x": np.zeros(3)})
    directory = tmp_path.stat()
    assert (directory.st_dev, directory.st_ino) in synced_directories

"""Gridsize 2: groups of overlapping patterns, the object_big forward model and stitching by positions.

The oracles are independent of the code under test: windows cut straight out of the stored full
object (YY_full) at the stored centres and offsets, the far field recomputed with numpy, and the
loss of the true object patches taken one pattern at a time (no grouping).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import assert_clean_usage_error, run_cli
from fnostab.config import PRESETS, SimulationConfig, TrainConfig
from fnostab.data.npz import load_pair, load_split
from fnostab.data.simulate import simulate, write_dataset
from fnostab.evaluation import ground_truth_region, stitch_patches
from fnostab.groups import GroupGeometry
from fnostab.models import build_generator, plan
from fnostab.physics import far_field_amplitude, far_field_amplitude_np, physics_loss, predicted_amplitude
from fnostab.training.module import PtychoModule

SMOKE2 = {**PRESETS["smoke"]["data"], "gridsize": 2}


@pytest.fixture(scope="module")
def gs2_clean(tmp_path_factory: pytest.TempPathFactory):
    """A nearly noise-free gridsize-2 data set (1e14 photons: relative Poisson noise ~1e-5 on bright pixels)."""
    out = tmp_path_factory.mktemp("gs2-clean")
    return write_dataset(*simulate(SimulationConfig(N=32, object_size=96, stride_train=8, stride_test=10,
                                                    nphotons=1e14, seed=3, gridsize=2)), out)  # fmt: skip


@pytest.fixture(scope="module")
def gs2_noisy(tmp_path_factory: pytest.TempPathFactory):
    """Gridsize 2 at 1e4 photons per pattern: a loss floor well above zero."""
    out = tmp_path_factory.mktemp("gs2-noisy")
    return write_dataset(*simulate(SimulationConfig(**{**SMOKE2, "object_size": 96, "nphotons": 1e4})), out)


@pytest.fixture(scope="module")
def gs2_smoke(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("gs2-smoke")
    return write_dataset(*simulate(SimulationConfig(**SMOKE2)), out)


def true_member_patches(split) -> np.ndarray:
    """(n, C, N, N) true object patches, normalised, cut from YY_full at centre + relative offset."""
    meta, N = split.metadata, split.N
    offsets = split.groups.relative_offsets.astype(np.float64)
    per_image = split.n // split.n_images
    out = np.empty((split.n, split.channels, N, N), np.complex64)
    for i, centre in enumerate(split.centres):
        image = split.full_objects[i // per_image]
        for k, rel in enumerate(offsets):
            top = np.rint(centre + rel - (N - 1) / 2).astype(int)
            out[i, k] = image[top[0] : top[0] + N, top[1] : top[1] + N]
    return out / np.float32(meta["norm_Y_I"])


# ------------------------------------------------------------------------------------------ data
def test_gs2_npz_layout_counts_and_metadata(gs2_smoke) -> None:
    train_path, test_path = gs2_smoke
    with np.load(train_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    M = 32 + 4  # N + (g − 1)·offset
    steps = (160 - M) // 8 + 1
    n = steps**2
    for key in ("diffraction", "Y_I", "Y_phi"):
        assert arrays[key].shape == (n, 32, 32, 4), key
    assert arrays["coords_offsets"].shape == (n, 1, 2, 1)
    assert arrays["coords_nominal"].shape == arrays["coords_true"].shape == (n, 1, 2, 4)
    # member k = i·2 + j sits at ((i − ½)·4, (j − ½)·4) from its group centre, in every group
    expected = np.array([[-2, -2], [-2, 2], [2, -2], [2, 2]], np.float32).T
    assert np.array_equal(arrays["coords_nominal"][:, 0], np.broadcast_to(expected, (n, 2, 4)))
    # group centres: the mean pixel index of M×M windows at stride 8
    corners = np.arange(steps) * 8 + (M - 1) / 2
    assert np.array_equal(np.unique(arrays["coords_offsets"][:, 0, 0, 0]), corners)
    meta = json.loads(str(arrays["_metadata"]))
    assert (meta["gridsize"], meta["offset"], meta["window"], meta["n_patches"], meta["n_patterns"]) == (
        2,
        4,
        M,
        n,
        4 * n,
    )
    test = load_split(test_path)
    test_steps = (160 - M) // 10 + 1
    assert test.ground_truth.shape == (1, 10 * test_steps, 10 * test_steps)


def test_every_channel_is_the_far_field_of_its_own_window(gs2_clean) -> None:
    split = load_split(gs2_clean[0], require=("Y_I", "Y_phi", "YY_full", "probe_simulated"))
    assert split.channels == 4 and split.gridsize == 2
    patches = true_member_patches(split)
    psi = patches * split.probe
    amplitude = far_field_amplitude_np(psi)
    for k in range(4):
        error = np.abs(amplitude[:, k] - split.diffraction[:, k]).max() / split.diffraction[:, k].max()
        assert error < 1e-4, (k, error)
        assert np.allclose(np.abs(psi[:, k]), split.Y_I[:, k], rtol=1e-5, atol=1e-6)
    # the four channels are different windows: a neighbour's far field does not fit
    swapped = np.abs(amplitude[:, 1] - split.diffraction[:, 0]).max() / split.diffraction[:, 0].max()
    assert swapped > 1e-2


def test_loaders_reject_a_train_test_gridsize_mismatch(smoke_data, gs2_smoke, tmp_path) -> None:
    with pytest.raises(ValueError, match="gridsize mismatch"):
        load_pair(smoke_data[0], gs2_smoke[1])
    result = run_cli("train", smoke_data[0], gs2_smoke[1], "--preset", "smoke", "--out", tmp_path / "run")
    assert_clean_usage_error(result, "gridsize mismatch", "gridsize 1", "gridsize 2 (4 channels, offset 4 px)")
    assert not (tmp_path / "run").exists()
    asked = run_cli("train", *gs2_smoke, "--preset", "smoke", "--gridsize", "1", "--out", tmp_path / "run")
    assert_clean_usage_error(asked, "the run asks for gridsize 1", "holds gridsize 2")
    assert not (tmp_path / "run").exists()


def test_offsets_that_are_not_a_group_are_rejected(gs2_smoke, tmp_path) -> None:
    with np.load(gs2_smoke[0]) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["coords_nominal"] = arrays["coords_nominal"][..., [1, 0, 2, 3]]  # not row-major any more
    np.savez(tmp_path / "train.npz", **arrays)
    with pytest.raises(ValueError, match="row-major"):
        load_split(tmp_path / "train.npz")


# ------------------------------------------------------------------------------------ reassembly
def test_reassembly_of_true_patches_reproduces_the_true_region_exactly(gs2_clean) -> None:
    split = load_split(gs2_clean[0])
    groups = split.groups
    M = groups.window
    true_windows = np.stack([
        split.full_objects[0][int(r) : int(r) + M, int(c) : int(c) + M]
        for r, c in np.rint(split.centres - (M - 1) / 2)
    ]) / np.float32(split.metadata["norm_Y_I"])  # fmt: skip
    patches = torch.from_numpy(true_member_patches(split))
    region = groups.reassemble(patches).numpy()
    assert region.shape == (split.n, M, M)
    assert np.allclose(region, true_windows, rtol=1e-6, atol=1e-7)
    assert np.allclose(groups.reassemble_np(patches.numpy()), true_windows, rtol=1e-6, atol=1e-7)
    assert torch.allclose(groups.enforce_overlap(patches), patches, rtol=1e-6, atol=1e-7)


def test_overlap_enforcement_is_the_orthogonal_projection_onto_consistent_patches() -> None:
    groups = GroupGeometry(8, 2, 3)
    assert groups.window == 11 and groups.coverage.min() == 1 and groups.coverage.max() == 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, 8, 8, generator=gen, dtype=torch.complex64)
    y = torch.randn(5, 4, 8, 8, generator=gen, dtype=torch.complex64)
    px, py = groups.enforce_overlap(x), groups.enforce_overlap(y)
    assert torch.allclose(groups.enforce_overlap(px), px, atol=1e-6)  # idempotent
    inner = torch.vdot((x - px).flatten(), py.flatten())  # residual ⟂ the consistent subspace
    assert abs(inner) < 1e-4 * x.abs().square().sum()
    # a pixel covered by all four members: the projection is their mean there
    centre = (4, 4)  # inside all four windows at corners (0,0), (0,3), (3,0), (3,3)
    values = [x[:, k, centre[0] - r, centre[1] - c] for k, (r, c) in enumerate(groups.corners)]
    assert torch.allclose(px[:, 0, 4, 4], torch.stack(values).mean(0), atol=1e-6)


def test_stitching_at_gridsize_2_reproduces_the_ground_truth_from_true_patches(gs2_clean) -> None:
    test = load_split(gs2_clean[1])
    windows = test.groups.reassemble_np(true_member_patches(test))
    stitched = stitch_patches(windows, test.centres, test.stride(), test.n_images) * np.float32(test.norm_Y_I)
    assert stitched.shape == test.ground_truth.shape
    assert np.allclose(stitched, test.ground_truth, rtol=1e-5, atol=1e-6)
    region = ground_truth_region(test.full_objects, test.centres, test.groups.window, test.stride())
    assert np.array_equal(region, test.ground_truth)


# ------------------------------------------------------------------------------ forward model, loss
class TruePatches(torch.nn.Module):
    """A 'generator' that returns the true object patches of the samples it is fed, in order."""

    def __init__(self, patches: np.ndarray) -> None:
        super().__init__()
        self.patches = torch.from_numpy(patches)
        self.cursor = 0
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.patches[self.cursor : self.cursor + x.shape[0]]
        self.cursor += x.shape[0]
        return out


@pytest.mark.parametrize("loss", ["mae", "poisson"])
def test_true_patches_through_the_gs2_forward_model_give_the_noise_floor(gs2_noisy, loss) -> None:
    split = load_split(gs2_noisy[0])
    patches = true_member_patches(split)
    data = torch.from_numpy(split.diffraction)
    probe = torch.from_numpy(split.probe)
    # the floor: every true patch on its own against its own pattern, no grouping involved
    floor = float(physics_loss(loss, far_field_amplitude(torch.from_numpy(patches) * probe), data))
    assert floor > 0.01  # 1e4 photons: the noise makes the floor clearly non-zero
    assert split.noise_floor(loss) == pytest.approx(floor, rel=1e-4)  # what simulate recorded

    module = PtychoModule(TruePatches(patches), split.probe, TrainConfig(loss=loss), split.groups)
    value, _ = module._loss(data)
    assert float(value) == pytest.approx(floor, rel=1e-5)


def test_the_forward_model_couples_the_members_through_their_overlaps(gs2_noisy) -> None:
    split = load_split(gs2_noisy[0])
    patches = true_member_patches(split)
    patches[:, 0] = 0  # member 0 predicts nothing; members 1–3 stay true
    data = torch.from_numpy(split.diffraction)
    probe = torch.from_numpy(split.probe)
    alone = far_field_amplitude(torch.from_numpy(patches) * probe)
    grouped = predicted_amplitude(torch.from_numpy(patches), probe, split.groups)
    # without grouping member 1 keeps its floor; grouped, the empty member 0 darkens their overlap
    floor_1 = float(physics_loss("mae", alone[:, 1], data[:, 1]))
    assert float(physics_loss("mae", grouped[:, 1], data[:, 1])) > 2 * floor_1
    assert float(physics_loss("mae", grouped[:, 0], data[:, 0])) < float(physics_loss("mae", alone[:, 0], data[:, 0]))


def test_predicted_amplitude_without_groups_is_per_pattern() -> None:
    groups = GroupGeometry(8, 2, 3)
    gen = torch.Generator().manual_seed(1)
    obj = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.complex64)
    probe = torch.randn(8, 8, generator=gen, dtype=torch.complex64)
    assert torch.equal(predicted_amplitude(obj, probe), far_field_amplitude(obj * probe))
    assert not torch.allclose(predicted_amplitude(obj, probe, groups), far_field_amplitude(obj * probe))


# ------------------------------------------------------------------------------------- generators
@pytest.mark.parametrize("arch", ["fno", "hybrid", "stable_hybrid"])
@pytest.mark.parametrize("head", ["real_imag", "amp_phase"])
def test_generators_take_and_give_c_channels(arch, head) -> None:
    torch.manual_seed(0)
    model = build_generator(arch, N=16, width=4, modes=4, fno_blocks=2, head=head, channels=4)
    out = model(torch.rand(3, 4, 16, 16))
    assert out.shape == (3, 4, 16, 16) and out.dtype == torch.complex64
    # the plan counts the same parameters as the built model (head: 2C outputs, lifter: C inputs)
    counted = plan(arch, batch_size=2, N=16, width=4, modes=4, fno_blocks=2, head=head, channels=4)
    assert counted.params == sum(p.numel() for p in model.parameters())
    single = plan(arch, batch_size=2, N=16, width=4, modes=4, fno_blocks=2, head=head)
    # lifter's first conv: 9·h more weights per extra input channel; head: one 1×1 conv per output part
    assert counted.params - single.params == 3 * 9 * 4 + 3 * 2 * (4 + 1)


# ------------------------------------------------------------------------------------------- CLI
def test_train_gridsize_2_end_to_end_records_it(tmp_path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("train", "--preset", "smoke", "--gridsize", "2", "--out", run_dir, "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads((run_dir / "result.json").read_text())
    assert document["status"] == "ok"
    assert (document["data"]["gridsize"], document["data"]["channels"], document["data"]["offset"]) == (2, 4, 4)
    metrics = document["metrics"]
    assert metrics is not None and np.isfinite(metrics["amp_ssim"]) and "baseline" in metrics
    with np.load(run_dir / "reconstruction.npz") as npz:
        assert npz["reconstruction"].shape == npz["ground_truth"].shape == (1, 130, 130)
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert payload["gridsize"] == 2
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["simulation"]["gridsize"] == 2

    # a gridsize-2 checkpoint cannot be probed on gridsize-1 data, and says why
    cache_train = document["data"]["train"]
    ok = run_cli("grad-gain", cache_train, "--run", run_dir, "--out", tmp_path / "gain", "--batches", "1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["data"]["gridsize"] == 2
    smoke1 = tmp_path / "gs1"
    assert run_cli("simulate", "--preset", "smoke", "--object-size", "64", "--out", smoke1).returncode == 0
    refused = run_cli("probe-activations", smoke1 / "train.npz", "--run", run_dir, "--out", tmp_path / "act")
    assert_clean_usage_error(refused, "trained at gridsize 2", "gridsize 1")


def test_stress_plan_at_gridsize_2_counts_c_channels() -> None:
    one = run_cli("stress", "--preset", "smoke", "--depths", "2", "--arm", "control", "--plan-only", "--json")
    two = run_cli(
        "stress", "--preset", "smoke", "--gridsize", "2", "--depths", "2", "--arm", "control", "--plan-only", "--json"
    )
    assert one.returncode == two.returncode == 0, (one.stderr, two.stderr)
    p1, p2 = json.loads(one.stdout), json.loads(two.stdout)
    assert (p1["gridsize"], p2["gridsize"]) == (1, 2)
    width = PRESETS["smoke"]["model"]["width"]
    assert p2["plans"][0]["params"] - p1["plans"][0]["params"] == 3 * 9 * width + 3 * 2 * (width + 1)


def test_simulate_rejects_a_bad_gridsize_and_an_offset_without_overlap(tmp_path) -> None:
    assert_clean_usage_error(
        run_cli("simulate", "--preset", "smoke", "--gridsize", "3", "--out", tmp_path / "a"), "--gridsize"
    )
    assert_clean_usage_error(
        run_cli("simulate", "--preset", "smoke", "--gridsize", "2", "--offset", "32", "--out", tmp_path / "b"),
        "offset 32",
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class _ConstantPerChannel(torch.nn.Module):
    """A collapsed gridsize-2 generator: each of the C output patches is one constant, a different one per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        levels = torch.arange(1, patterns.shape[1] + 1, dtype=patterns.dtype).view(1, -1, 1, 1)
        real = patterns * 0 * self.weight + 0.3 * levels
        return torch.complex(real, torch.zeros_like(real))


def test_a_generator_with_one_constant_per_channel_is_collapsed(gs2_smoke, tmp_path) -> None:
    from fnostab.config import DataSource, ModelConfig, RunConfig
    from fnostab.training.runner import prepare_run, run_training

    config = RunConfig(
        data=DataSource(train=gs2_smoke[0], test=gs2_smoke[1]),
        model=ModelConfig(arch="hybrid", width=8, modes=8, fno_blocks=2),
        train=TrainConfig(epochs=1, batch_size=16, seed=0, threads=1),
    )
    result = run_training(prepare_run(config), tmp_path / "run", generator=_ConstantPerChannel())
    assert result["status"] == "collapsed" and "constant-amplitude" in result["failure"]["reason"]

"""Read, validate and write the NPZ data contract (docs/data.md; PtychoPINN-compatible).

Every violation is an :class:`~fnostab.errors.InputError` naming the file, the key, what was
expected and what was found, so the CLI can report it on one line (exit 2). Files are always read
with ``allow_pickle=False``. Patch arrays may be (n, N, N, C) as PtychoPINN writes them (C = gridsize²
patterns per sample, docs/gridsize.md) or (n, N, N) at gridsize 1; in memory they are channel-first
(n, C, N, N), the layout the generators take.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fnostab.data.probe import normalise_probe
from fnostab.errors import InputError
from fnostab.groups import GroupGeometry
from fnostab.io import atomic_path

NON_NEGATIVE_KEYS = ("diffraction", "Y_I")
# numpy dtype families each key may hold; anything else (strings, bools, records) is rejected before
# a cast, which would otherwise parse strings or raise a bare ValueError.
REAL_KINDS = (np.floating, np.integer)
COMPLEX_KINDS = (np.complexfloating, np.floating, np.integer)


@dataclass(frozen=True)
class PtychoSplit:
    """One split (train or test) as the rest of fnostab uses it; optional parts may be None.

    Patch arrays are (n, C, N, N) with C = gridsize² patterns per sample; ``centres`` is (n, 2)
    [row, col], the group centres (the patch centres at gridsize 1); ``groups`` says where the C
    members sit around them; ``ground_truth`` is (n_images, L, L) complex; ``probe`` is the probe the
    simulator used (``probe_simulated``, or a ``probeGuess`` normalised the same way).
    """

    path: Path
    diffraction: np.ndarray
    probe: np.ndarray | None = None
    Y_I: np.ndarray | None = None
    Y_phi: np.ndarray | None = None
    centres: np.ndarray | None = None
    full_objects: np.ndarray | None = None
    ground_truth: np.ndarray | None = None
    norm_Y_I: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    groups: GroupGeometry | None = None

    def __post_init__(self) -> None:
        if self.groups is None:
            object.__setattr__(self, "groups", GroupGeometry(self.N))

    @property
    def N(self) -> int:
        return int(self.diffraction.shape[-1])

    @property
    def channels(self) -> int:
        """C: patterns per sample (gridsize²)."""
        return int(self.diffraction.shape[1])

    @property
    def gridsize(self) -> int:
        return self.groups.gridsize

    @property
    def n(self) -> int:
        return int(self.diffraction.shape[0])

    @property
    def n_images(self) -> int:
        for source in (self.metadata.get("nimgs"), self.ground_truth, self.full_objects):
            if isinstance(source, int):
                return source
            if isinstance(source, np.ndarray):
                return int(source.shape[0])
        return 1

    def noise_floor(self, loss: str) -> float | None:
        """The physics loss ``loss`` of the true object on this split, as the simulator recorded it."""
        floors = self.metadata.get("noise_floor")
        value = floors.get(loss) if isinstance(floors, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None

    def stride(self) -> int | None:
        """Scan stride from the metadata, or inferred from the patch centres (PtychoPINN files)."""
        if isinstance(self.metadata.get("stride"), int):
            return int(self.metadata["stride"])
        if self.centres is None:
            return None
        rows = np.unique(self.centres[:, 0])
        steps = np.unique(np.round(np.diff(rows)).astype(int))
        return int(steps[0]) if steps.size == 1 else None


# ------------------------------------------------------------------------------------------- writing
def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (uncompressed: loading speed matters more than disk)."""
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)


# ------------------------------------------------------------------------------------------- reading
def _read_all(path: Path) -> dict[str, np.ndarray]:
    """Every member of the NPZ at ``path``, or an InputError saying why the file is unusable."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: expected an NPZ file, found a directory or special file")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            magic = handle.read(6)
        if magic.startswith(b"PK\x03\x04"):
            raise InputError(f"{path}: truncated or corrupt NPZ file (the zip directory is missing)")
        if magic == b"\x93NUMPY":
            raise InputError(f"{path}: not an NPZ file (found a single-array .npy file; expected numpy.savez output)")
        raise InputError(f"{path}: not an NPZ file (expected a zip archive written by numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {}
            for key in archive.files:
                try:
                    arrays[key] = archive[key]
                except ValueError as error:
                    if "pickle" in str(error).lower() or "object arrays" in str(error).lower():
                        raise InputError(
                            f"{path}: key {key!r}: expected a numeric array, found a pickled object "
                            "array (fnostab never loads pickles)"
                        ) from None
                    raise
                if not isinstance(arrays[key], np.ndarray):
                    # np.load hands back the raw bytes of a zip member that is not a .npy file
                    raise InputError(
                        f"{path}: member {key!r}: expected a .npy array, found {len(arrays[key])} bytes of other data"
                    )
            return arrays
    except InputError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        raise InputError(f"{path}: truncated or corrupt NPZ file ({type(error).__name__}: {error})") from None


def _check_dtype(path: Path, key: str, array: np.ndarray, kinds: tuple[type, ...], expected: str) -> None:
    if not any(np.issubdtype(array.dtype, kind) for kind in kinds):
        raise InputError(f"{path}: key {key!r}: expected {expected}, found dtype {array.dtype}")


def _patches(path: Path, arrays: dict[str, np.ndarray], key: str, n_N_C: tuple[int, int, int] | None) -> np.ndarray:
    """(n, C, N, N) float32 from (n, N, N) or (n, N, N, C), checked."""
    array = arrays[key]
    stored_shape = array.shape  # messages name the shape as it is in the file
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise InputError(f"{path}: key {key!r}: expected shape (n, N, N) or (n, N, N, C), found {stored_shape}")
    if 0 in array.shape:
        raise InputError(f"{path}: key {key!r}: expected a non-empty array, found shape {stored_shape}")
    if array.shape[1] != array.shape[2]:
        raise InputError(f"{path}: key {key!r}: expected square N×N patches, found shape {stored_shape}")
    C = array.shape[3]
    if round(np.sqrt(C)) ** 2 != C:
        raise InputError(
            f"{path}: key {key!r}: expected C = gridsize² channels (1, 4, …) in (n, N, N, C), "
            f"found shape {stored_shape}"
        )
    if n_N_C is not None and (array.shape[0], array.shape[1], C) != n_N_C:
        n, N, C = n_N_C
        what = f"{n} patches of {N}×{N}" if C == 1 else f"{n} groups of {C} {N}×{N} patches"
        raise InputError(f"{path}: key {key!r}: expected {what} to match 'diffraction', found shape {stored_shape}")
    _check_dtype(path, key, array, REAL_KINDS, "a real float array")
    array = np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(0, 3, 1, 2))
    if not np.isfinite(array).all():
        raise InputError(f"{path}: key {key!r}: expected finite values, found NaN or inf")
    if key in NON_NEGATIVE_KEYS and (array < 0).any():
        raise InputError(f"{path}: key {key!r}: expected non-negative amplitudes, found minimum {float(array.min()):g}")
    return array


def _groups(
    path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, Any], n: int, N: int, C: int
) -> GroupGeometry:
    """Where the C members of each sample sit: from ``coords_nominal`` (relative offsets), else the metadata."""
    if "coords_nominal" in arrays:
        coords = arrays["coords_nominal"]
        _check_dtype(path, "coords_nominal", coords, REAL_KINDS, "real (row, col) relative offsets")
        if coords.size != 2 * n * C:
            raise InputError(
                f"{path}: key 'coords_nominal': expected relative offsets of shape ({n}, 1, 2, {C}), "
                f"found {coords.shape}"
            )
        relative = np.asarray(coords, dtype=np.float64).reshape(n, 2, C)
        if not np.isfinite(relative).all():
            raise InputError(f"{path}: key 'coords_nominal': expected finite offsets, found NaN or inf")
        if np.abs(relative - relative[:1]).max() > 1e-3:
            raise InputError(f"{path}: key 'coords_nominal': expected the same relative offsets in every group")
        return GroupGeometry.from_relative_offsets(relative[0].T, N, f"{path}: key 'coords_nominal'")
    if C == 1:
        return GroupGeometry(N)
    offset = metadata.get("offset")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 1 <= offset < N:
        raise InputError(
            f"{path}: {C} channels per sample but neither 'coords_nominal' nor an integer '_metadata' offset "
            "says where the patterns of a group sit"
        )
    return GroupGeometry(N, round(np.sqrt(C)), offset)


def _probe(path: Path, arrays: dict[str, np.ndarray], key: str, N: int) -> np.ndarray:
    probe = arrays[key]
    if probe.ndim == 3 and probe.shape[-1] == 1:
        probe = probe[..., 0]
    if probe.shape != (N, N):
        raise InputError(f"{path}: key {key!r}: expected probe shape ({N}, {N}), found {probe.shape}")
    _check_dtype(path, key, probe, (np.complexfloating, np.floating), "a complex array")
    probe = probe.astype(np.complex64)
    if not np.isfinite(probe).all():
        raise InputError(f"{path}: key {key!r}: expected finite values, found NaN or inf")
    if not np.abs(probe).any():
        raise InputError(f"{path}: key {key!r}: expected a probe with some amplitude, found all zeros")
    return probe


def _metadata(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if "_metadata" not in arrays:
        return {}
    raw = arrays["_metadata"]
    try:
        value = json.loads(str(raw.item() if raw.ndim == 0 else raw.reshape(-1)[0]))
    except (ValueError, IndexError):
        raise InputError(f"{path}: key '_metadata': expected a JSON string, found {raw.dtype} {raw.shape}") from None
    if not isinstance(value, dict):
        return {"value": value}
    # PtychoSplit.stride() and n_images trust these when present; 0 would divide by zero downstream.
    for name in ("stride", "nimgs"):
        if name in value and (isinstance(value[name], bool) or not isinstance(value[name], int) or value[name] < 1):
            raise InputError(
                f"{path}: key '_metadata': expected {name!r} to be a positive integer, found {value[name]!r}"
            )
    return value


def _centres(path: Path, arrays: dict[str, np.ndarray], n: int) -> np.ndarray:
    coords = arrays["coords_offsets"]
    _check_dtype(path, "coords_offsets", coords, REAL_KINDS, "real (row, col) centres")
    if coords.size != 2 * n:
        raise InputError(f"{path}: key 'coords_offsets': expected {n} (row, col) centres, found shape {coords.shape}")
    centres = coords.reshape(n, 2).astype(np.float64)
    if not np.isfinite(centres).all():
        raise InputError(f"{path}: key 'coords_offsets': expected finite centres, found NaN or inf")
    return centres


def _objects(path: Path, arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    """Complex (n_images, L, L) from (n_images, L, L[, 1]) or (L, L[, 1])."""
    objects = arrays[key]
    stored_shape = objects.shape
    _check_dtype(path, key, objects, COMPLEX_KINDS, "a complex array")
    if objects.ndim == 4 and objects.shape[-1] == 1:
        objects = objects[..., 0]
    elif objects.ndim == 3 and objects.shape[0] == objects.shape[1] and objects.shape[2] == 1:
        # PtychoPINN test files store one image as (L, L, 1), not L images of L×1.
        objects = objects[..., 0]
    if objects.ndim == 2:
        objects = objects[None]
    if objects.ndim != 3 or objects.size == 0:
        raise InputError(
            f"{path}: key {key!r}: expected shape (n_images, L, L[, 1]) or (L, L[, 1]), found {stored_shape}"
        )
    if objects.shape[1] != objects.shape[2]:
        raise InputError(f"{path}: key {key!r}: expected square L×L images, found shape {stored_shape}")
    objects = objects.astype(np.complex64)
    if not np.isfinite(objects).all():
        raise InputError(f"{path}: key {key!r}: expected finite values, found NaN or inf")
    return objects


def load_split(path: Path | str, *, require: tuple[str, ...] = ("diffraction",)) -> PtychoSplit:
    """Load and validate one NPZ split; keys in ``require`` must be present (always ``diffraction``)."""
    path = Path(path)
    arrays = _read_all(path)
    for key in ("diffraction", *require):
        if key not in arrays:
            present = ", ".join(sorted(arrays)) or "none"
            raise InputError(f"{path}: missing key {key!r} (keys present: {present})")
    diffraction = _patches(path, arrays, "diffraction", None)
    n, C, N = diffraction.shape[:3]
    metadata = _metadata(path, arrays)
    fields: dict[str, Any] = {"path": path, "diffraction": diffraction, "metadata": metadata}
    fields["groups"] = _groups(path, arrays, metadata, n, N, C)

    for key in ("Y_I", "Y_phi"):
        if key in arrays:
            fields[key] = _patches(path, arrays, key, (n, N, C))
    if "probe_simulated" in arrays:
        fields["probe"] = _probe(path, arrays, "probe_simulated", N)
    elif "probeGuess" in arrays:
        fields["probe"] = normalise_probe(_probe(path, arrays, "probeGuess", N), f"{path}: key 'probeGuess'")
    if "coords_offsets" in arrays:
        fields["centres"] = _centres(path, arrays, n)
    for key, name in (("YY_ground_truth", "ground_truth"), ("YY_full", "full_objects")):
        if key in arrays:
            fields[name] = _objects(path, arrays, key)
    if "norm_Y_I" in arrays:
        _check_dtype(path, "norm_Y_I", arrays["norm_Y_I"], REAL_KINDS, "one positive number")
        norm = np.asarray(arrays["norm_Y_I"], dtype=np.float64).reshape(-1)
        if norm.size != 1 or not np.isfinite(norm[0]) or norm[0] <= 0:
            raise InputError(f"{path}: key 'norm_Y_I': expected one positive number, found {arrays['norm_Y_I']!r}")
        fields["norm_Y_I"] = float(norm[0])
    return PtychoSplit(**fields)


def load_pair(train_path: Path | str, test_path: Path | str) -> tuple[PtychoSplit, PtychoSplit]:
    """Load train and test splits for training: both need a probe, the same N and the same groups."""
    train = load_split(train_path)
    test = load_split(test_path)
    if train.N != test.N:
        raise InputError(f"N mismatch: {train.path} has {train.N}×{train.N} patches, {test.path} has {test.N}×{test.N}")
    if train.groups != test.groups:
        raise InputError(
            f"gridsize mismatch: {train.path} has {describe_groups(train.groups)}, "
            f"{test.path} has {describe_groups(test.groups)}"
        )
    if train.probe is None:
        raise InputError(
            f"{train.path}: missing key 'probe_simulated' or 'probeGuess' (the probe is needed for the physics loss)"
        )
    return train, test


def describe_groups(groups: GroupGeometry) -> str:
    """``gridsize 1`` or ``gridsize 2 (4 channels, offset 4 px)``, for messages."""
    if groups.gridsize == 1:
        return "gridsize 1"
    return f"gridsize {groups.gridsize} ({groups.channels} channels, offset {groups.offset} px)"


def load_probe_guess(path: Path | str, N: int) -> np.ndarray:
    """A user probe: key ``probeGuess`` of an NPZ, complex N×N, checked to be normalisable."""
    path = Path(path)
    arrays = _read_all(path)
    if "probeGuess" not in arrays:
        present = ", ".join(sorted(arrays)) or "none"
        raise InputError(f"{path}: missing key 'probeGuess' (keys present: {present})")
    probe = _probe(path, arrays, "probeGuess", N)
    # Normalising is the full check: a probe dark in the central disk must fail here, before any
    # simulation work, with the file named.
    normalise_probe(probe, f"{path}: key 'probeGuess'")
    return probe

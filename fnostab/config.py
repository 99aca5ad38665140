"""Validated configuration shared by the CLI and the library.

Every command builds one of these pydantic models from its options (preset values first, explicit
flags on top) before any work starts, so a bad value is reported once, clearly, and nothing is
written. The models are plain data: the science lives in the modules that consume them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fnostab.errors import InputError

SIMULATION_SIZES = (32, 64, 128)
GRIDSIZES = (1, 2)
# numpy's Poisson sampler refuses rates above ~9.2e18 ("lam value too large"). The brightest pixel of
# a simulated pattern holds about 6% of the mean count per pattern at the presets, and at most the
# whole of its pattern; this cap keeps the rate below numpy's limit even for a pattern ~9,000 times
# brighter than the mean, and is far above any physical dose (1e9 in the study).
MAX_NPHOTONS = 1e15


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulationConfig(_Model):
    """A grid-lines data set (docs/data.md): one lines object per image, scanned on a regular grid."""

    N: int = Field(64, description="patch (and diffraction pattern) size in pixels")
    object_size: int = Field(392, ge=16, description="side S of each square object in pixels")
    nimgs_train: int = Field(1, ge=1, le=64)
    nimgs_test: int = Field(1, ge=1, le=64)
    stride_train: int = Field(4, ge=1)
    stride_test: int = Field(10, ge=1)
    nphotons: float = Field(1e9, gt=0, description="mean total photon count per pattern")
    set_phi: bool = True
    probe: Path | None = Field(None, description="NPZ with a complex N×N 'probeGuess'")
    seed: int = Field(1, ge=0)
    n_lines: int | None = Field(None, ge=1, description="lines per object (default scales with S)")
    gridsize: int = Field(1, description="g: each sample is a g×g group of patterns (C = g² channels)")
    offset: int = Field(4, ge=1, description="inner offset between the patterns of a group (px, gridsize > 1)")

    @field_validator("gridsize")
    @classmethod
    def _supported_gridsize(cls, value: int) -> int:
        if value not in GRIDSIZES:
            raise ValueError(f"expected one of {', '.join(map(str, GRIDSIZES))}, got {value}")
        return value

    @field_validator("N")
    @classmethod
    def _supported_size(cls, value: int) -> int:
        if value not in SIMULATION_SIZES:
            raise ValueError(f"expected one of {', '.join(map(str, SIMULATION_SIZES))}, got {value}")
        return value

    @field_validator("nphotons")
    @classmethod
    def _finite_photons(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"expected a finite photon count, got {value}")
        if value > MAX_NPHOTONS:
            raise ValueError(
                f"expected at most {MAX_NPHOTONS:.0e} photons per pattern (above that numpy's Poisson "
                f"sampler can overflow), got {value:g}"
            )
        return value

    @property
    def window(self) -> int:
        """Side of a group's outer window: N + (g − 1)·offset (N at gridsize 1)."""
        return self.N + (self.gridsize - 1) * self.offset

    @model_validator(mode="after")
    def _fits(self) -> SimulationConfig:
        if self.object_size < self.window:
            what = "N" if self.gridsize == 1 else "the group window N + (gridsize−1)·offset"
            raise ValueError(f"object_size {self.object_size} is smaller than {what} {self.window}")
        if self.gridsize > 1 and self.offset >= self.N:
            raise ValueError(
                f"offset {self.offset} must be smaller than N {self.N}: the patterns of a group must overlap"
            )
        if self.stride_test > self.N:
            raise ValueError(
                f"stride_test {self.stride_test} is larger than N {self.N}: stitching keeps the "
                "central stride×stride crop of each patch"
            )
        return self

    @property
    def lines_per_object(self) -> int:
        # The original draws 400 lines for S = 392; keep the line coverage per pixel at other sizes.
        return self.n_lines if self.n_lines is not None else max(1, round(400 * self.object_size / 392))


class ModelConfig(_Model):
    """A generator (docs/generators.md): the one description of it, from the CLI to the layers.

    The generators take it (``fnostab.models.build_generator(config, N)``), memory plans take it,
    checkpoints store it, and the commands' model options are generated from these fields
    (``fnostab.cli.options``): each field's description is its ``--help`` text. Strict, so a library
    caller's ``width=32.0`` or ``checkpointing=1`` is refused rather than converted. Checks that need
    N (the geometry) are :func:`fnostab.models.geometry_error`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    arch: Literal["fno", "hybrid", "stable_hybrid"] = Field(
        "hybrid", description="Generator: fno, hybrid or stable_hybrid."
    )
    width: int = Field(32, ge=1, description="Hidden channels h of the first level.")
    modes: int = Field(12, ge=1, description="Fourier modes kept per dimension (the hybrid bottleneck: half).")
    fno_blocks: int = Field(4, ge=1, le=12, description="Spectral blocks (hybrid: encoder levels).")
    max_hidden_channels: int | None = Field(
        None, ge=1, description="Cap on hybrid channel doubling (at least --width; none: no cap)."
    )
    bands: Literal["positive", "both"] = Field(
        "positive", description="Spectral row bands: positive (PtychoPINN) or both."
    )
    head: Literal["real_imag", "amp_phase"] = Field("real_imag", description="Output head: real_imag or amp_phase.")
    block_init: Literal["zero_gamma", "layerscale"] = Field(
        "zero_gamma", description="stable_hybrid blocks: zero_gamma or layerscale."
    )
    layerscale_init: float = Field(1e-3, gt=0, description="stable_hybrid layerscale blocks: initial λ per channel.")
    cnn_blocks: int = Field(2, ge=0, description="fno: Conv3×3 + GELU refiners after the spectral blocks.")
    checkpointing: bool = Field(
        False, description="Gradient checkpointing of encoder and bottleneck blocks (less memory, more time)."
    )

    @field_validator("layerscale_init")
    @classmethod
    def _finite_layerscale(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value}")
        return value

    @field_validator("max_hidden_channels")
    @classmethod
    def _cap_at_least_width(cls, value: int | None, info: ValidationInfo) -> int | None:
        width = info.data.get("width")
        if value is not None and width is not None and value < width:
            raise ValueError(f"must be ≥ width ({width}), or unset for no cap")
        return value


class TrainConfig(_Model):
    """Optimisation, clipping, schedule, failure detection and logging of one training run."""

    epochs: int = Field(20, ge=1, description="Training epochs.")
    batch_size: int = Field(16, ge=1, description="Samples per step.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="adam, adamw or sgd.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    weight_decay: float = Field(
        0.0, ge=0, description="Weight decay (adam, sgd: L2 in the gradient; adamw: decoupled)."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum (Nesterov when above 0).")
    scheduler: Literal["constant", "warmup_cosine", "plateau"] = Field(
        "constant", description="constant, warmup_cosine or plateau (stepped per epoch)."
    )
    warmup_epochs: int = Field(0, ge=0, description="warmup_cosine: epochs of linear warm-up from 0.1 × --lr.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR of warmup_cosine as a fraction of --lr.")
    plateau_factor: float = Field(
        0.5, gt=0, lt=1, description="plateau: LR factor when the validation loss stops improving."
    )
    plateau_patience: int = Field(2, ge=0, description="plateau: epochs without improvement before the LR drops.")
    loss: Literal["mae", "poisson"] = Field("mae", description="mae or poisson.")
    clip: str = Field("none", description="ALGO[:VALUE]: none, norm:v, value:v, agc:λ, agc_tensor:λ.")
    # Lightning's seed_everything (numpy) rejects seeds above 2**32 - 1.
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed of weights and batch order.")
    accelerator: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda.")
    precision: Literal["32", "bf16-mixed"] = Field("32", description="32 or bf16-mixed.")
    devices: int = Field(
        1,
        ge=1,
        description="Processes (CPU) or GPUs of this one run: K > 1 trains with DDP, "
        "the global --batch-size split across them.",
    )
    strategy: Literal["auto", "ddp"] = Field("auto", description="auto or ddp (the strategy of --devices > 1).")
    log_grad_norm: bool = Field(False, description="Log grad_norm_preclip/postclip to metrics.csv.")
    grad_norm_log_freq: int = Field(1, ge=1, description="Log grad norms every N steps.")
    blowup_factor: float = Field(1e3, gt=1, description="Loss above this × best smoothed loss → diverged.")
    collapse_threshold: float = Field(
        0.01, gt=0, lt=1, description="Predicted amplitude std/mean below this on validation → collapsed."
    )
    monitor_every: int = Field(
        0, ge=0, description="Log per-block gradient norm and activation mean every N steps (0: off)."
    )
    precursors_every: int = Field(
        0,
        ge=0,
        description="Per-block precursor signals (gradient, weight and update norms, update/weight ratio, "
        "update/gradient cosine, Adam second moment) logged every N steps (0: off); "
        "a window of every step is kept before each spike or failure.",
    )
    curvature_every: int = Field(
        0,
        ge=0,
        description="Sharpness and Adam-preconditioned sharpness (Hessian-vector products) every N steps, "
        "beside 2/η and 38/η (0: off).",
    )
    batch_sharpness_every: int = Field(
        0,
        ge=0,
        description="Batch sharpness gᵀHg/‖g‖² alone (one Hessian-vector product, cheap) every N steps, "
        "beside 2/η (0: off).",
    )
    precursor_window: int = Field(100, ge=2, description="Steps kept before a spike or failure.")
    val_patches: int | None = Field(
        None, ge=1, description="Validate each epoch on a fixed subset of this many test patterns (none: all)."
    )
    # torch.set_num_threads overflows past a C int, and a pool of 100 000 threads crashes torch at exit.
    threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads (none: torch's default).")

    @field_validator("lr", "weight_decay", "blowup_factor")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value}")
        return value

    @field_validator("clip")
    @classmethod
    def _clip_spec(cls, value: str) -> str:
        from fnostab.clipping import parse_clip_spec

        return str(parse_clip_spec(value))

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainConfig:
        if self.scheduler == "warmup_cosine" and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} must be smaller than epochs {self.epochs}")
        return self


# ------------------------------------------------------------------------------------------ presets
# Calibrated on a 2-core machine (BENCHMARKS.md): `smoke` runs a whole
# train + evaluation in seconds, `cpu` beats the constant prediction clearly in about two minutes of
# one core (20 epochs), `paper` is the Stage A configuration for a GPU.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "data": dict(N=32, object_size=160, stride_train=8, stride_test=10, nphotons=1e9),
        "model": dict(arch="hybrid", width=8, modes=8, fno_blocks=2),
        "train": dict(epochs=2, batch_size=16, lr=1e-3),
    },
    "cpu": {
        # gridsize 2 (docs/gridsize.md): at equal training time it beat gridsize 1 on amplitude and
        # phase SSIM for every seed (BENCHMARKS.md, Gridsize).
        "data": dict(N=32, object_size=392, stride_train=8, stride_test=10, nphotons=1e9, gridsize=2),
        # modes 16: the spectral path keeps 16×16 modes of the 32×32 level (modes 8 kept 8×8 and
        # left the reconstruction a blur, docs/gridsize.md), for ~16% more per step; a cosine decay
        # from lr 3e-3 to 3e-4 fits further in the same steps. Together the median amplitude SSIM
        # went from +0.09 to +0.28 over the constant prediction in 20 epochs (BENCHMARKS.md,
        # Gridsize). No warm-up epoch, so `--epochs 1` stays a valid run.
        "model": dict(arch="hybrid", width=16, modes=16, fno_blocks=2),
        # Validation each epoch on a fixed 256-pattern subset of the test split (evaluation at the
        # end always uses all of it): a fifth of the wall time saved (BENCHMARKS.md).
        "train": dict(epochs=20, batch_size=16, lr=3e-3, scheduler="warmup_cosine", val_patches=256),
    },
    "paper": {
        "data": dict(N=64, object_size=392, stride_train=4, stride_test=10, nphotons=1e9),
        "model": dict(arch="hybrid", width=32, modes=12, fno_blocks=4),
        "train": dict(epochs=20, batch_size=16, lr=1e-3, loss="mae"),
    },
}
PRESET_NAMES = tuple(PRESETS)
DEFAULT_PRESET = "cpu"


def preset_values(preset: str, section: Literal["data", "model", "train"]) -> dict[str, Any]:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; expected one of {', '.join(PRESET_NAMES)}")
    return dict(PRESETS[preset][section])


def flag_name(field: str) -> str:
    """CLI spelling of a config field (``nimgs_train`` → ``--nimgs-train``; ``N`` stays ``--N``)."""
    return "--" + field.replace("_", "-")


def describe_validation_error(
    error: ValidationError, source: str | None = None, spell: Callable[[str], str] = flag_name
) -> str:
    """One line naming the offending field (as a CLI flag, or as ``spell`` writes it), what was expected
    and what was found."""
    first = error.errors()[0]
    loc = [part for part in first.get("loc", ()) if isinstance(part, str)]
    where = spell(loc[-1]) if loc else (source or "options")
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    found = first.get("input")
    detail = f"invalid {where}: {message}"
    if loc and not isinstance(found, dict) and f"got {found}" not in message:
        detail += f" (got {found!r})"
    if len(error.errors()) > 1:
        detail += f"; and {len(error.errors()) - 1} more problem(s)"
    return detail


def build(model: type[_Model], values: dict[str, Any], source: str | None = None) -> Any:
    """Validate ``values`` into ``model``; a problem becomes an :class:`InputError` (one line)."""
    try:
        return model(**values)
    except ValidationError as error:
        raise InputError(describe_validation_error(error, source)) from None


def merge(preset: str, section: Literal["data", "model", "train"], overrides: dict[str, Any]) -> dict[str, Any]:
    """Preset values for ``section`` with every explicitly given (non-None) override on top."""
    values = preset_values(preset, section)
    values.update({key: value for key, value in overrides.items() if value is not None})
    return values


class DataSource(_Model):
    """Where a run's data come from: two NPZ files, or a simulation (cached) when none are given."""

    train: Path | None = None
    test: Path | None = None
    simulation: SimulationConfig | None = None
    gridsize: int | None = Field(None, description="gridsize the files must have (None: whatever they hold)")

    @field_validator("gridsize")
    @classmethod
    def _supported_gridsize(cls, value: int | None) -> int | None:
        if value is not None and value not in GRIDSIZES:
            raise ValueError(f"expected one of {', '.join(map(str, GRIDSIZES))}, got {value}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.train is None) != (self.test is None):
            raise ValueError("give both TRAIN.npz and TEST.npz, or neither to simulate the preset's data")
        if self.train is None and self.simulation is None:
            raise ValueError("no data: give TRAIN.npz and TEST.npz or a simulation config")
        return self


class RunConfig(_Model):
    """Everything one training run needs; written to ``config.json`` in its run dir."""

    schema_: Literal["fnostab.config/1"] = Field("fnostab.config/1", alias="schema")
    name: str | None = Field(None, description="arm name inside a sweep")
    preset: str | None = None
    data: DataSource
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

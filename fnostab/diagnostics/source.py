"""Shared parts of the diagnostics: the model source (a trained checkpoint or a fresh generator), the
device, and the patterns fed to the generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from fnostab.config import DEFAULT_PRESET, ModelConfig, TrainConfig, build, flag_name, merge
from fnostab.devices import resolve_device_name
from fnostab.errors import ConfigError, InputError

Device = Literal["cpu", "cuda", "auto"]

#: Default seed of a freshly initialised generator: TrainConfig's default, so that with the same
#: model options the probes see exactly the weights ``fnostab train`` starts from.
DEFAULT_SEED: int = TrainConfig.model_fields["seed"].default


# ----------------------------------------------------------------------------------------- device
def resolve_device(requested: str | torch.device) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available) → a torch.device; InputError for cuda without one."""
    if isinstance(requested, torch.device):
        resolve_device_name(requested.type)
        return requested
    return torch.device(resolve_device_name(str(requested)))


# ------------------------------------------------------------------------------------------- data
def as_patterns(diffraction: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Diffraction amplitudes (n, N, N), (n, N, N, 1) or channel-first groups (n, C, N, N) (a loaded
    split's ``diffraction``) → a (n, C, N, N) float32 CPU tensor (the generator input)."""
    array = diffraction.detach().cpu().numpy() if isinstance(diffraction, torch.Tensor) else np.asarray(diffraction)
    if array.ndim == 4 and array.shape[-1] == 1 and array.shape[1] == array.shape[2] and array.shape[1] > 1:
        array = array[..., 0]
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] != array.shape[3]:
        raise ValueError(
            f"diffraction must be a non-empty (n, N, N) or (n, C, N, N) array of square patterns, "
            f"got shape {array.shape}"
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def block_names(generator: torch.nn.Module) -> list[str]:
    """Qualified names of ``generator.blocks`` (``blocks.0``, …) in forward order."""
    blocks = getattr(generator, "blocks", None)
    if not isinstance(blocks, (torch.nn.ModuleList, torch.nn.Sequential)) or len(blocks) == 0:
        raise ValueError(f"{type(generator).__name__} has no residual blocks (attribute 'blocks') to probe")
    names = {id(module): name for name, module in generator.named_modules()}
    return [names[id(block)] for block in blocks]


def architecture_of(generator: torch.nn.Module) -> str:
    """The architecture of a generator built from a ModelConfig (its ``config.arch``), else its class name."""
    config = getattr(generator, "config", None)
    return config.arch if isinstance(config, ModelConfig) else type(generator).__name__


class Settings(BaseModel):
    """Base of the diagnostics' validated option sets: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------ model source
class ModelSource(Settings):
    """Where the probed generator comes from: a trained checkpoint, or a fresh one from options + seed.

    Exactly one of ``checkpoint`` and ``model`` is set (:func:`resolve_model_source` guarantees it).
    """

    checkpoint: Path | None = None
    model: ModelConfig | None = None
    preset: str | None = None
    seed: int | None = None


def resolve_model_source(
    *,
    checkpoint: Path | None,
    run: Path | None,
    preset: str | None,
    seed: int | None,
    options: dict[str, Any],
) -> ModelSource:
    """Validate the model options of a diagnostic command; nothing is loaded or built yet.

    ``run`` is a run dir whose ``checkpoint.pt`` is used. With a checkpoint (or run), every model
    option must be absent (None): they would be silently ignored otherwise, so giving one is an
    :class:`InputError` naming it. Without one, ``options`` (ModelConfig fields) go on top of the
    ``preset`` (default ``cpu``) and ``seed`` defaults to :data:`DEFAULT_SEED`.
    """
    from fnostab.rundir import CHECKPOINT_NAME

    if checkpoint is not None and run is not None:
        raise InputError("give --checkpoint FILE or --run RUN_DIR, not both")
    if run is not None:
        if not run.is_dir():
            raise InputError(f"{run}: --run expects a run dir, found {'a file' if run.exists() else 'nothing'}")
        checkpoint = run / CHECKPOINT_NAME
        if not checkpoint.is_file():
            raise InputError(f"{run}: no {CHECKPOINT_NAME} in this run dir (is it a finished fnostab run?)")
    if checkpoint is not None:
        given = {"preset": preset, "seed": seed, **options}
        conflicting = [flag_name(key) for key, value in given.items() if value is not None]
        if conflicting:
            flag = "--run" if run is not None else "--checkpoint"
            raise InputError(
                f"{flag} gives a trained model, so {', '.join(conflicting)} cannot apply: drop "
                f"{'them' if len(conflicting) > 1 else 'it'}, or drop {flag} to probe a freshly initialised generator"
            )
        if checkpoint.is_dir():
            raise InputError(
                f"{checkpoint}: --checkpoint expects a checkpoint file, found a directory (a run dir goes to --run)"
            )
        if not checkpoint.is_file():
            raise InputError(f"{checkpoint}: checkpoint not found")
        return ModelSource(checkpoint=checkpoint)
    preset = preset or DEFAULT_PRESET
    model = build(ModelConfig, merge(preset, "model", options))
    return ModelSource(model=model, preset=preset, seed=DEFAULT_SEED if seed is None else seed)


def load_model(source: ModelSource, N: int, gridsize: int = 1) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The generator of ``source`` built for groups of gridsize² N×N patterns, and a JSON-ready description of it.

    A checkpoint trained at another gridsize is an :class:`InputError` (its input and output channels differ).

    A checkpoint's weights are loaded into its architecture built at N (spectral weights do not depend
    on N); an architecture whose geometry does not fit N is an :class:`InputError`. A fresh generator
    is initialised under ``torch.manual_seed(seed)`` in a forked RNG, so the caller's global RNG state
    is untouched and the weights equal those ``fnostab train`` starts from with the same seed.
    """
    from fnostab.models import build_generator
    from fnostab.training.checkpoint import checkpoint_gridsize, load_generator, read_checkpoint

    if source.checkpoint is not None:
        trained = checkpoint_gridsize(read_checkpoint(source.checkpoint))
        if trained != gridsize:
            raise InputError(
                f"{source.checkpoint}: the checkpoint was trained at gridsize {trained}, "
                f"the NPZ holds gridsize {gridsize}"
            )
        try:
            generator, model = load_generator(source.checkpoint, N)
        except ConfigError as error:  # build_generator: the geometry does not fit N
            raise InputError(
                f"{source.checkpoint}: the checkpoint's model cannot run at this NPZ's N={N}: {error}"
            ) from None
        except (ValidationError, KeyError, TypeError, AttributeError) as error:
            raise InputError(
                f"{source.checkpoint}: not a usable fnostab checkpoint "
                f"({type(error).__name__}: {str(error).splitlines()[0]})"
            ) from None
        info = {
            "source": "checkpoint",
            "checkpoint": str(source.checkpoint),
            "config": model.model_dump(mode="json"),
            "gridsize": gridsize,
        }
        return generator, {"architecture": model.arch, **info}
    assert source.model is not None and source.seed is not None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed)
        generator = build_generator(source.model, N, gridsize**2)
    info = {
        "source": "fresh",
        "preset": source.preset,
        "seed": source.seed,
        "config": source.model.model_dump(mode="json"),
        "gridsize": gridsize,
    }
    return generator, {"architecture": source.model.arch, **info}

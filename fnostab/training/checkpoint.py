"""Generator checkpoints: the weights plus what is needed to rebuild the generator.

A checkpoint is a plain dict saved with ``torch.save`` and loaded with ``weights_only=True`` (no
pickled code runs on load): ``schema``, ``model`` (the ModelConfig as JSON), ``N``, ``gridsize``
(C = gridsize² input and output channels; absent in older checkpoints, meaning 1), ``state_dict``,
``epoch`` and ``step``. ``fnostab probe-activations --run DIR`` and ``grad-gain`` read it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from fnostab.config import ModelConfig, describe_validation_error
from fnostab.errors import InputError
from fnostab.io import atomic_path

CHECKPOINT_SCHEMA = "fnostab.checkpoint/1"


def save_checkpoint(
    path: Path, generator: torch.nn.Module, model: ModelConfig, N: int, *, epoch: int, step: int, gridsize: int = 1
) -> None:
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    payload = {
        "schema": CHECKPOINT_SCHEMA,
        "model": model.model_dump(mode="json"),
        "N": N,
        "gridsize": gridsize,
        "state_dict": state,
        "epoch": epoch,
        "step": step,
    }
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as error:
            # torch reports a failed write (a full disk) as a RuntimeError from its zip writer;
            # it is an OSError for what it means to the caller.
            raise OSError(f"{path}: could not write the checkpoint ({str(error).splitlines()[0][:200]})") from error


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: expected a checkpoint file, found a directory")
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused it: the file pickles code or objects beyond tensors and plain data.
        # torch's own text suggests weights_only=False, which would run that code: not our advice.
        raise InputError(
            f"{path}: refused to load: it holds pickled objects other than tensors and plain data, which an "
            "fnostab checkpoint never does"
        ) from None
    except Exception:  # torch raises many types, with multi-line text, for a damaged file
        raise InputError(
            f"{path}: not a readable fnostab checkpoint (damaged, truncated or not a torch file)"
        ) from None
    if not isinstance(payload, dict) or payload.get("schema") != CHECKPOINT_SCHEMA:
        raise InputError(f"{path}: expected a checkpoint with schema {CHECKPOINT_SCHEMA!r}")
    return payload


def checkpoint_gridsize(payload: dict[str, Any]) -> int:
    """The gridsize a checkpoint was trained at (1 for checkpoints that predate gridsize)."""
    return int(payload.get("gridsize", 1))


def checkpoint_model(payload: dict[str, Any], path: Path | str) -> ModelConfig:
    """The ModelConfig a checkpoint stores, validated; InputError naming the bad option otherwise."""
    try:
        return ModelConfig.model_validate(payload.get("model"))
    except ValidationError as error:
        problem = describe_validation_error(error, spell=str)
        raise InputError(f"{path}: the checkpoint's model config is not valid: {problem}") from None


def load_generator(path: Path | str, N: int | None = None) -> tuple[torch.nn.Module, ModelConfig]:
    """Rebuild the generator of a checkpoint and load its weights (for N, default the trained N)."""
    from fnostab.models import build_generator

    payload = read_checkpoint(path)
    model = checkpoint_model(payload, path)
    generator = build_generator(model, N or payload["N"], checkpoint_gridsize(payload) ** 2)
    try:
        generator.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise InputError(f"{path}: weights do not fit the {model.arch} generator ({error})") from None
    return generator, model

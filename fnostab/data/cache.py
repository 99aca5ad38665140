"""Simulate a preset's data set once and reuse it.

Commands given no data files call :func:`cached_dataset`. The cache key is a hash of the validated
simulation config (and of a user probe file's bytes), so any change of option gives a new entry.
An entry is built in a temp directory and renamed into place, so concurrent callers (a shootout's
workers, two shells) never see a half-written data set; the loser of a race discards its copy.
The cache lives in ``$FNOSTAB_CACHE`` or ``~/.cache/fnostab``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from fnostab.config import SimulationConfig
from fnostab.data.simulate import FORMAT_VERSION, simulate, write_dataset


def cache_root() -> Path:
    return Path(os.environ.get("FNOSTAB_CACHE") or Path.home() / ".cache" / "fnostab")


def dataset_key(config: SimulationConfig) -> str:
    payload = {"config": config.model_dump(mode="json"), "format_version": FORMAT_VERSION}
    if config.probe is not None:
        payload["probe_sha256"] = hashlib.sha256(Path(config.probe).read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"N{config.N}-S{config.object_size}-{digest}"


def cached_dataset(config: SimulationConfig) -> tuple[Path, Path]:
    """Paths of ``train.npz`` and ``test.npz`` for ``config``, simulating them on first use."""
    entry = cache_root() / "datasets" / dataset_key(config)
    train, test = entry / "train.npz", entry / "test.npz"
    if train.is_file() and test.is_file():
        return train, test
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        write_dataset(*simulate(config), staging)
        (staging / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))
        try:
            os.rename(staging, entry)
        except OSError:
            if not (train.is_file() and test.is_file()):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return train, test

"""Simulate a preset's data set once and reuse it.

Commands given no data files call :func:`cached_dataset`. The cache key is a hash of the validated
simulation config (and of a user probe file's bytes), so any change of option gives a new entry.
An entry is built in a temp directory and renamed into place, so concurrent callers (a shootout's
workers, two shells) never see a half-written data set; the loser of a race discards its copy. An
entry found damaged (a file deleted or truncated by hand, a full disk in an older version) is moved
aside and rebuilt rather than blocking every later call.
The cache lives in ``$FNOSTAB_CACHE`` or ``~/.cache/fnostab``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import zipfile
from pathlib import Path
from typing import Any

from fnostab.config import SimulationConfig
from fnostab.data.simulate import FORMAT_VERSION, simulate, write_dataset
from fnostab.errors import InputError
from fnostab.io import make_temp_dir


def cache_root() -> Path:
    return Path(os.environ.get("FNOSTAB_CACHE") or Path.home() / ".cache" / "fnostab")


def _unusable_cache(root: Path, error: OSError) -> InputError:
    """The cache cannot hold a new entry: name the variable that moves it (exit 2, not a traceback)."""
    source = "FNOSTAB_CACHE" if os.environ.get("FNOSTAB_CACHE") else "the default under HOME (~/.cache/fnostab)"
    return InputError(
        f"cannot use the data cache at {root} ({source}): {error.strerror or error}; set FNOSTAB_CACHE to a "
        "writable directory"
    )


def dataset_key(config: SimulationConfig) -> str:
    payload = {"config": config.model_dump(mode="json"), "format_version": FORMAT_VERSION}
    if config.probe is not None:
        payload["probe_sha256"] = hashlib.sha256(Path(config.probe).read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"N{config.N}-S{config.object_size}-{digest}"


def _complete(entry: Path) -> bool:
    # is_zipfile reads only the zip's end record: cheap, and it catches a truncated file.
    return all((entry / name).is_file() and zipfile.is_zipfile(entry / name) for name in ("train.npz", "test.npz"))


def _discard(entry: Path) -> None:
    """Move ``entry`` aside in one rename, so no caller sees it half deleted, then delete it."""
    trash = entry.with_name(f".{entry.name}.damaged.{secrets.token_hex(6)}")
    try:
        os.rename(entry, trash)
    except FileNotFoundError:
        return  # another caller discarded it first
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def cached_dataset(config: SimulationConfig) -> tuple[Path, Path]:
    """Paths of ``train.npz`` and ``test.npz`` for ``config``, simulating them on first use."""
    entry = cache_root() / "datasets" / dataset_key(config)
    train, test = entry / "train.npz", entry / "test.npz"
    if _complete(entry):
        return train, test
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = make_temp_dir(entry.parent, f".{entry.name}", "")
    except OSError as error:
        raise _unusable_cache(cache_root(), error) from None
    try:
        write_dataset(*simulate(config), staging)
        (staging / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))
        for _ in range(3):
            try:
                os.rename(staging, entry)
                break
            except OSError:
                if _complete(entry):
                    break  # another caller finished the same (deterministic) data set first
                # The entry in the way is damaged; left there it would fail every later call.
                _discard(entry)
        else:
            raise OSError(f"{entry}: could not replace a damaged cache entry")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return train, test


def load_cached_pair(config: SimulationConfig) -> tuple[Any, Any]:
    """The data set of ``config`` loaded and fully checked; an entry that fails the check (a file
    damaged after the cheap completeness test passed) is derivable, so it is rebuilt once."""
    from fnostab.data.npz import load_pair

    train, test = cached_dataset(config)
    try:
        return load_pair(train, test)
    except InputError:
        _discard(train.parent)
        return load_pair(*cached_dataset(config))

"""Atomic file writes: every file fnostab produces appears whole or not at all.

Writers create a temp file in the destination directory, fsync it and ``os.replace`` it onto the
final name, so a crash, Ctrl-C or SIGKILL leaves either the old file or the new one, never a torn
one; the directory is then fsynced too (where the platform allows) so the rename survives a power
cut. Temp names start with a dot and end in ``.tmp`` so readers and resumers can ignore them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fnostab.errors import InputError


def _create_temp(directory: Path, name: str) -> Path:
    """A new empty file ``.NAME.RANDOM.tmp`` in ``directory`` with the permissions of a plain open().

    Not tempfile.mkstemp: it creates mode 0600, and widening that needs the umask, which can only be
    read by setting it, a process-wide change that races with other threads creating files.
    Creating with mode 0666 lets the kernel apply the umask (and any default ACL) itself.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{directory}: could not create a unique temp file for {name}")


def fsync_directory(directory: Path | str) -> None:
    """Make renames inside ``directory`` durable; best effort (some platforms cannot open a dir)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path.parent, path.name)
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path | str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, value: Any) -> None:
    """Pretty JSON, non-finite floats written as null (strict JSON readers reject NaN)."""
    write_text_atomic(path, json.dumps(to_jsonable(value), indent=2, sort_keys=False, allow_nan=False) + "\n")


def to_jsonable(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python numbers, recursively."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def read_json_document(path: Path | str, schema: str) -> dict[str, Any]:
    """A JSON object file carrying ``"schema": schema``; a corrupt or foreign file is an InputError naming it."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: corrupt {path.name} ({type(error).__name__}: {error})") from None
    if not isinstance(document, dict) or document.get("schema") != schema:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise InputError(f"{path}: expected schema {schema!r}, found {found!r}")
    return document


def check_out_dir(out: Path) -> None:
    """``--out`` must be a directory or not exist yet (commands create it when they write)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: expected a directory for --out, found a file")

"""Atomic file writes: every file fnostab produces appears whole or not at all.

Writers create a temp file in the destination directory, fsync it and ``os.replace`` it onto the
final name, so a crash, Ctrl-C or SIGKILL leaves either the old file or the new one, never a torn
one; the directory is then fsynced too (where the platform allows) so the rename survives a power
cut. Temp names start with a dot and end in ``.tmp`` so readers and resumers can ignore them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from fnostab.errors import InputError

M = TypeVar("M", bound=BaseModel)


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


def make_temp_dir(parent: Path | str, prefix: str, suffix: str = ".tmp") -> Path:
    """A new empty directory ``PREFIX.RANDOM.SUFFIX`` in ``parent`` with the permissions of a plain mkdir.

    Not tempfile.mkdtemp: its 0700 would stay on a directory that is later renamed into place (a
    replaced run dir, a cache entry) and lock other users out of what a fresh one would share.
    """
    parent = Path(parent)
    for _ in range(100):
        path = parent / f"{prefix}.{secrets.token_hex(6)}{suffix}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{parent}: could not create a unique temp dir {prefix}")


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


_EXPECTED = {
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
    "string_type": "a string",
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "finite_number": "a finite number",
    "literal_error": "one of the allowed values",
}


class DocumentPart(BaseModel):
    """A JSON document fnostab writes, or a part of one: the keys it writes are typed fields, and keys
    it does not know (a file from another version) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    def to_document(self) -> dict[str, Any]:
        """The JSON object: the keys it was built or read with, in the order of the fields, then unknown ones."""
        return self.model_dump(mode="python", by_alias=True, exclude_unset=True)


def parse_document(path: Path | str, document: dict[str, Any], model: type[M]) -> M:
    """``document`` (read from ``path``) parsed into the pydantic ``model`` of its schema; an
    InputError names the file and the first wrong key, e.g. ``training.val_losses.3``."""
    from pydantic import ValidationError

    try:
        return model.model_validate(document)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        first = problems[0]
        key = ".".join(str(part) for part in first["loc"]) or "(document)"
        if first["type"] == "missing":
            detail = "is missing"
        else:
            wanted = _EXPECTED.get(first["type"])
            found = repr(first.get("input"))
            detail = f"expected {wanted}, found {found[:60]}" if wanted else f"{first['msg']} (found {found[:60]})"
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InputError(f"{path}: invalid {Path(path).name}: key {key!r} {detail}{more}") from None


def check_out_dir(out: Path, option: str = "--out") -> None:
    """``out`` must be a directory this process can write, or a path it can create: checked before
    any work, without leaving anything behind, so an unwritable destination is exit 2 up front and
    not a traceback after the training.

    Rejected: a file where the directory should be (or above it), a name longer than the file
    system allows, and a directory, or the nearest existing one above a new ``out``, in which a file
    cannot be created (read-only mount, missing permission, /proc). The test is creating and
    removing a probe file, since ``os.access`` says yes to root on most of these.
    """
    try:
        _check_out_dir(Path(out), option)
    except OSError as error:  # stat itself failed: a name too long, a loop of links, no permission
        if error.errno == errno.ENAMETOOLONG:
            raise InputError(f"{out}: a name in it is longer than this file system allows") from None
        raise InputError(f"{out}: cannot use it as {option}: {error.strerror or error}") from None


def _check_out_dir(out: Path, option: str) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: expected a directory for {option}, found a file")
    existing = out
    while not existing.exists():
        if existing.is_symlink():
            raise InputError(f"{out}: {existing} is a broken symbolic link; choose another {option}")
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{out}: {existing} is a file, so {option} cannot be created under it")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for part in out.relative_to(existing).parts if out != existing else ():
        if len(os.fsencode(part)) > name_max:
            raise InputError(
                f"{out}: the name {part[:40]}... is longer than the {name_max} bytes this file system allows"
            )
    try:
        probe = _create_temp(existing, "fnostab-write-check")
    except OSError as error:
        what = "" if existing == out else f" (its nearest existing parent {existing})"
        raise InputError(f"{out}: cannot write to {option}{what}: {error.strerror or error}") from None
    probe.unlink(missing_ok=True)


class DirectoryLock:
    """Exclusive use of a directory by one process: an ``flock`` on its ``.lock`` file.

    The kernel drops the lock when its holder dies, even by SIGKILL, so a killed command never
    leaves a stale lock, while a live one makes a second process fail with an InputError (exit 2)
    naming the holder's pid. Used by sweeps and by ``train --out``.
    """

    NAME = ".lock"

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / self.NAME
        self._fd: int | None = None

    def __enter__(self) -> DirectoryLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(
                f"{self.path.parent} is in use by another fnostab process (pid {holder}); wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass  # its directory was moved or removed meanwhile (a replaced run dir)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

"""Arms of a sweep: a name plus model and training options on top of the preset (docs/method.md, Stage A).

An arm is written ``NAME:key=val,key=val`` on the command line or as a ``[arms.NAME]`` table in a
TOML file; keys are the fields of :class:`~fnostab.config.ModelConfig` and
:class:`~fnostab.config.TrainConfig` (``arch``, ``clip``, ``lr``, ``width``, ``scheduler`` …).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnostab.config import ModelConfig, TrainConfig
from fnostab.errors import InputError

MODEL_KEYS = frozenset(ModelConfig.model_fields)
# Keys a sweep sets for every run itself; an arm may not override them.
SWEEP_OWNED_KEYS = frozenset({"seed", "log_grad_norm", "threads", "accelerator", "devices", "strategy"})
TRAIN_KEYS = frozenset(TrainConfig.model_fields) - SWEEP_OWNED_KEYS
ARM_KEYS = MODEL_KEYS | TRAIN_KEYS
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Arm:
    name: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


# Stage A of the study (docs/method.md): negative control, architectural fix, optimisation fix.
DEFAULT_ARMS = (
    Arm("control", {"arch": "hybrid"}, {"clip": "none"}),
    Arm("arch", {"arch": "stable_hybrid"}, {"clip": "none"}),
    Arm("opt", {"arch": "hybrid"}, {"clip": "agc:0.01"}),
)


def _coerce(text: str) -> Any:
    """Command-line value → bool, int, float, None or str (pydantic validates the result)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None if lowered == "null" else "none"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def make_arm(name: str, options: dict[str, Any], source: str) -> Arm:
    if not _NAME.match(name):
        raise InputError(f"{source}: arm name {name!r} must be letters, digits, '_', '-' or '.'")
    unknown = sorted(set(options) - ARM_KEYS)
    if unknown:
        owned = [key for key in unknown if key in SWEEP_OWNED_KEYS]
        if owned:
            raise InputError(f"{source}: arm {name!r} cannot set {', '.join(owned)} (the sweep sets it for every run)")
        raise InputError(
            f"{source}: unknown arm key {unknown[0]!r} in arm {name!r}; valid keys: {', '.join(sorted(ARM_KEYS))}"
        )
    model = {k: v for k, v in options.items() if k in MODEL_KEYS}
    train = {k: v for k, v in options.items() if k in TRAIN_KEYS}
    return Arm(name, model, train)


def parse_arm(text: str) -> Arm:
    """``NAME:key=val,key=val`` (``NAME`` alone gives the preset's defaults)."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--arm {text!r}: expected NAME:key=val,key=val, found {item!r}")
        options[key.strip()] = _coerce(value)
    return make_arm(name.strip(), options, f"--arm {text!r}")


def load_arms_file(path: Path) -> list[Arm]:
    """Arms from a TOML file: one ``[arms.NAME]`` table per arm."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: arms file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: --arms-file expects a TOML file, found a directory") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the arms file ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid TOML ({error})") from None
    tables = document.get("arms")
    if not isinstance(tables, dict) or not tables:
        raise InputError(f"{path}: expected one or more [arms.NAME] tables")
    arms = []
    for name, options in tables.items():
        if not isinstance(options, dict):
            raise InputError(f"{path}: arms.{name} must be a table of key = value")
        arms.append(make_arm(name, options, str(path)))
    return arms


def clip_sweep_arms(values: list[float], base: Arm) -> list[Arm]:
    """Control arms with global norm clipping at each value (the study's check that conclusions are not
    artifacts of the clip value).
    """
    return [
        Arm(f"{base.name}_norm{value:g}", dict(base.model), {**base.train, "clip": f"norm:{value:g}"})
        for value in values
    ]


def parse_number_list(text: str, option: str, *, kind: type = float, positive: bool = True) -> list:
    """``1,5,10`` → [1.0, 5.0, 10.0]; a malformed or non-positive entry is an InputError."""
    values = []
    for item in text.split(","):
        try:
            value = kind(item.strip())
        except ValueError:
            raise InputError(f"invalid {option}: {item.strip()!r} in {text!r} is not a {kind.__name__}") from None
        if positive and not value > 0:
            raise InputError(f"invalid {option}: expected positive values, found {item.strip()} in {text!r}")
        values.append(value)
    if len(set(values)) != len(values):
        raise InputError(f"invalid {option}: repeated value in {text!r}")
    return values


def resolve_arms(arm_texts: list[str], arms_file: Path | None, clip_sweep: str | None) -> list[Arm]:
    """The sweep's arms: --arm flags and/or a TOML file, else the Stage A defaults; plus the clip sweep."""
    arms = [parse_arm(text) for text in arm_texts]
    if arms_file is not None:
        arms += load_arms_file(arms_file)
    if not arms:
        arms = list(DEFAULT_ARMS)
    if clip_sweep:
        control = next((arm for arm in arms if arm.name == "control"), DEFAULT_ARMS[0])
        arms += clip_sweep_arms(parse_number_list(clip_sweep, "--clip-sweep"), control)
    names = [arm.name for arm in arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"arm {duplicates[0]!r} is defined twice")
    return arms

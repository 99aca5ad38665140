"""Command-line options generated from the fields of the config models.

A command declares which config fields it exposes with :class:`ConfigOptions` and takes them as
``**options``; :func:`config_options` turns each field into a typer option:

* name ``fno_blocks`` → ``--fno-blocks`` (:func:`fnostab.config.flag_name`); a bool field → ``--x/--no-x``;
* type: the field's, with ``Literal`` choices read as text (the config's own validation names the
  choices on a bad value, exit 2);
* default None, meaning "the preset's or the config's value", so that an explicit flag can be told
  apart from a default;
* help: the field's description, with "(default X)" when no preset sets the field.

So a new config field is a new flag of every command that exposes its config, with no edit here
(docs/architecture.md#adding-a-model-option). Typer reads a command's parameters with
``inspect.signature``, which honours the ``__signature__`` set here. Only pydantic is imported: the
CLI modules load no torch before a command runs.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, TypeVar, Union

import typer
from pydantic import BaseModel

from fnostab.config import PRESETS, flag_name

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ConfigOptions:
    """The fields of ``config`` that a command exposes as options, and where its help lists them.

    ``fields`` picks some fields (default: all of them, so a new field is a new option); ``panels``
    moves single fields to another help panel than ``panel``; ``help`` replaces a field's description
    where the command gives the option a narrower meaning (a sweep's ``--epochs`` is capped).
    """

    config: type[BaseModel]
    panel: str | None = None
    fields: tuple[str, ...] | None = None
    panels: Mapping[str, str] = field(default_factory=dict)
    help: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = set(self.config.model_fields)
        named = [*(self.fields or ()), *self.panels, *self.help]
        unknown = sorted(set(named) - known)
        if unknown:
            raise ValueError(f"{self.config.__name__} has no field(s) {', '.join(unknown)}")

    @property
    def names(self) -> list[str]:
        """The exposed fields, in the order the config declares them (or ``fields`` lists them)."""
        return list(self.fields if self.fields is not None else self.config.model_fields)

    def parameters(self) -> list[inspect.Parameter]:
        """One keyword-only typer parameter per exposed field."""
        return [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=self.option(name),
                annotation=Optional[cli_type(self.config.model_fields[name].annotation)],  # noqa: UP045 - typer
            )
            for name in self.names
        ]

    def option(self, name: str) -> Any:
        """The typer option of field ``name``."""
        info = self.config.model_fields[name]
        flag = flag_name(name)
        if cli_type(info.annotation) is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        return typer.Option(None, flag, help=self.help_text(name), rich_help_panel=self.panels.get(name, self.panel))

    def help_text(self, name: str) -> str:
        """The field's description (or this command's own text), with its default when no preset sets it."""
        info = self.config.model_fields[name]
        text = self.help.get(name) or info.description or ""
        default = info.default
        if default is None or isinstance(default, bool) or name in preset_fields():
            return text
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        stem, stop = (text[:-1], ".") if text.endswith(".") else (text, "")
        return f"{stem} (default {shown}){stop}"

    def values(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The explicitly given (non-None) values of this config's fields among ``options``."""
        return {name: options[name] for name in self.names if options.get(name) is not None}


def preset_fields() -> set[str]:
    """Fields some preset sets: their default depends on ``--preset``, so help does not print one."""
    return {name for preset in PRESETS.values() for section in preset.values() for name in section}


def cli_type(annotation: Any) -> type:
    """The type typer parses a field as: ``X | None`` → X, a ``Literal`` of strings → str."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0])
    return annotation


def config_options(*groups: ConfigOptions) -> Callable[[F], F]:
    """Give a command taking ``**options`` one typer option per field of ``groups``.

    The generated parameters replace ``**options`` in the signature typer reads; typer then calls the
    command with every one of them by name, so ``options`` holds them all (None where not given).
    """

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        if len(own) == len(signature.parameters):
            raise TypeError(f"{fn.__name__} must take **options to receive the generated config options")
        generated = [p for group in groups for p in group.parameters()]
        clashes = sorted({p.name for p in own} & {p.name for p in generated})
        if clashes:
            raise TypeError(f"{fn.__name__} declares {', '.join(clashes)} by hand and from a config")
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        fn.__signature__ = signature.replace(parameters=[*own, *generated])  # type: ignore[attr-defined]
        return fn

    return decorate

"""The plan of a sweep (``sweep.json``): what it runs, written before the first run starts.

Schema ``fnostab.sweep/1`` (keys in order): ``schema``; ``kind`` (shootout | stress); ``created``;
``command`` (the arguments of the command that wrote it); ``preset``; ``data``: {train, test,
gridsize}; ``arms``: {name: {model, train}} (each arm's options over the preset); ``seeds``;
``depths`` and ``lrs`` (the grid axes, when swept; null entries mean the preset's value);
``memory_limit`` (stress, bytes per run); ``runs``: one entry per run {arm, seed, depth, lr, dir (relative
to the sweep dir), plan (its memory plan, stress only)}.

Resuming checks a sweep dir against it and ``summarize`` loads only the runs it plans; where the
file lives is :mod:`fnostab.rundir`'s business.
"""

from __future__ import annotations

from typing import Any, Literal

from fnostab.io import DocumentPart

SWEEP_SCHEMA = "fnostab.sweep/1"
SweepKind = Literal["shootout", "stress"]


class PlanData(DocumentPart):
    """The data set every run of the sweep shares."""

    train: str | None = None
    test: str | None = None
    gridsize: int | None = None


class ArmOptions(DocumentPart):
    """An arm's model and training options on top of the preset."""

    model: dict[str, Any] = {}
    train: dict[str, Any] = {}


class PlannedRun(DocumentPart):
    """One run of the sweep and where its run dir is."""

    arm: str
    seed: int
    depth: int | None = None
    lr: float | None = None
    dir: str
    plan: dict[str, Any] | None = None


class SweepSettings(DocumentPart):
    """What a sweep command asks for, sweep-wide: the part of its plan that does not list the runs."""

    preset: str
    data: PlanData
    arms: dict[str, ArmOptions]
    seeds: list[int]
    depths: list[int | None] | None = None
    lrs: list[float | None] | None = None
    memory_limit: int | None = None


class SweepPlan(DocumentPart):
    """sweep.json as a model: :func:`fnostab.rundir.write_sweep_plan` writes it and
    :func:`fnostab.rundir.read_sweep_plan` parses it."""

    kind: SweepKind
    created: str | None = None
    command: list[str] | None = None
    preset: str | None = None
    data: PlanData | None = None
    arms: dict[str, ArmOptions]
    seeds: list[int]
    depths: list[int | None] | None = None
    lrs: list[float | None] | None = None
    memory_limit: int | None = None
    runs: list[PlannedRun]

    @property
    def planned_dirs(self) -> list[str]:
        """The run dirs of the sweep, relative to the sweep dir."""
        return [run.dir for run in self.runs]

    def to_document(self) -> dict[str, Any]:
        return {"schema": SWEEP_SCHEMA, **super().to_document()}

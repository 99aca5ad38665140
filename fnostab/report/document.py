"""The summary document (summary.json) as typed pydantic models: one place that names every key.

:func:`fnostab.report.summary.build_summary` builds a :class:`SummaryDocument`,
:func:`fnostab.report.summary.write_summary` writes it (:meth:`SummaryDocument.to_json`), and
``summarize --json``, summary.md, the terminal table, the gates and the tests read it through these
models; :func:`read_summary` loads a summary.json back. A key renamed on one side fails validation
instead of reading as a silent ``None``.

The verdict (:class:`Verdict`) is data: the outcome, each stage's checks with their numbers, and its
reasons, notes and next steps as typed codes with their numbers (:data:`Reason`, :data:`Note`,
:data:`NextStep`). Their sentences are rendered in one place, :mod:`fnostab.report.verdict_text`;
summary.json carries both the codes (``reason_codes``, ``note_codes``, ``next_step_codes``) and the
rendered text (``reasons``, ``notes``, ``next_steps``, ``decision``, ``explanation``), so a reader of
the JSON needs no fnostab to read the verdict. The text keys are derived on writing and ignored on
reading.

Schema history: ``fnostab.summary/1`` had the same content without the three ``*_codes`` keys;
``fnostab.summary/2`` adds them. The layout is in the docstring of :mod:`fnostab.report.summary`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

SUMMARY_SCHEMA = "fnostab.summary/2"

Outcome = Literal["gold", "silver", "pivot", "inconclusive"]
FixRole = Literal["arch", "opt"]


class _Model(BaseModel):
    """Every key is required and no other key is accepted: a renamed key is an error, not a None."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


class _Sparse(_Model):
    """A block whose keys depend on how far a check got (e.g. a Stage B check without a shared grid
    has no ``checks``): only the fields that were given are written, and reading gives back the same
    keys, so summary.json keeps the layout its readers know."""

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if key in self.model_fields_set}


# ------------------------------------------------------------------------------------------ per arm
class MetricStats(_Model):
    """A quality metric over an arm's successful runs, with the constant prediction's median beside it."""

    n: int
    median: float | None
    p25: float | None
    p75: float | None
    baseline_median: float | None


class ArmMetrics(_Model):
    """The quality metrics summarised per arm (see ``METRIC_NAMES`` in :mod:`fnostab.report.summary`)."""

    best_val_loss: MetricStats
    final_val_loss: MetricStats
    best_val_loss_over_floor: MetricStats
    final_val_loss_over_floor: MetricStats
    amp_ssim: MetricStats
    amp_ssim_gain: MetricStats
    amp_mae: MetricStats
    phase_ssim: MetricStats
    phase_aligned_ssim: MetricStats

    def get(self, name: str) -> MetricStats:
        """The statistics of metric ``name`` (a field name)."""
        return getattr(self, name)


class Spread(_Model):
    median: float | None
    min: float | None
    max: float | None


class TimeToFailure(_Model):
    """When an arm's failed runs failed: every step and epoch, and their spread."""

    steps: list[int | None]
    epochs: list[int | None]
    step: Spread
    epoch: Spread


class GradNormStats(_Model):
    """An arm's logged pre-clip gradient norms, every run's metrics.csv pooled."""

    runs_with_series: int
    logged_steps: int
    nonfinite: int
    max: float | None
    median: float | None
    p99: float | None
    frac_above: float | None
    above: int
    max_run: str | None
    max_step: int | None
    threshold: float
    runs_without_series: int


class RunGradNorm(_Model):
    """One run's gradient-norm statistics: from its metrics.csv, else from its result.json (which has
    no ``nonfinite`` or ``above`` count, and a fraction above 1.0 only)."""

    source: Literal["metrics.csv", "result.json"]
    logged_steps: int | None
    nonfinite: int | None
    max: float | None
    median: float | None
    p99: float | None
    frac_above: float | None
    above: int | None
    max_step: int | None


class BlockExcursion(_Model):
    block: int
    median: float | None
    peak_factor: float | None
    peak_step: int
    first_cross_step: int | None
    first_cross_factor: float | None
    first_cross_value: float | None


class FirstBlock(_Model):
    """The residual block whose gradient norm left its own median first
    (:func:`fnostab.report.stats.first_block_to_blow_up`)."""

    block: int
    step: int
    factor: float | None  # +inf (a non-finite gradient) is written as null
    value: float | None
    crossed: bool
    threshold_factor: float
    blocks: list[BlockExcursion]


class RunMetrics(_Model):
    amp_ssim: float | None
    amp_mae: float | None
    phase_ssim: float | None
    phase_aligned_ssim: float | None


class RunEntry(_Model):
    """One run of an arm. ``failure`` and ``memory_plan`` are result.json's blocks as they are;
    ``explanation`` is ``fnostab explain``'s compact entry for a diverged or collapsed run."""

    dir: str
    seed: int | None
    status: str
    failure: dict[str, Any] | None
    initial_val_loss: float | None
    best_val_loss: float | None
    final_val_loss: float | None
    noise_floor: float | None
    metrics: RunMetrics | None
    grad_norm: RunGradNorm | None
    first_block_to_blow_up: FirstBlock | None
    memory_plan: dict[str, Any] | None
    explanation: dict[str, Any] | None


class ArmSummary(_Model):
    """One arm, or one (arm, depth, lr) cell of a grid. ``n`` counts the runs that started; infeasible
    runs (memory plan over the limit) are counted apart in ``n_infeasible``."""

    label: str
    arm: str
    kind: str | None
    grid_cell: bool
    depth: int | None
    lr: float | None
    arch: str | None
    clip: str | None
    val_loss_names: list[str]
    gridsizes: list[int]
    noise_floor: float | None
    seeds: list[int | None]
    n: int
    n_infeasible: int
    n_ok: int
    failures: int
    failure_rate: float | None
    failure_ci95: list[float]
    failures_by_status: dict[str, int]
    failures_by_first_signal: dict[str, int]
    time_to_failure: TimeToFailure
    metrics: ArmMetrics
    grad_norm: GradNormStats
    runs: list[RunEntry]


# --------------------------------------------------------------------------------------- grid
class StressCell(_Model):
    """One (arm, depth, lr) cell of a grid; ``stable``: every started seed ended ok."""

    label: str
    arm: str
    depth: int | None
    lr: float | None
    arch: str | None
    clip: str | None
    n: int
    n_infeasible: int
    failures: int
    statuses: dict[str, int]
    stable: bool
    infeasible: bool


class Boundary(_Model):
    """Stability boundary per axis; None with ``*_swept`` true: unstable already at the smallest value."""

    lr: float | None
    depth: int | None
    lr_swept: bool
    depth_swept: bool


class LrAtDepth(_Model):
    depth: int
    lr: float | None
    infeasible: bool


class DepthAtLr(_Model):
    lr: float
    depth: int | None


class SeedSensitivity(_Model):
    seed: int | None
    value: float
    scores: list[float]
    initial_val_loss: float | None


class ExcludedSeed(_Model):
    seed: int | None
    reasons: list[str]


class SensitivityScores(_Model):
    """Sensitivity for one choice of ℓ* (``best_loss``): the mean over seeds, its 95% t interval
    (None from one seed) and each seed's value."""

    best_loss: float | None
    mean: float | None
    ci95: list[float] | None
    per_seed: list[SeedSensitivity]


class LrSensitivity(SensitivityScores):
    """An arm's LR sensitivity at one depth (:mod:`fnostab.report.lr_sensitivity`): per-arm ℓ* in the
    top-level fields, the ℓ* shared by all arms at that depth in ``common``."""

    arm: str
    depth: int | None
    grid: list[float]
    n_seeds: int
    excluded_seeds: list[ExcludedSeed]
    definition: str
    common: SensitivityScores


class StressArm(_Model):
    arm: str
    lr_by_depth: list[LrAtDepth]
    depth_by_lr: list[DepthAtLr]
    boundary: Boundary
    lr_sensitivity: LrSensitivity | None  # at the arm's deepest depth
    lr_sensitivity_by_depth: list[LrSensitivity]


class InfeasibleCell(_Model):
    arm: str
    depth: int | None
    lr: float | None
    seeds: list[int | None]
    dirs: list[str]
    params: int | None
    total_bytes: int | None
    geometry_error: str | None
    reason: str | None


class StressSection(_Model):
    """Grid runs (stress sweeps and shootouts over --lrs): cells, boundaries, LR sensitivity, infeasible plans."""

    cells: list[StressCell]
    arms: list[StressArm]
    lr_sensitivity: list[LrSensitivity]
    infeasible: list[InfeasibleCell]


class SeedSpread(_Model):
    """Do the seeds' interquartile ranges of a quality figure overlap between an arm and the control?"""

    label: str
    control: str
    metric: str
    median: float | None
    iqr: list[float | None]
    control_median: float | None
    control_iqr: list[float | None]
    within_spread: bool


# -------------------------------------------------------------------------------- verdict data
class Roles(_Model):
    """Which arm plays which role of the decision rules (None: no such arm)."""

    control: str | None
    arch: str | None
    opt: str | None


class ArmNumbers(_Model):
    """The Stage A numbers of one arm: failures with their 95% Wilson interval, median best val loss."""

    arm: str
    n: int
    failures: int
    failure_rate: float | None
    failure_ci95: list[float]
    median_best_val_loss: float | None
    n_ok: int
    val_loss_names: list[str]


class FailurePool(_Model):
    n: int
    failures: int
    failure_rate: float | None
    failure_ci95: list[float]


class _Code(_Model):
    """A reason, note or next step: a ``code`` naming what it says and the numbers it says it with."""


# Reasons a Stage A check gives.
class NoArm(_Code):
    code: Literal["no_arm"] = "no_arm"
    role: FixRole


class ControlNeverFailed(_Code):
    code: Literal["control_never_failed"] = "control_never_failed"
    failures: int
    n: int


class LossNamesDiffer(_Code):
    code: Literal["loss_names_differ"] = "loss_names_differ"
    role: FixRole
    names: list[str]
    control_names: list[str]


class NoSuccessfulRun(_Code):
    code: Literal["no_successful_run"] = "no_successful_run"
    role: FixRole


class ControlNoSuccessfulRun(_Code):
    code: Literal["control_no_successful_run"] = "control_no_successful_run"


class RateNotLower(_Code):
    code: Literal["rate_not_lower"] = "rate_not_lower"
    rate: float | None
    control_rate: float | None


class LossNotBelow(_Code):
    """arch's rule: its median best val loss must be below the control's."""

    code: Literal["loss_not_below"] = "loss_not_below"
    loss: float
    control_loss: float


class LossAboveTolerance(_Code):
    """opt's rule: its median best val loss may be at most ``tolerance`` above the control's."""

    code: Literal["loss_above_tolerance"] = "loss_above_tolerance"
    loss: float
    control_loss: float
    tolerance: float


# Reasons a Stage B check gives.
class NoStressRuns(_Code):
    code: Literal["no_stress_runs"] = "no_stress_runs"
    role: FixRole


class NoSharedGrid(_Code):
    code: Literal["no_shared_grid"] = "no_shared_grid"
    role: FixRole


class NoFeasibleDepth(_Code):
    code: Literal["no_feasible_depth"] = "no_feasible_depth"


class ControlNeverFailedOnGrid(_Code):
    code: Literal["control_never_failed_on_grid"] = "control_never_failed_on_grid"


class SensitivityFigure(_Model):
    """An LR sensitivity as a reason quotes it: mean and 95% interval (None: one seed)."""

    mean: float | None
    ci95: list[float] | None


class SensitivityWithinNoise(_Code):
    code: Literal["sensitivity_within_noise"] = "sensitivity_within_noise"
    sensitivity: SensitivityFigure
    control_sensitivity: SensitivityFigure


class NotBeyond(_Code):
    """No Stage B criterion held: the fix's boundary, its sensitivity (when both arms have one) and,
    when depth was swept, its failure rate at the deep setting, each against the control's."""

    code: Literal["not_beyond"] = "not_beyond"
    boundary: Boundary
    control_boundary: Boundary
    sensitivity: SensitivityFigure | None
    control_sensitivity: SensitivityFigure | None
    deep_depth: int | None  # None: depth was not swept, so no deep failure rate is compared
    deep_rate: float | None
    control_deep_rate: float | None


Reason = Annotated[
    NoArm
    | ControlNeverFailed
    | LossNamesDiffer
    | NoSuccessfulRun
    | ControlNoSuccessfulRun
    | RateNotLower
    | LossNotBelow
    | LossAboveTolerance
    | NoStressRuns
    | NoSharedGrid
    | NoFeasibleDepth
    | ControlNeverFailedOnGrid
    | SensitivityWithinNoise
    | NotBeyond,
    Field(discriminator="code"),
]


# Notes on the verdict as a whole.
class StageAOnLrGrid(_Code):
    """The plain shootout's control never failed (in ``n`` runs): Stage A taken on the grid at ``lrs``."""

    code: Literal["stage_a_on_lr_grid"] = "stage_a_on_lr_grid"
    n: int
    lrs: list[float]


class NoShootoutControl(_Code):
    code: Literal["no_shootout_control"] = "no_shootout_control"


class NoShootout(_Code):
    code: Literal["no_shootout"] = "no_shootout"


class NoStressControl(_Code):
    code: Literal["no_stress_control"] = "no_stress_control"


class Crashed(_Code):
    code: Literal["crashed"] = "crashed"
    label: str


class StageRole(_Model):
    role: FixRole
    stage: Literal["A", "B"]


class FailureIntervalsOverlap(_Code):
    code: Literal["failure_intervals_overlap"] = "failure_intervals_overlap"
    checks: list[StageRole]


class SensitivityIntervalsOverlap(_Code):
    code: Literal["sensitivity_intervals_overlap"] = "sensitivity_intervals_overlap"
    roles: list[FixRole]


Note = Annotated[
    StageAOnLrGrid
    | NoShootoutControl
    | NoShootout
    | NoStressControl
    | Crashed
    | FailureIntervalsOverlap
    | SensitivityIntervalsOverlap,
    Field(discriminator="code"),
]


# What to run next.
class ExtendLrGrid(_Code):
    code: Literal["extend_lr_grid"] = "extend_lr_grid"
    largest_lr: float


class ReproduceInstability(_Code):
    code: Literal["reproduce_instability"] = "reproduce_instability"
    n: int


class AddControl(_Code):
    code: Literal["add_control"] = "add_control"


class RunStageAOnGrid(_Code):
    code: Literal["run_stage_a_on_grid"] = "run_stage_a_on_grid"


class AddArm(_Code):
    code: Literal["add_arm"] = "add_arm"
    role: FixRole


class StressControl(_Code):
    code: Literal["stress_control"] = "stress_control"


class RaiseStress(_Code):
    code: Literal["raise_stress"] = "raise_stress"


class AddSeedsForSensitivity(_Code):
    code: Literal["add_seeds_for_sensitivity"] = "add_seeds_for_sensitivity"
    role: FixRole
    seeds: int | None  # None: too many for a few more seeds


class StressArmOnGrid(_Code):
    code: Literal["stress_arm"] = "stress_arm"
    role: FixRole


class RunStageB(_Code):
    code: Literal["run_stage_b"] = "run_stage_b"


class FixCrash(_Code):
    code: Literal["fix_crash"] = "fix_crash"
    label: str
    reason: str | None


class AddSeedsForFailureRate(_Code):
    code: Literal["add_seeds_for_failure_rate"] = "add_seeds_for_failure_rate"


class NoRuleApplies(_Code):
    code: Literal["no_rule_applies"] = "no_rule_applies"


NextStep = Annotated[
    ExtendLrGrid
    | ReproduceInstability
    | AddControl
    | RunStageAOnGrid
    | AddArm
    | StressControl
    | RaiseStress
    | AddSeedsForSensitivity
    | StressArmOnGrid
    | RunStageB
    | FixCrash
    | AddSeedsForFailureRate
    | NoRuleApplies,
    Field(discriminator="code"),
]


def _drop(data: Any, keys: tuple[str, ...]) -> Any:
    """Before validation: leave out the rendered text keys (derived from the codes on writing)."""
    return {k: v for k, v in data.items() if k not in keys} if isinstance(data, dict) else data


class StageAChecks(_Sparse):
    """arch is checked against ``beats_control_loss``, opt against ``loss_within_10pct``."""

    lower_failure_rate: bool | None = None
    beats_control_loss: bool | None = None
    loss_within_10pct: bool | None = None


class _ReasonedCheck(_Sparse):
    """A stage check with its reasons as codes; summary.json also gets their text (``reasons``), which
    is rendered on writing and dropped on reading, so the codes stay the one source."""

    reason_codes: list[Reason] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _without_text(cls, data: Any) -> Any:
        return _drop(data, ("reasons",))

    @model_serializer(mode="wrap")
    def _with_text(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        from fnostab.report.verdict_text import reason_text

        data = {key: value for key, value in handler(self).items() if key in self.model_fields_set}
        data["reasons"] = [reason_text(code) for code in self.reason_codes]
        data["reason_codes"] = data.pop("reason_codes", [])
        return data


class StageACheck(_ReasonedCheck):
    """Stage A for one fix. ``passes`` None: the data cannot say (e.g. the control never failed)."""

    present: bool
    passes: bool | None
    checks: StageAChecks | None = None
    loss_ratio: float | None = None
    intervals_overlap: bool | None = None
    numbers: ArmNumbers | None = None


class StageBGrid(_Model):
    depths: list[int]
    lrs: list[float]


class StageBSide(_Sparse):
    """One arm of a Stage B comparison; ``arm`` only on the fix's side."""

    arm: str | None = None
    boundary: Boundary
    deep: FailurePool | None
    lr_sensitivity: LrSensitivity | None = None


class StageBChecks(_Model):
    lr_beyond: bool | None
    depth_beyond: bool | None
    less_lr_sensitive: bool | None
    lower_deep_failure_rate: bool | None


class StageBCheck(_ReasonedCheck):
    """Stage B for one fix on the grid it shares with the control; ``deep_depth``: the deepest depth
    both could build. ``seeds_to_separate`` is given when a lower LR sensitivity is within seed noise."""

    present: bool
    passes: bool | None = None
    grid: StageBGrid | None = None
    deep_depth: int | None = None
    control: StageBSide | None = None
    fix: StageBSide | None = None
    control_never_failed: bool | None = None
    checks: StageBChecks | None = None
    intervals_overlap: bool | None = None
    seeds_to_separate: int | None = None


class StageA(_Sparse):
    """``source``: ``shootout`` (plain arms) or ``lr_grid`` (grid cells at the learning rates ``lrs``
    where the control failed, at ``depth``)."""

    measured: bool
    roles: Roles
    source: Literal["shootout", "lr_grid"]
    depth: int | None = None
    lrs: list[float] | None = None
    control: ArmNumbers | None = None
    arch: StageACheck
    opt: StageACheck


class StageB(_Sparse):
    measured: bool
    roles: Roles | None = None
    arch: StageBCheck
    opt: StageBCheck


class Verdict(_Model):
    """The outcome of the decision rules (docs/method.md#decision-rules) and everything behind it."""

    outcome: Outcome
    stage_a: StageA
    stage_b: StageB
    note_codes: list[Note]
    next_step_codes: list[NextStep]

    @model_validator(mode="before")
    @classmethod
    def _without_text(cls, data: Any) -> Any:
        return _drop(data, ("decision", "explanation", "notes", "next_steps"))

    @model_serializer(mode="wrap")
    def _with_text(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        from fnostab.report import verdict_text

        data = handler(self)
        return {
            "outcome": data["outcome"],
            "decision": verdict_text.decision(self.outcome),
            "explanation": verdict_text.explanation(self),
            "stage_a": data["stage_a"],
            "stage_b": data["stage_b"],
            "notes": [verdict_text.note_text(note) for note in self.note_codes],
            "next_steps": [verdict_text.next_step_text(step) for step in self.next_step_codes],
            "note_codes": data["note_codes"],
            "next_step_codes": data["next_step_codes"],
        }


# ------------------------------------------------------------------------------------ the document
class GateResult(_Model):
    """One (gate, arm) of ``--fail-on``; ``passed`` None: skipped, no run of the arm started."""

    gate: str
    metric: str
    arm: str
    op: str
    threshold: float
    value: float | None
    passed: bool | None


class RunsCount(_Model):
    finished: int
    unfinished: list[str]
    outside_plan: list[str]


class SweepEntry(_Model):
    path: str
    kind: str | None
    arms: list[str]
    seeds: list[int]


class PlotsRecord(_Model):
    written: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)


class SummaryDocument(_Model):
    """summary.json. ``out_dir``, ``gates``, ``gates_passed`` and ``plots`` are filled in by
    :func:`fnostab.report.summary.summarize` (gates and plots need the output and the command line)."""

    schema_: Literal[SUMMARY_SCHEMA] = Field(SUMMARY_SCHEMA, alias="schema")  # a /1 file lacks the codes
    created: str
    inputs: list[str]
    out_dir: str | None
    grad_norm_threshold: float
    gridsizes: list[int]
    runs: RunsCount
    sweeps: list[SweepEntry]
    arms: list[ArmSummary]
    stress: StressSection | None
    seed_spread: list[SeedSpread]
    verdict: Verdict
    gates: list[GateResult]
    gates_passed: bool
    plots: PlotsRecord
    warnings: list[str]

    def to_json(self) -> dict[str, Any]:
        """The JSON object of summary.json: rendered verdict text included, non-finite numbers as null."""
        from fnostab.io import to_jsonable

        return to_jsonable(self.model_dump(mode="json", by_alias=True))


def read_summary(path: Path | str) -> SummaryDocument:
    """Load a summary.json written by this version; InputError naming the file and the first wrong key."""
    from fnostab.io import parse_document, read_json_document

    return parse_document(path, read_json_document(path, SUMMARY_SCHEMA), SummaryDocument)

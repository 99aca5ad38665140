"""One training run, end to end: validate → train → evaluate → write the run dir.

:func:`prepare_run` does everything that can fail on bad input (loading and checking the data,
planning the model, resolving the device) before anything is written; :func:`run_training` then
trains, and never raises for a failed run: NaN, blow-up, collapse, out-of-memory and unexpected
errors all end as a ``status`` in ``result.json``. Files appear atomically; ``result.json`` is
written last, so its presence marks a finished run.

:func:`run_training` is a sequence of named steps: ``_start`` (config.json, seeds, the generator,
its module and loggers), ``_train`` (Lightning's fit, reporting progress), ``_failure`` (what ended
training), ``_finish`` (error.log, metrics.csv, the checkpoint, the evaluation and its
reconstruction; a failed write becomes the run's failure), ``_trained_result`` (the
:class:`~fnostab.training.result.RunResult`) and ``_write_result`` (result.json, last). The files
and their names are listed in :mod:`fnostab.rundir`.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fnostab.config import RunConfig
from fnostab.data.npz import PtychoSplit, load_pair
from fnostab.devices import resolve_device_name
from fnostab.errors import InputError, Terminated
from fnostab.io import atomic_path, write_json_atomic, write_text_atomic
from fnostab.physics import val_loss_name
from fnostab.progress import SILENT, Progress
from fnostab.rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    ERROR_LOG_NAME,
    LOGS_NAME,
    METRICS_NAME,
    RECONSTRUCTION_NPZ_NAME,
    RECONSTRUCTION_PNG_NAME,
    RESULT_NAME,
)
from fnostab.training import distributed
from fnostab.training.checkpoint import save_checkpoint
from fnostab.training.failure import Failure
from fnostab.training.loggers import LoggingOptions, build_loggers, record_status
from fnostab.training.result import (
    DataInfo,
    DeviceInfo,
    FailureInfo,
    ModelInfo,
    RunResult,
    SweepInfo,
    Timing,
    TrainingInfo,
    best_and_final,
    grad_norm_stats,
    loss_levels,
    now_iso,
    versions,
)

INFERENCE_BATCH = 128


@dataclass(frozen=True)
class PreparedRun:
    """A validated run: its data in memory, the model plan and the device, nothing written yet."""

    config: RunConfig
    train: PtychoSplit
    test: PtychoSplit
    plan: Any
    accelerator: str

    @property
    def N(self) -> int:
        return self.train.N

    @property
    def channels(self) -> int:
        return self.train.channels


def load_data(config: RunConfig) -> tuple[PtychoSplit, PtychoSplit]:
    """The run's data: its two NPZ files, or the preset's simulated data set (cached)."""
    if config.data.train is not None:
        return load_pair(config.data.train, config.data.test)
    from fnostab.data.cache import load_cached_pair

    return load_cached_pair(config.data.simulation)


def config_gridsize(config: RunConfig) -> int | None:
    """The gridsize ``config`` asks for (``data.gridsize``, else its simulation's), None when the files decide."""
    if config.data.gridsize is not None:
        return config.data.gridsize
    return config.data.simulation.gridsize if config.data.simulation is not None else None


def plan_run(config: RunConfig, N: int, channels: int | None = None) -> Any:
    """The memory plan of one training step of ``config`` at N with C = ``channels`` patterns per
    sample (default: gridsize² of the config's data) on one device: its model, its part of the batch
    (the global batch split over ``devices`` processes) and optimizer."""
    from fnostab.models import plan

    if channels is None:
        channels = (config_gridsize(config) or 1) ** 2
    train = config.train
    return plan(
        config.model,
        batch_size=math.ceil(train.batch_size / train.devices),
        N=N,
        channels=channels,
        optimizer=train.optimizer,
        weight_decay=train.weight_decay,
        momentum=train.momentum,
    )


def check_gridsize(config: RunConfig, train: PtychoSplit) -> None:
    """InputError when the data do not have the gridsize the run asks for (``--gridsize``)."""
    wanted = config_gridsize(config)
    if wanted is not None and wanted != train.gridsize:
        raise InputError(
            f"gridsize mismatch: the run asks for gridsize {wanted}, {train.path} holds gridsize {train.gridsize} "
            f"({train.channels} channel(s) per sample); simulate the data with --gridsize {wanted} or drop --gridsize"
        )


def prepare_run(config: RunConfig, data: tuple[PtychoSplit, PtychoSplit] | None = None) -> PreparedRun:
    """Validate everything a run needs; raises InputError (nothing written) on bad input."""
    from fnostab.training.data import validation_subset

    train, test = data if data is not None else load_data(config)
    check_gridsize(config, train)
    accelerator = resolve_device_name(config.train.accelerator, "--accelerator")
    n_val = len(validation_subset(test.n, config.train.val_patches))
    distributed.check_devices(config.train.devices, accelerator, n_val)
    model_plan = plan_run(config, train.N, train.channels)
    if model_plan.geometry_error:
        raise InputError(f"invalid model for N={train.N}: {model_plan.geometry_error}")
    check_evaluable(test)
    return PreparedRun(config, train, test, model_plan, accelerator)


def check_evaluable(test: PtychoSplit) -> None:
    """Raise InputError now, before any training, when ``test`` has the evaluation fields but a
    geometry the evaluation would reject (centres outside the object, a ground truth too small for
    the stitched region): found only after training, it cost the whole run and gave null metrics.

    A split that lacks those fields altogether is fine: the run is then validated but not scored.
    The check scores a constant prediction through the evaluation's own code, so it rejects exactly
    what the evaluation would, at the cost of two image-sized scorings.
    """
    if _missing_evaluation_fields(test):
        return
    window = test.groups.window  # N at gridsize 1
    constant = np.broadcast_to(np.ones((1, window, window), dtype=np.complex64), (test.n, window, window))
    try:
        _score(constant, test)
    except InputError as problem:
        raise InputError(f"{test.path}: the test split cannot be evaluated: {problem}") from None


def _missing_evaluation_fields(test: PtychoSplit) -> list[str]:
    """What ``test`` lacks for stitched metrics (empty: it can be scored)."""
    fields = (("coords_offsets", test.centres), ("norm_Y_I", test.norm_Y_I), ("scan stride", test.stride()))
    missing = [name for name, value in fields if value is None]
    if test.ground_truth is None and test.full_objects is None:
        missing.append("YY_ground_truth or YY_full")
    return missing


def _score(windows: np.ndarray, test: PtychoSplit) -> tuple[dict, np.ndarray]:
    """Stitched metrics of one predicted window per sample against the split's true object, and that
    true region (the split's own, or cut from YY_full at the windows' size)."""
    from fnostab.evaluation import evaluate_reconstruction, ground_truth_region

    stride = test.stride()
    truth = test.ground_truth
    if truth is None:
        truth = ground_truth_region(test.full_objects, test.centres, windows.shape[-1], stride)
    metrics = evaluate_reconstruction(
        windows,
        centres=test.centres,
        stride=stride,
        ground_truth=truth,
        norm_Y_I=test.norm_Y_I,
        n_images=test.n_images,
    )
    return metrics, truth


@functools.cache
def _quiet_lightning() -> None:
    """Keep Lightning's banners and per-batch deprecation noise off the user's stderr (once per process)."""
    import lightning.pytorch  # noqa: F401 - importing it sets its loggers' levels, which are overridden below

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LightningModule.*has no.*")
    # lightning 2.6 builds torch pytree LeafSpecs, which torch 2.13 deprecates on every batch.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def _predict(generator: torch.nn.Module, diffraction: np.ndarray, device: torch.device) -> np.ndarray:
    """(n, C, N, N) patterns → (n, C, N, N) complex64 predicted patches."""
    generator.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, diffraction.shape[0], INFERENCE_BATCH):
            batch = torch.from_numpy(diffraction[start : start + INFERENCE_BATCH]).to(device)
            parts.append(generator(batch).cpu().numpy())
    return np.concatenate(parts).astype(np.complex64)


def predicted_windows(generator: torch.nn.Module, test: PtychoSplit, device: torch.device) -> np.ndarray:
    """One complex (M, M) object window per test sample, centred on its ``coords_offsets``: the
    patch itself at gridsize 1, the group's C patches reassembled (overlaps averaged, as the
    forward model does) at gridsize > 1 (docs/gridsize.md#evaluation)."""
    prediction = _predict(generator, test.diffraction, device)
    if test.gridsize == 1:
        return prediction[:, 0]
    return test.groups.reassemble_np(prediction).astype(np.complex64)


def evaluate_run(
    generator: torch.nn.Module, test: PtychoSplit, device: torch.device, run_dir: Path | None
) -> tuple[dict | None, str | None]:
    """Stitched test-set metrics (and reconstruction files in ``run_dir``), or None and why not."""
    from fnostab.evaluation import save_reconstruction_png, stitch_patches

    missing = _missing_evaluation_fields(test)
    if missing:
        return None, f"{test.path} lacks {', '.join(missing)}: no stitched metrics"
    if not all(torch.isfinite(p).all() for p in generator.parameters()):
        return None, "the weights are not finite: no stitched metrics"
    prediction = predicted_windows(generator, test, device)
    metrics, truth = _score(prediction, test)
    if run_dir is not None:
        stitched = stitch_patches(prediction, test.centres, test.stride(), test.n_images) * np.float32(test.norm_Y_I)
        with atomic_path(run_dir / RECONSTRUCTION_NPZ_NAME) as tmp, tmp.open("wb") as handle:
            np.savez(handle, reconstruction=stitched.astype(np.complex64), ground_truth=truth.astype(np.complex64))
        save_reconstruction_png(run_dir / RECONSTRUCTION_PNG_NAME, stitched[0], truth[0], metrics)
    return metrics, None


def _progress_callback(advance: Callable[[int], None]) -> Any:
    import lightning.pytorch as pl

    class _Advance(pl.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            advance(1)

    return _Advance()


def _fit(
    module: Any,
    prepared: PreparedRun,
    log_dir: Path,
    advance: Callable[[int], None] | None = None,
    loggers: list[Any] | None = None,
) -> BaseException | None:
    """Run Lightning's fit; returns the exception that ended it abnormally (never KeyboardInterrupt).

    ``loggers`` come after the CSVLogger of ``log_dir`` (which metrics.csv is copied from)."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fnostab.training.data import eval_loader, rank_part, train_loader, validation_subset

    config = prepared.config.train
    rank, world = (distributed.global_rank(), config.devices) if config.devices > 1 else (0, 1)
    val_idx = rank_part(validation_subset(prepared.test.n, config.val_patches), rank, world)
    trainer = pl.Trainer(
        accelerator=prepared.accelerator,
        devices=config.devices,
        strategy=distributed.strategy(config.devices),
        use_distributed_sampler=False,  # each rank takes its own part of the seeded global batches
        precision="32-true" if config.precision == "32" else "bf16-mixed",
        max_epochs=config.epochs,
        logger=[CSVLogger(save_dir=log_dir, name="", version=""), *(loggers or [])],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # The sanity check runs the whole validation set before the first step: the initial loss ℓ0.
        num_sanity_val_steps=-1,
        deterministic=False,
        callbacks=[_progress_callback(advance)] if advance is not None else [],
    )
    loaders = (
        train_loader(prepared.train.diffraction, config.batch_size, config.seed, rank, world),
        eval_loader(prepared.test.diffraction[val_idx], max(config.batch_size, 64)),
    )
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, *loaders)
    except SIGTERMException:
        # Lightning's own SIGTERM handler only sets a flag and ends fit with this SystemExit
        # (code None: exit 0); a SIGTERM must stop the command as Ctrl-C does.
        raise Terminated() from None
    except SystemExit as exit_:
        # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on: undo both
        # (the SIGINT disposition is restored below), keeping SIGTERM's Terminated apart.
        if isinstance(exit_.__context__, KeyboardInterrupt):
            raise (Terminated() if isinstance(exit_.__context__, Terminated) else KeyboardInterrupt()) from None
        raise
    except KeyboardInterrupt:
        raise
    except Exception as error:  # every other failure is an outcome, recorded by the caller
        return error
    finally:
        if threading.current_thread() is threading.main_thread():  # signal.signal fails in any other
            signal.signal(signal.SIGINT, previous_sigint)
    return None


@dataclass
class _Session:
    """A run being trained: the Lightning module (which records losses, norms and the failure), the
    generator inside it, the extra loggers, and whether this process writes the run dir."""

    module: Any
    generator: torch.nn.Module
    loggers: list[Any]
    log_dir: Path
    writer: bool


def _start(
    prepared: PreparedRun,
    run_dir: Path,
    generator: torch.nn.Module | None,
    logging: LoggingOptions | None,
    sweep: SweepInfo | None,
) -> _Session:
    """Write config.json (rank 0), seed everything, build the generator, its module and the loggers."""
    import lightning.pytorch as pl

    from fnostab.models import build_generator, channels_last_convs
    from fnostab.training.module import PtychoModule

    config = prepared.config
    writer = config.train.devices == 1 or distributed.is_rank_zero()  # rank 0 alone writes the run dir
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_NAME, config.to_json_dict())
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    pl.seed_everything(config.train.seed, verbose=False)
    if generator is None:
        generator = build_generator(config.model, prepared.N, prepared.channels)
        if prepared.accelerator == "cpu":
            channels_last_convs(generator)
    module = PtychoModule(generator, prepared.train.probe, config.train, prepared.train.groups)
    if module.precursors is not None:
        module.precursors.out_dir = run_dir
    hyperparameters = {**config.to_json_dict(), **({"sweep": sweep.to_document()} if sweep else {})}
    loggers = build_loggers(logging, run_dir, hyperparameters, writer=writer)
    return _Session(module, generator, loggers, run_dir / LOGS_NAME, writer)


def _train(session: _Session, prepared: PreparedRun, progress: Progress) -> tuple[BaseException | None, float]:
    """Fit, advancing ``progress`` per step; returns the exception that ended training (None when it ran
    its epochs or stopped on a recorded failure) and the seconds it took. An interrupt propagates."""
    config = prepared.config
    progress.log(
        f"training {config.model.arch} ({prepared.plan.params:,} params) for {config.train.epochs} epochs "
        f"on {prepared.accelerator} ..."
    )
    started = time.perf_counter()
    total = config.train.epochs * math.ceil(prepared.train.n / config.train.batch_size)
    try:
        with progress.progress("training steps", total) as advance:
            error = _fit(session.module, prepared, session.log_dir, advance, session.loggers)
    except BaseException:
        shutil.rmtree(session.log_dir, ignore_errors=True)  # interrupted: leave config.json alone, as Ctrl-C always did
        raise
    return error, time.perf_counter() - started


def _failure(module: Any, error: BaseException | None) -> Failure | None:
    """The run's failure: the one the module detected (diverged, collapsed), or the exception that ended
    training (``oom`` or ``error``), or None."""
    if error is None:
        return module.failure
    status = "oom" if _is_oom(error) else "error"
    return Failure(status, f"{type(error).__name__}: {error}".strip()[:500], module.steps_seen, module.current_epoch)


def _write_outputs(
    run_dir: Path,
    session: _Session,
    prepared: PreparedRun,
    failure: Failure | None,
    error: BaseException | None,
) -> tuple[dict | None, str | None]:
    """Write what a trained run leaves besides result.json (error.log, metrics.csv, the checkpoint,
    the reconstruction) and evaluate it; returns (metrics, note). An OSError (a failed write) is
    raised: the caller records it as the run's failure."""
    generator, module = session.generator, session.module
    if error is not None:
        write_text_atomic(run_dir / ERROR_LOG_NAME, "".join(traceback.format_exception(error)))
    csv = session.log_dir / METRICS_NAME
    if csv.is_file():
        with atomic_path(run_dir / METRICS_NAME) as tmp:
            shutil.copyfile(csv, tmp)
    generator.cpu()
    save_checkpoint(
        run_dir / CHECKPOINT_NAME,
        generator,
        prepared.config.model,
        prepared.N,
        epoch=module.current_epoch,
        step=module.steps_seen,
        gridsize=prepared.train.gridsize,
    )
    if failure is not None and failure.status not in ("diverged", "collapsed"):
        return None, f"not evaluated: status {failure.status}"
    device = torch.device("cuda" if prepared.accelerator == "cuda" else "cpu")
    try:
        return evaluate_run(generator.to(device), prepared.test, device, run_dir)
    except InputError as problem:
        return None, f"evaluation impossible: {problem}"
    except OSError:
        raise
    except Exception as problem:  # noqa: BLE001 - the trained run stands; its evaluation failing is recorded
        write_text_atomic(run_dir / ERROR_LOG_NAME, "".join(traceback.format_exception(problem)))
        return None, f"evaluation failed: {type(problem).__name__}: {problem}".strip()[:500]
    finally:
        generator.cpu()


def _finish(
    run_dir: Path, session: _Session, prepared: PreparedRun, failure: Failure | None, error: BaseException | None
) -> tuple[Failure | None, dict | None, str | None, float]:
    """Write the run's files and evaluate it: (failure, metrics, evaluation note, seconds). A failed
    write is an outcome of the run, not a crash: it becomes the failure (status error), never an ok
    run with the missing parts silently null. Lightning's scratch dir goes in any case."""
    started = time.perf_counter()
    module = session.module
    try:
        metrics, note = _write_outputs(run_dir, session, prepared, failure, error)
    except OSError as problem:
        reason = f"could not write the run dir: {problem}"[:500]
        failure = Failure("error", reason, module.steps_seen, module.current_epoch)
        metrics, note = None, "not evaluated: the run dir could not be written"
    finally:
        shutil.rmtree(session.log_dir, ignore_errors=True)
    return failure, metrics, note, time.perf_counter() - started


def _trained_result(
    prepared: PreparedRun,
    module: Any,
    failure: Failure | None,
    metrics: dict | None,
    note: str | None,
    timing: Timing,
    sweep: SweepInfo | None,
    memory_plan: dict[str, Any] | None,
    extra: dict[str, Any] | None,
) -> RunResult:
    """The result document of a run that trained (whatever its status)."""
    from fnostab.training.data import validation_subset

    config = prepared.config
    best, best_epoch, final = best_and_final(module.val_losses)
    fields: dict[str, Any] = dict(
        name=config.name,
        status="ok" if failure is None else failure.status,
        failure=None if failure is None else FailureInfo.of(failure),
        seed=config.train.seed,
        model=ModelInfo(
            arch=config.model.arch,
            params=prepared.plan.params,
            params_real=prepared.plan.params_real,
            config=config.model.model_dump(mode="json"),
        ),
        data=DataInfo(
            train=str(prepared.train.path),
            test=str(prepared.test.path),
            N=prepared.N,
            gridsize=prepared.train.gridsize,
            channels=prepared.channels,
            offset=prepared.train.groups.offset,
            n_train=prepared.train.n,
            n_val=len(validation_subset(prepared.test.n, config.train.val_patches)),
            n_test=prepared.test.n,
        ),
        training=TrainingInfo(
            config=config.train.model_dump(mode="json"),
            epochs_requested=config.train.epochs,
            epochs_completed=module.epochs_completed,
            steps=module.steps_seen,
            val_loss_name=module.val_key,
            val_losses=module.val_losses,
            train_losses=module.train_losses,
            best_val_loss=best,
            best_epoch=best_epoch,
            final_val_loss=final,
            final_train_loss=module.train_losses[-1] if module.train_losses else None,
            **loss_levels(module.initial_val_loss, best, final, prepared.test.noise_floor(config.train.loss)),
        ),
        grad_norm=grad_norm_stats(module.grad_norms),
        metrics=metrics,
        evaluation_note=note,
        memory_plan=memory_plan,
        timing=timing,
        device=DeviceInfo(
            accelerator=prepared.accelerator,
            threads=torch.get_num_threads(),
            devices=config.train.devices,
            name=torch.cuda.get_device_name() if prepared.accelerator == "cuda" else "cpu",
        ),
        versions=versions(),
        created=now_iso(),
        **({"sweep": sweep} if sweep is not None else {}),
    )
    return RunResult(**{**fields, **(extra or {})})


def _write_result(run_dir: Path, result: RunResult, loggers: list[Any], progress: Progress) -> None:
    """Close the extra loggers with the run's status, then write result.json: the run is finished."""
    logger_note = record_status(loggers, result.status)
    if logger_note:
        progress.log(f"warning: {logger_note}")
    write_json_atomic(run_dir / RESULT_NAME, result.to_document())


def run_training(
    prepared: PreparedRun,
    run_dir: Path,
    *,
    progress: Progress | None = None,
    sweep: SweepInfo | None = None,
    memory_plan: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    generator: torch.nn.Module | None = None,
    logging: LoggingOptions | None = None,
) -> dict[str, Any]:
    """Train, evaluate and write ``run_dir``; returns the result document (also in result.json).

    ``progress`` hears what the run does (a step counter, a warning); it is silent by default.
    ``sweep`` says which sweep run this is and ``memory_plan`` what it was planned to need (both
    recorded in the result); ``extra`` adds keys of the caller's own to the result.
    ``generator`` replaces the one the config describes (any module mapping (B, C, N, N)
    patterns to complex (B, C, N, N) object patches, C = gridsize²); it is built from the config by default.
    ``logging`` adds TensorBoard / MLflow loggers to metrics.csv. With ``devices`` > 1 the run is
    launched on that many processes (:mod:`fnostab.training.distributed`); rank 0 writes ``run_dir``.
    """
    progress = progress or SILENT
    if prepared.config.train.devices > 1 and not distributed.launched():
        progress.log(f"launching {prepared.config.train.devices} processes (DDP) ...")
        return distributed.launch(
            prepared, run_dir, sweep=sweep, memory_plan=memory_plan, extra=extra, generator=generator, logging=logging
        )
    _quiet_lightning()
    started = time.perf_counter()
    session = _start(prepared, run_dir, generator, logging, sweep)
    error, train_s = _train(session, prepared, progress)
    if not session.writer:
        return distributed.finish_other_rank(error)
    failure, metrics, note, eval_s = _finish(run_dir, session, prepared, _failure(session.module, error), error)
    samples = session.module.samples_seen
    timing = Timing(
        wall_s=time.perf_counter() - started,
        train_s=train_s,
        eval_s=eval_s,
        samples_per_s=(samples / train_s) if train_s > 0 else None,
    )
    result = _trained_result(prepared, session.module, failure, metrics, note, timing, sweep, memory_plan, extra)
    _write_result(run_dir, result, session.loggers, progress)
    return result.to_document()


def record_bare_result(
    run_dir: Path,
    config: RunConfig,
    status: str,
    reason: str,
    *,
    plan: dict[str, Any] | None = None,
    sweep: SweepInfo | None = None,
) -> RunResult:
    """Write the run dir of a run with no training record: one that could not start (``infeasible``:
    its memory plan is over the limit) or whose process died without a word (killed by the OS)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / CONFIG_NAME, config.to_json_dict())
    result = RunResult(
        name=config.name,
        status=status,
        failure=FailureInfo.of(Failure(status, reason, 0, 0)),
        seed=config.train.seed,
        model=ModelInfo(
            arch=config.model.arch,
            params=(plan or {}).get("params"),
            params_real=(plan or {}).get("params_real"),
            config=config.model.model_dump(mode="json"),
        ),
        data=DataInfo(train=str(config.data.train), test=str(config.data.test), gridsize=config_gridsize(config)),
        training=TrainingInfo(
            config=config.train.model_dump(mode="json"),
            epochs_requested=config.train.epochs,
            epochs_completed=0,
            steps=0,
            val_loss_name=val_loss_name(config.train.loss),
            val_losses=[],
            train_losses=[],
            best_val_loss=None,
            best_epoch=None,
            final_val_loss=None,
            final_train_loss=None,
            **loss_levels(None, None, None, None),
        ),
        grad_norm=None,
        metrics=None,
        evaluation_note=f"not run: {status}" if status == "infeasible" else f"not evaluated: status {status}",
        memory_plan=plan,
        timing=Timing(wall_s=0.0, train_s=0.0, eval_s=0.0, samples_per_s=None),
        device=None,
        versions=versions(),
        created=now_iso(),
        **({"sweep": sweep} if sweep is not None else {}),
    )
    write_json_atomic(run_dir / RESULT_NAME, result.to_document())
    return result

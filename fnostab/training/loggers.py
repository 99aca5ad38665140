"""Where a run's metrics go besides metrics.csv: TensorBoard and MLflow (``--logger``, repeatable).

metrics.csv (Lightning's CSVLogger layout) is always written, because summaries read it; the other
loggers are Lightning's own ``TensorBoardLogger`` and ``MLFlowLogger`` and receive the same rows
under the same metric names, with the run config as hyperparameters.

* TensorBoard: event files in ``RUN/tensorboard/``; ``tensorboard --logdir SWEEP/runs`` shows every
  run of a sweep under its path (``control/seed-0/tensorboard``).
* MLflow: one MLflow run per fnostab run, named after its run dir inside the sweep and tagged with
  ``arm``, ``seed`` (and ``depth``, ``lr`` in stress sweeps) and, once finished, ``fnostab.status``.
  The tracking store defaults to a local file store ``mlruns/`` inside the sweep or run dir;
  ``--mlflow-uri`` names another store or a tracking server. MLflow 3 keeps its file store in
  maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which is set whenever the store is a file store.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnostab.errors import InputError

LOGGER_CHOICES: tuple[str, ...] = ("csv", "tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
_EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger → the module its extra installs


@dataclass(frozen=True)
class LoggingOptions:
    """Which loggers a run writes to besides metrics.csv, and where MLflow keeps its runs.

    ``mlflow_uri`` None means the local file store ``mlruns/`` under ``store_dir`` (the sweep dir; the
    run dir when None); ``experiment`` is the MLflow experiment; ``run_name`` and ``tags`` name and tag the run.
    """

    loggers: tuple[str, ...] = ()
    mlflow_uri: str | None = None
    store_dir: Path | None = None
    experiment: str = "fnostab"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def tracking_uri(self, run_dir: Path | None = None) -> str:
        if self.mlflow_uri:
            return self.mlflow_uri
        store = self.store_dir if self.store_dir is not None else run_dir
        if store is None:
            raise ValueError("an MLflow file store needs store_dir or a run dir")
        return (store.resolve() / MLFLOW_DIR).as_uri()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for a worker process."""
        return {
            "loggers": list(self.loggers),
            "mlflow_uri": self.mlflow_uri,
            "store_dir": None if self.store_dir is None else str(self.store_dir),
            "experiment": self.experiment,
            "run_name": self.run_name,
            "tags": dict(self.tags),
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> LoggingOptions:
        store = document.get("store_dir")
        return cls(
            tuple(document["loggers"]),
            document.get("mlflow_uri"),
            None if store is None else Path(store),
            document["experiment"],
            document.get("run_name"),
            dict(document.get("tags") or {}),
        )

    def for_run(self, run_name: str, tags: dict[str, Any]) -> LoggingOptions:
        """These options for one run of a sweep (its MLflow run name and tags)."""
        return LoggingOptions(
            self.loggers,
            self.mlflow_uri,
            self.store_dir,
            self.experiment,
            run_name,
            {k: str(v) for k, v in tags.items() if v is not None},
        )


def parse_logging(
    loggers: Iterable[str] | None, mlflow_uri: str | None, store_dir: Path | None = None, experiment: str = "fnostab"
) -> LoggingOptions:
    """Validate ``--logger`` values and ``--mlflow-uri``; raises InputError for a bad name or a missing extra."""
    chosen: list[str] = []
    for name in loggers or ():
        if name not in LOGGER_CHOICES:
            raise InputError(f"invalid --logger: expected one of {', '.join(LOGGER_CHOICES)}, got {name!r}")
        if name != "csv" and name not in chosen:
            chosen.append(name)
    for name in chosen:
        if importlib.util.find_spec(_EXTRAS[name]) is None:
            raise InputError(f"--logger {name} needs the {name} extra: pip install 'fnostab[{name}]'")
    if mlflow_uri is not None and "mlflow" not in chosen:
        raise InputError("--mlflow-uri needs --logger mlflow")
    return LoggingOptions(tuple(chosen), mlflow_uri, store_dir, experiment)


def _allow_file_store(uri: str) -> None:
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def prepare_store(options: LoggingOptions | None) -> None:
    """Create the MLflow experiment once, before parallel runs would race to create it."""
    if options is None or "mlflow" not in options.loggers or (options.mlflow_uri is None and options.store_dir is None):
        return
    _ensure_experiment(options.tracking_uri(), options.experiment)


def _ensure_experiment(uri: str, name: str) -> None:
    _allow_file_store(uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name)
        except MlflowException:  # created meanwhile by a parallel run
            if client.get_experiment_by_name(name) is None:
                raise


def build_loggers(
    options: LoggingOptions | None, run_dir: Path, hyperparameters: dict[str, Any], *, writer: bool = True
) -> list[Any]:
    """The loggers after the CSVLogger: one per chosen kind, the run config logged as hyperparameters.

    ``writer`` is False on DDP ranks other than 0: their loggers exist (Lightning expects the same
    loggers on every rank) but Lightning lets only rank 0 write."""
    if options is None:
        return []
    loggers: list[Any] = []
    for name in options.loggers:
        if name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            logger = TensorBoardLogger(save_dir=run_dir, name=TENSORBOARD_DIR, version="", default_hp_metric=False)
        else:
            from lightning.pytorch.loggers import MLFlowLogger

            uri = options.tracking_uri(run_dir)
            _allow_file_store(uri)  # every rank: Lightning opens the store on each
            if writer:
                _ensure_experiment(uri, options.experiment)  # Lightning would announce creating it on stderr
            logger = MLFlowLogger(
                experiment_name=options.experiment,
                run_name=options.run_name or run_dir.name,
                tracking_uri=uri,
                tags=options.tags or None,
            )
        logger.log_hyperparams(hyperparameters)
        loggers.append(logger)
    return loggers


def record_status(loggers: Iterable[Any], status: str) -> str | None:
    """Tag the MLflow run with the run's final status (``ok``, ``diverged``, ...) for filtering.

    Returns why that failed (a tracking server gone meanwhile), or None: the run's own record,
    result.json, is written whatever happens here."""
    for logger in loggers:
        if type(logger).__name__ == "MLFlowLogger":
            try:
                logger.experiment.set_tag(logger.run_id, "fnostab.status", status)
            except Exception as error:
                return f"MLflow status tag not written: {type(error).__name__}: {error}"[:300]
    return None

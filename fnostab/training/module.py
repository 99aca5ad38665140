"""The LightningModule of one physics-informed training run.

Manual optimisation, so that every step is explicit: physics loss → backward → pre-clip global L2
gradient norm → clip → post-clip norm → optimiser step. The loss and the pre-clip norm are read
back to the host once per step (one small transfer, not one per parameter) because the failure
detector must stop a run at the first non-finite value, before the optimiser corrupts the weights.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from fnostab.clipping import clip_gradients_, parse_clip_spec
from fnostab.config import TrainConfig
from fnostab.groups import GroupGeometry
from fnostab.physics import loss_denominator, physics_loss, predicted_amplitude, train_loss_name, val_loss_name
from fnostab.training.distributed import all_reduce_sum
from fnostab.training.failure import Failure, FailureDetector
from fnostab.training.monitoring import BlockMonitor
from fnostab.training.precursors import recorder_for
from fnostab.training.schedules import build_optimizer, build_scheduler


class PtychoModule(pl.LightningModule):
    """Trains ``generator`` so that the far field of generator(diffraction)·probe matches the data."""

    def __init__(
        self, generator: torch.nn.Module, probe: np.ndarray, config: TrainConfig, groups: GroupGeometry | None = None
    ) -> None:
        super().__init__()
        # At gridsize > 1 the C patches of a sample are reassembled into one object region before
        # the far field is taken (docs/gridsize.md); None or gridsize 1: every patch on its own.
        self.groups = groups if groups is not None and groups.gridsize > 1 else None
        self.automatic_optimization = False
        self.generator = generator
        self.register_buffer("probe", torch.from_numpy(np.asarray(probe, dtype=np.complex64)))
        self.config = config
        self.clip_spec = parse_clip_spec(config.clip)
        self.clipping = self.clip_spec.algo != "none"
        self.train_key = train_loss_name(config.loss)
        self.val_key = val_loss_name(config.loss)
        self.detector = FailureDetector(config.blowup_factor, config.collapse_threshold)
        self.monitor = BlockMonitor(generator) if config.monitor_every else None
        self.precursors = recorder_for(generator, config)  # fnostab.training.precursors; run dir set by the runner
        self.steps_seen = 0
        # Epochs whose every training step ran (a run that fails mid-epoch has not completed it).
        self.epochs_completed = 0
        self.samples_seen = 0
        self.grad_norms: list[float] = []  # pre-clip norm of every step, for result.json statistics
        self.val_losses: list[float] = []
        # ℓ0 of the LR-sensitivity metric: the validation loss before the first step (Lightning's
        # sanity check, run over the whole validation set; see runner._fit).
        self.initial_val_loss: float | None = None
        self.train_losses: list[float] = []
        self._scheduler: Any = None
        self._epoch_loss_sum = 0.0
        self._epoch_steps = 0
        self._val_sum = torch.zeros(3, dtype=torch.float64)  # Σ loss·B, Σ relative amplitude std, count

    # ------------------------------------------------------------------------------------ set-up
    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = build_optimizer(self.generator.parameters(), self.config)
        self._scheduler = build_scheduler(optimizer, self.config)
        return optimizer

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        return self.generator(patterns)

    @property
    def failure(self) -> Failure | None:
        return self.detector.failure

    def _loss(self, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obj = self.generator(patterns)
        return physics_loss(self.config.loss, predicted_amplitude(obj, self.probe, self.groups), patterns), obj

    # ---------------------------------------------------------------------------------- training
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        step = self.steps_seen
        monitored = self.monitor is not None and step % self.config.monitor_every == 0
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        if monitored:
            self.monitor.attach()
        batch, count = batch if isinstance(batch, (tuple, list)) else (batch, batch.shape[0])
        try:
            loss, _ = self._loss(batch)
            reported, samples = loss.detach(), None
            if self.trainer.world_size > 1:
                loss, reported, samples = self._global_batch_loss(batch, count, loss)
            self.manual_backward(loss)
        finally:
            block_stats = self.monitor.detach() if monitored else {}
        if self.precursors is not None:
            self.precursors.capture(step, optimizer, lambda: self._loss(batch)[0])
        logs_norms = self.config.log_grad_norm and step % self.config.grad_norm_log_freq == 0
        # The post-clip norm is another pass over every gradient: only on the steps that log it.
        pre, post = clip_gradients_(self.generator, self.clip_spec, post_norm=logs_norms and self.clipping)
        extra = [t for t in (post, samples) if t is not None]
        values = torch.stack([reported.double(), pre.double()] + [t.double() for t in extra]).tolist()
        loss_value, pre_value, post_value = values[0], values[1], (values[2] if post is not None else None)
        self.steps_seen += 1
        self.samples_seen += count if samples is None else int(values[-1])
        self.grad_norms.append(pre_value)

        failure = self.detector.check_step(loss_value, pre_value, step=step, epoch=self.current_epoch)
        if failure is not None:
            self.trainer.should_stop = True
            if self.precursors is not None:
                block_stats.update(
                    self.precursors.finish(step, loss_value, pre_value, optimizer, stepped=False, failure=failure)
                )
            self._log_step(loss_value, pre_value, post_value, logs_norms, step, block_stats)
            return
        optimizer.step()
        if self.precursors is not None:
            block_stats.update(self.precursors.finish(step, loss_value, pre_value, optimizer, stepped=True))
        self._epoch_loss_sum += loss_value
        self._epoch_steps += 1
        self._log_step(loss_value, pre_value, post_value, logs_norms, step, block_stats)

    def _global_batch_loss(
        self, batch: torch.Tensor, count: int, loss: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Under DDP: this rank's loss weighted so that the gradient DDP averages over the K ranks is
        the gradient of the global batch's loss (a ratio of batch means, see physics.loss_denominator);
        the global batch's loss (detached, for the log and the detector); the global batch size."""
        weight = loss_denominator(self.config.loss, batch).double() * count
        totals = all_reduce_sum(torch.stack([weight, loss.detach().double() * weight, torch.full_like(weight, count)]))
        share = (weight * self.trainer.world_size / totals[0]).to(loss.dtype)
        return loss * share, totals[1] / totals[0], totals[2]

    def _write_row(self, metrics: dict[str, float], step: int) -> None:
        # Rows go straight to the logger (CSVLogger layout: one row per call, `epoch` and `step`
        # columns). Lightning's self.log would re-emit a step value on later steps until it is
        # logged again, which breaks "every N steps"; the values are host floats already, so this
        # adds no device sync. Every logger gets the same row (metrics.csv, TensorBoard, MLflow).
        for logger in self.loggers:
            logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=step)

    def _log_step(
        self, loss: float, pre: float, post: float | None, logs_norms: bool, step: int, block_stats: dict[str, float]
    ) -> None:
        metrics = {self.train_key: loss, "lr": self.optimizers().param_groups[0]["lr"]}
        if logs_norms:
            metrics["grad_norm_preclip"] = pre
            if post is not None:
                metrics["grad_norm_postclip"] = post
        metrics.update(block_stats)
        self._write_row(metrics, step)

    def on_train_epoch_end(self) -> None:
        if self._epoch_steps == self.trainer.num_training_batches:
            self.epochs_completed += 1
        if self._epoch_steps:
            self.train_losses.append(self._epoch_loss_sum / self._epoch_steps)
        self._epoch_loss_sum, self._epoch_steps = 0.0, 0
        if isinstance(self._scheduler, torch.optim.lr_scheduler.LRScheduler):
            self._scheduler.step()

    # -------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss, obj = self._loss(batch)
        # Per predicted patch (channel), then averaged over a sample's patches: at gridsize 2 a
        # collapsed generator outputs a different constant in each channel, which a std taken over
        # all channels together would read as structure.
        amplitude = obj.abs().flatten(2).float()
        relative_std = (amplitude.std(dim=2, unbiased=False) / amplitude.mean(dim=2).clamp_min(1e-12)).mean(dim=1)
        self._val_sum += torch.stack(
            [
                loss.detach().double() * batch.shape[0],
                relative_std.double().sum(),
                torch.tensor(batch.shape[0], device=self.device, dtype=torch.float64),
            ]
        )

    def on_validation_epoch_end(self) -> None:
        total_loss, total_std, count = all_reduce_sum(self._val_sum).tolist()
        val_loss = total_loss / count if count else math.nan
        relative_std = total_std / count if count else math.nan
        if self.trainer.sanity_checking:
            self.initial_val_loss = val_loss
            return
        self.val_losses.append(val_loss)
        # The spatial std of the predicted amplitude over its mean: how far the output is from the
        # constant image of a collapsed run (logged so a drift towards collapse can be seen).
        self._write_row({self.val_key: val_loss, "val_amp_rel_std": relative_std}, max(self.steps_seen - 1, 0))
        if isinstance(self._scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and math.isfinite(val_loss):
            self._scheduler.step(val_loss)
        failure = self.detector.check_validation(
            val_loss,
            relative_std,
            step=max(self.steps_seen - 1, 0),  # the epoch's last step, as in its metrics.csv row
            epoch=self.current_epoch,
            last_epoch=self.current_epoch + 1 >= self.config.epochs,
        )
        if failure is not None:
            self.trainer.should_stop = True
            if self.precursors is not None:
                self.precursors.record_failure(failure)

"""Optimisers and learning-rate schedules, each actually stepped (the original never stepped its schedulers).

Schedules act per epoch: ``constant``; ``warmup_cosine`` (linear warm-up from 0.1·lr to lr over
``warmup_epochs``, then a cosine from lr down to ``min_lr_ratio``·lr, the shape of PtychoPINN's
WarmupCosine); ``plateau`` (ReduceLROnPlateau on the validation loss).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from fnostab.config import TrainConfig

WARMUP_START_FACTOR = 0.1


def warmup_cosine_factor(epoch: int, *, warmup_epochs: int, epochs: int, min_lr_ratio: float) -> float:
    """LR multiplier at the start of ``epoch`` (0-based) for the warm-up + cosine schedule."""
    if epoch < warmup_epochs:
        return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    params = list(parameters)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The epoch scheduler for ``config.scheduler`` (None for constant)."""
    if config.scheduler == "warmup_cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda epoch: warmup_cosine_factor(
                epoch, warmup_epochs=config.warmup_epochs, epochs=config.epochs, min_lr_ratio=config.min_lr_ratio
            ),
        )
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            threshold=0.0,
            min_lr=config.lr * 1e-3,
        )
    return None

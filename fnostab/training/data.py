"""In-memory batches of diffraction patterns for training and validation.

The data sets fit in memory, so a batch is one index into a (n, C, N, N) tensor instead of n
per-item copies collated by a DataLoader; the shuffle order comes from a seeded generator so the
same seed gives the same batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


class PatternBatches(Dataset):
    """Indexable by a list of indices: returns the (B, C, N, N) float32 batch in one gather.

    ``diffraction`` is (n, C, N, N) (C = gridsize² patterns per sample), or (n, N, N) for C = 1.
    """

    def __init__(self, diffraction: np.ndarray) -> None:
        patterns = torch.from_numpy(np.ascontiguousarray(diffraction, dtype=np.float32))
        self.patterns = patterns.unsqueeze(1) if patterns.ndim == 3 else patterns

    def __len__(self) -> int:
        return self.patterns.shape[0]

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        return self.patterns[indices]


def train_loader(diffraction: np.ndarray, batch_size: int, seed: int) -> DataLoader:
    dataset = PatternBatches(diffraction)
    generator = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def eval_loader(diffraction: np.ndarray, batch_size: int) -> DataLoader:
    dataset = PatternBatches(diffraction)
    sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def validation_subset(n: int, limit: int | None) -> np.ndarray:
    """Evenly spaced indices of at most ``limit`` patterns (all when None): fixed across epochs."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))

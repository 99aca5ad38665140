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

    def __getitem__(self, indices: list[int] | tuple[list[int], int]) -> torch.Tensor | tuple[torch.Tensor, int]:
        if isinstance(indices, tuple):  # a rank's part of a global batch: (indices, patterns that count)
            return self.patterns[indices[0]], indices[1]
        return self.patterns[indices]


class ShardedBatches(BatchSampler):
    """The seeded global batches, each cut into ``world_size`` contiguous parts; yields part ``rank``.

    Every rank draws the same global order (same seed), so the K parts of a step together are the
    batch one process would train on (parts differ in size by at most one). With more than one rank
    a part is ``(indices, count)``: a global batch smaller than K leaves some ranks no pattern, and
    those get one pattern of the batch with count 0 (weight 0), because every DDP rank must take
    part in every step's gradient all-reduce.
    """

    def __init__(self, sampler: RandomSampler, batch_size: int, rank: int, world_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        for batch in super().__iter__():
            if self.world_size == 1:
                yield batch
            else:
                part = np.array_split(np.asarray(batch), self.world_size)[self.rank].tolist()
                yield (part, len(part)) if part else (batch[:1], 0)


def train_loader(diffraction: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Shuffled batches of ``batch_size`` patterns (the global batch), or this rank's part of each."""
    dataset = PatternBatches(diffraction)
    generator = torch.Generator().manual_seed(seed)
    sampler = ShardedBatches(RandomSampler(dataset, generator=generator), batch_size, rank, world_size)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def eval_loader(diffraction: np.ndarray, batch_size: int) -> DataLoader:
    dataset = PatternBatches(diffraction)
    sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def rank_part(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous part of ``indices`` (all of them in a single process)."""
    return np.array_split(indices, world_size)[rank]


def validation_subset(n: int, limit: int | None) -> np.ndarray:
    """Evenly spaced indices of at most ``limit`` patterns (all when None): fixed across epochs."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))

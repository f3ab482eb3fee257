"""Seeded ``DataLoader``s for :class:`~metaprune.data.DatasetSplits`."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from metaprune.data.registry import DatasetError, DatasetSplits

__all__ = ["make_loaders"]


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from the seed torch derived for it."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loaders(
    splits: DatasetSplits, batch_size: int, seed: int, num_workers: int = 0
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """``(train, val, test)`` loaders; only train shuffles, with a generator seeded by ``seed``.

    The same ``seed`` gives the same sequence of training batches (epoch after epoch);
    worker processes (spawned, persistent) are seeded from that generator too. Random *augmentations* with
    ``num_workers=0`` draw from torch's global RNG: seed it for bit-exact runs.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"make_loaders: batch_size must be an int >= 1 (found {batch_size!r})")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DatasetError(f"make_loaders: num_workers must be an int >= 0 (found {num_workers!r})")
    generator = torch.Generator().manual_seed(seed)
    common: dict = dict(batch_size=batch_size, num_workers=num_workers, worker_init_fn=_seed_worker)
    if num_workers > 0:
        # spawn, never fork: the caller may run gRPC or other threads that a fork would
        # copy mid-lock; persistent: a spawned worker costs seconds to start, once
        common.update(multiprocessing_context="spawn", persistent_workers=True)
    train = DataLoader(splits.train, shuffle=True, generator=generator, **common)
    val = DataLoader(splits.val, shuffle=False, **common)
    test = DataLoader(splits.test, shuffle=False, **common)
    return train, val, test

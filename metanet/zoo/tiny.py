"""A zoo small enough for tests and smoke runs: seconds to build, same code path as a real one."""

from __future__ import annotations

from typing import Any

from metaprune.pruning.config import FinetuneBudget

from .config import ZooConfig

__all__ = ["tiny_zoo_config"]


def tiny_zoo_config(size: int = 3, **overrides: Any) -> ZooConfig:
    """``size`` quarter-width ``cifar_resnet20`` s, one epoch each, on a small ``synthetic`` task."""
    fields: dict[str, Any] = dict(
        arch="cifar_resnet20", arch_kwargs={"width": 0.25},
        dataset="synthetic", dataset_kwargs={"in_channels": 1, "n_train": 128, "n_val": 32, "n_test": 32},
        size=size, batch_size=32, train=FinetuneBudget(epochs=1, lr=0.05),
        initial_speedup=1.3, prune_steps=20, recalibrate_batches=1,
        finetune=FinetuneBudget(epochs=1, lr=0.01), meta_val_fraction=0.34,
    )  # fmt: skip
    fields.update(overrides)
    return ZooConfig(**fields)

"""Fixtures of the pruning tests: a tiny ResNet-20 and a tiny seeded synthetic task."""

from __future__ import annotations

import pytest
import torch

from metaprune.data import DatasetSplits, get_dataset, make_loaders
from metaprune.models import ArchSpec
from metaprune.pruning import (
    FinetuneBudget,
    ImportanceOptions,
    LatencyOptions,
    PruneConfig,
    PruningOptions,
    SparseTraining,
)


@pytest.fixture(scope="session")
def splits() -> DatasetSplits:
    """4 classes of 1x8x8 images: 128 train, 64 val, 64 test."""
    return get_dataset(
        "synthetic", seed=0, num_classes=4, in_channels=1, n_train=128, n_val=64, n_test=64
    )


@pytest.fixture
def loaders(splits):
    return make_loaders(splits, batch_size=32, seed=0)


@pytest.fixture(scope="session")
def spec() -> ArchSpec:
    return ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1, "num_classes": 4})


@pytest.fixture
def model(spec):
    torch.manual_seed(0)
    return spec.build()


@pytest.fixture
def example() -> torch.Tensor:
    return torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def fast_config() -> PruneConfig:
    """group-l2, one epoch per fine-tune, a coarse schedule, a sparse curve, cheap latency,
    a two-value reg grid."""
    return PruneConfig(
        method="group-l2",
        sparse=SparseTraining(auto_grid=(0.1, 0.01)),
        importance=ImportanceOptions(normalizer="sum"),  # "auto" has its own tests
        before_pruning=FinetuneBudget(epochs=1),
        after_pruning=FinetuneBudget(epochs=1),
        pruning=PruningOptions(steps=20, curve_points=2, curve_images=32),
        bn_recalibration_images=64,
        batch_size=32,
        latency=LatencyOptions(batch_size=8, repeats=2, warmup=1),
    )

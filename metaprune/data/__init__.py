"""Datasets: a registry of offline and local-file datasets with seeded train/val/test splits.

>>> splits = get_dataset("digits", seed=0)
>>> train, val, test = make_loaders(splits, batch_size=64, seed=0)
"""

from metaprune.data import builtin, local  # noqa: F401 (registers the datasets)
from metaprune.data.loaders import make_loaders
from metaprune.data.registry import (
    DatasetError,
    DatasetSplits,
    UnknownDatasetError,
    check_dataset_kwargs,
    get_dataset,
    list_datasets,
    register_dataset,
)

__all__ = [
    "DatasetError",
    "DatasetSplits",
    "UnknownDatasetError",
    "check_dataset_kwargs",
    "get_dataset",
    "list_datasets",
    "make_loaders",
    "register_dataset",
]

"""Tiny model zoos and batch manifests for tests and benchmarks: seconds per task."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["TINY_CONFIG", "TINY_DATASET", "TINY_FIXED_CONFIG", "make_tiny_models", "write_manifest"]

#: 4 classes of 1x8x8 synthetic images (128 train, 64 validation, 64 test).
TINY_DATASET: dict[str, Any] = {
    "name": "synthetic",
    "kwargs": {"num_classes": 4, "in_channels": 1, "n_train": 128, "n_val": 64, "n_test": 64},
}
#: A pruning job of a few seconds: one fine-tune epoch, a coarse schedule, cheap latency.
TINY_CONFIG: dict[str, Any] = {
    "method": "group-l2",
    "before_pruning": {"epochs": 0},
    "after_pruning": {"epochs": 1},
    "pruning": {"steps": 20, "curve_points": 2},
    "bn_recalibration_images": 64,
    "batch_size": 32,
    "latency": {"batch_size": 8, "repeats": 2, "warmup": 1},
}
#: :data:`TINY_CONFIG` with a fixed normaliser, for tests of the batch machinery: no
#: normaliser search, about half of a task's time (the search has tests of its own).
TINY_FIXED_CONFIG: dict[str, Any] = {**TINY_CONFIG, "importance": {"normalizer": "mean"}}


def make_tiny_models(
    directory: str | os.PathLike[str], n: int = 3, prefix: str = "m"
) -> list[Path]:
    """Save ``n`` seeded quarter-width ``cifar_resnet20`` s for :data:`TINY_DATASET`."""
    import metaprune
    from metaprune.models import ArchSpec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1, "num_classes": 4})
    paths = []
    for i in range(n):
        torch.manual_seed(1000 + i)
        paths.append(metaprune.save(spec.build(), spec, directory / f"{prefix}{i}.safetensors"))
    return paths


def write_manifest(
    path: str | os.PathLike[str], models: list[dict[str, Any]], **fields: Any
) -> Path:
    """Write a manifest with :data:`TINY_DATASET`, :data:`TINY_CONFIG`, targets 1.5x and 2x,
    and ``models``; ``fields`` override top-level keys."""
    data = {"version": 1, "dataset": TINY_DATASET, "targets": [1.5, 2.0], "config": TINY_CONFIG,
            "max_attempts": 2, "models": models, **fields}  # fmt: skip
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path

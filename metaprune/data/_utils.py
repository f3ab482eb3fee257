"""Small helpers shared by the dataset builders (validation, seeded splits)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset

from metaprune.data.registry import DatasetError
from metaprune.errors import quote

__all__ = ["TransformSubset", "check_fraction", "check_int", "stratified_split"]


def check_int(dataset: str, name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an int ``>= minimum``, else a :class:`DatasetError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DatasetError(
            f"dataset {dataset!r}: {name} must be an int >= {minimum} (found {quote(value)})"
        )
    return value


def check_fraction(dataset: str, name: str, value: object) -> float:
    """``value`` if it is a number strictly between 0 and 1, else a :class:`DatasetError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise DatasetError(
            f"dataset {dataset!r}: {name} must be a number in (0, 1) (found {quote(value)})"
        )
    return float(value)


def stratified_split(
    labels: Sequence[int] | np.ndarray, holdout: int | float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(labels))`` into (kept, held-out) sorted indices.

    ``holdout`` is a count (int) or a fraction of ``len(labels)`` (float).
    """
    labels = np.asarray(labels)
    kept, held = train_test_split(
        np.arange(len(labels)), test_size=holdout, stratify=labels, random_state=seed
    )
    return np.sort(kept), np.sort(held)


class TransformSubset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied to the image and the label as int64.

    Lets the training and validation splits of one underlying dataset use different
    transforms without loading the data twice.
    """

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int] | np.ndarray,
        transform: Callable[[Any], Tensor] | None = None,
    ) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, label = self.base[self.indices[i]]
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(int(label), dtype=torch.int64)

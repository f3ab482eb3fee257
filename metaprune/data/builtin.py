"""Offline datasets: scikit-learn's bundled ``digits`` and seeded ``synthetic`` tasks."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import TensorDataset

from metaprune.data._utils import check_fraction, check_int, stratified_split
from metaprune.data.registry import DatasetError, DatasetSplits, register_dataset
from metaprune.errors import quote

__all__ = ["digits", "synthetic"]


@register_dataset("digits")
def digits(
    root: str | os.PathLike[str] | None,
    seed: int,
    *,
    image_size: int = 8,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
) -> DatasetSplits:
    """The 1,797 real 8x8 handwritten digits bundled with scikit-learn (10 classes).

    Seeded stratified splits: ``test_fraction`` of all images for test, then
    ``val_fraction`` of all images carved from the rest for validation. Pixels (0..16)
    are normalised with the training split's mean and std, then, if ``image_size != 8``,
    resized bilinearly. ``root`` is ignored.

    Shapes:
        images ``(1, image_size, image_size)`` float32, labels int64 scalars.
    """
    check_int("digits", "image_size", image_size, minimum=8)
    test_fraction = check_fraction("digits", "test_fraction", test_fraction)
    val_fraction = check_fraction("digits", "val_fraction", val_fraction)
    if test_fraction + val_fraction >= 1:
        raise DatasetError(
            f"dataset 'digits': test_fraction + val_fraction must be < 1 (found {test_fraction + val_fraction})"
        )
    x, y = load_digits(return_X_y=True)
    n = len(y)
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    keep, val_pos = stratified_split(y[train_idx], round(val_fraction * n), seed)
    train_idx, val_idx = train_idx[keep], train_idx[val_pos]
    images = torch.from_numpy(x.astype(np.float32)).reshape(n, 1, 8, 8)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    if image_size != 8:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    labels = torch.from_numpy(y.astype(np.int64))

    def split(idx: np.ndarray) -> TensorDataset:
        index = torch.from_numpy(idx)
        return TensorDataset(images[index].contiguous(), labels[index])

    return DatasetSplits(
        train=split(train_idx), val=split(val_idx), test=split(test_idx),
        num_classes=10, in_channels=1, image_size=image_size, name="digits",
    )  # fmt: skip


_MAX_SYNTHETIC_ELEMENTS = 200_000_000  # 800 MB of float32


def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent generator per (seed, stream), so split sizes do not affect each other."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@register_dataset("synthetic")
def synthetic(
    root: str | os.PathLike[str] | None,
    seed: int,
    *,
    num_classes: int = 4,
    in_channels: int = 3,
    image_size: int = 8,
    n_train: int = 256,
    n_val: int = 64,
    n_test: int = 64,
    noise: float = 1.0,
) -> DatasetSplits:
    """A seeded, learnable image task: class templates plus Gaussian noise.

    Each class has a smooth random template (unit variance, drawn at half resolution and
    upsampled); an image is its class template plus ``noise`` times standard normal
    noise. Classes are balanced within each split. The same ``seed`` gives the same
    templates and samples; ``root`` is ignored.

    Shapes:
        images ``(in_channels, image_size, image_size)`` float32, labels int64 scalars.
    """
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size),
                        ("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):  # fmt: skip
        check_int("synthetic", name, value)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise DatasetError(
            f"dataset 'synthetic': noise must be a number >= 0 (found {quote(noise)})"
        )
    # generated in memory: bound the total before allocating (the templates count too)
    elements = (n_train + n_val + n_test + num_classes) * in_channels * image_size**2
    if elements > _MAX_SYNTHETIC_ELEMENTS:
        raise DatasetError(
            f"dataset 'synthetic': {elements:,} values requested (samples x channels x pixels), "
            f"over the {_MAX_SYNTHETIC_ELEMENTS:,} this in-memory test dataset allows"
        )
    coarse = max(1, image_size // 2)
    templates = torch.randn(num_classes, in_channels, coarse, coarse, generator=_generator(seed, 0))
    templates = F.interpolate(
        templates, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    templates = (templates - templates.mean()) / templates.std(correction=0).clamp_min(1e-6)

    def split(n: int, stream: int) -> TensorDataset:
        g = _generator(seed, stream)
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        images: Tensor = templates[labels] + noise * torch.randn(
            n, *templates.shape[1:], generator=g
        )
        return TensorDataset(images.float(), labels.to(torch.int64))

    return DatasetSplits(
        train=split(n_train, 1), val=split(n_val, 2), test=split(n_test, 3),
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, name="synthetic",
    )  # fmt: skip

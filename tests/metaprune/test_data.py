"""Tests for metaprune.data: registry, digits, synthetic, local datasets, loaders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

from metaprune.data import DatasetError, DatasetSplits, get_dataset, list_datasets, make_loaders

LOCAL_DATASETS = ["cifar10", "cifar100", "svhn", "imagefolder"]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test loudly."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"download attempted: {args}")

    for module in (
        torchvision.datasets.utils,
        torchvision.datasets.cifar,
        torchvision.datasets.svhn,
    ):
        for name in ("download_url", "download_and_extract_archive"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, forbidden)


def _arrays(ds: torch.utils.data.TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = ds.tensors
    return x, y


def test_list_datasets_and_unknown_name() -> None:
    assert list_datasets() == ["cifar10", "cifar100", "digits", "imagefolder", "svhn", "synthetic"]
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]
    with pytest.raises(DatasetError, match=r"unknown dataset 'digit'.*did you mean 'digits'"):
        get_dataset("digit")
    with pytest.raises(
        DatasetError, match=r"unexpected keyword argument 'foo'.*options: image_size"
    ):
        get_dataset("digits", foo=1)
    with pytest.raises(DatasetError, match="seed must be an int"):
        get_dataset("digits", seed=0.5)  # type: ignore[arg-type]


def test_digits_splits_are_a_stratified_partition() -> None:
    splits = get_dataset("digits", seed=0)
    assert isinstance(splits, DatasetSplits)
    assert (splits.name, splits.num_classes, splits.in_channels, splits.image_size) == (
        "digits",
        10,
        1,
        8,
    )
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sizes == [1257, 180, 360] and sum(sizes) == 1797
    x_train, y_train = _arrays(splits.train)
    assert x_train.shape == (1257, 1, 8, 8) and x_train.dtype == torch.float32
    assert y_train.dtype == torch.int64 and set(y_train.tolist()) == set(range(10))
    assert abs(x_train.mean().item()) < 1e-5 and abs(x_train.std().item() - 1) < 1e-4
    image, label = splits.test[0]
    assert image.shape == (1, 8, 8) and label.dtype == torch.int64 and label.dim() == 0

    # undo the normalisation and check the splits partition the original images exactly
    raw_x, raw_y = load_digits(return_X_y=True)
    x_all = torch.cat([_arrays(s)[0] for s in (splits.train, splits.val, splits.test)])
    y_all = torch.cat([_arrays(s)[1] for s in (splits.train, splits.val, splits.test)])
    # the affine normalisation maps the minimum raw value 0 to the minimum normalised value
    lo = x_all.min()
    scale = (x_all.max() - lo) / 16.0
    recovered = ((x_all - lo) / scale).round().to(torch.int64).reshape(len(x_all), 64)
    key = lambda xs, ys: Counter((tuple(r), int(c)) for r, c in zip(xs.tolist(), ys.tolist()))  # noqa: E731
    assert key(recovered, y_all) == key(
        torch.from_numpy(raw_x.astype(np.int64)), torch.from_numpy(raw_y)
    )

    # stratified: each class's share of every split is within one sample of the target
    totals = np.bincount(raw_y, minlength=10)
    for ds, frac in ((splits.test, 0.2), (splits.val, 0.1)):
        counts = np.bincount(_arrays(ds)[1].numpy(), minlength=10)
        assert np.all(np.abs(counts - frac * totals) <= 1.5), (counts, frac * totals)


def test_digits_is_seeded() -> None:
    a, b, c = (get_dataset("digits", seed=s) for s in (0, 0, 1))
    for split in ("train", "val", "test"):
        assert torch.equal(_arrays(getattr(a, split))[0], _arrays(getattr(b, split))[0])
        assert torch.equal(_arrays(getattr(a, split))[1], _arrays(getattr(b, split))[1])
    assert not torch.equal(_arrays(a.test)[1], _arrays(c.test)[1])


@pytest.mark.parametrize("size", [16, 32])
def test_digits_upsampled(size: int) -> None:
    small, big = get_dataset("digits", image_size=8), get_dataset("digits", image_size=size)
    x_small, x_big = _arrays(small.train)[0], _arrays(big.train)[0]
    assert big.image_size == size and x_big.shape == (1257, 1, size, size)
    assert torch.equal(_arrays(small.train)[1], _arrays(big.train)[1])
    expected = nn.functional.interpolate(
        x_small, size=(size, size), mode="bilinear", align_corners=False
    )
    assert torch.equal(x_big, expected)
    pooled = nn.functional.avg_pool2d(x_big, size // 8)  # roughly undoes the upsampling
    assert torch.corrcoef(torch.stack([pooled.flatten(), x_small.flatten()]))[0, 1] > 0.9
    assert abs(x_big.mean().item() - x_small.mean().item()) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"image_size": 7}, "image_size must be an int >= 8"), ({"test_fraction": 0.0}, "test_fraction"),
     ({"test_fraction": 0.6, "val_fraction": 0.5}, "must be < 1")],
)  # fmt: skip
def test_digits_rejects_bad_kwargs(kwargs: dict, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        get_dataset("digits", **kwargs)


def test_synthetic_shapes_balance_and_seeding() -> None:
    splits = get_dataset(
        "synthetic", seed=3, num_classes=5, in_channels=2, image_size=6, n_train=50
    )
    assert (splits.num_classes, splits.in_channels, splits.image_size, splits.name) == (
        5,
        2,
        6,
        "synthetic",
    )
    assert [len(splits.train), len(splits.val), len(splits.test)] == [50, 64, 64]
    x, y = _arrays(splits.train)
    assert x.shape == (50, 2, 6, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert np.bincount(y.numpy()).tolist() == [10] * 5
    assert np.bincount(_arrays(splits.test)[1].numpy()).tolist() == [13, 13, 13, 13, 12]
    again = get_dataset("synthetic", seed=3, num_classes=5, in_channels=2, image_size=6, n_train=50)
    assert torch.equal(_arrays(again.train)[0], x) and torch.equal(
        _arrays(again.val)[0], _arrays(splits.val)[0]
    )
    other = get_dataset("synthetic", seed=4, num_classes=5, in_channels=2, image_size=6, n_train=50)
    assert not torch.equal(_arrays(other.train)[0], x)
    # split sizes do not change the other splits
    more = get_dataset("synthetic", seed=3, num_classes=5, in_channels=2, image_size=6, n_train=80)
    assert torch.equal(_arrays(more.val)[0], _arrays(splits.val)[0])
    # noise=0 gives exactly one template per class
    clean = get_dataset("synthetic", seed=3, noise=0.0)
    xc, yc = _arrays(clean.train)
    for c in range(4):
        assert torch.equal(xc[yc == c], xc[yc == c][:1].expand_as(xc[yc == c]))


def test_synthetic_is_learnable() -> None:
    splits = get_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = _arrays(splits.train)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    xv, yv = _arrays(splits.val)
    assert (model(xv).argmax(1) == yv).float().mean().item() >= 0.9


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"num_classes": 0}, "num_classes"), ({"noise": -1.0}, "noise")]
)
def test_synthetic_rejects_bad_kwargs(kwargs: dict, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        get_dataset("synthetic", **kwargs)


@pytest.mark.parametrize("name", LOCAL_DATASETS)
def test_local_datasets_without_root(name: str, tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=f"dataset '{name}' is read from a local directory: pass root="
    ):
        get_dataset(name)
    missing = tmp_path / "nowhere"
    with pytest.raises(
        DatasetError, match=f"dataset '{name}': root directory '{missing}' does not exist"
    ):
        get_dataset(name, root=missing)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("svhn", "train_32x32.mat"),
     ("imagefolder", "train")],
)  # fmt: skip
def test_local_datasets_name_the_missing_path(name: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=f"dataset '{name}': expected '{tmp_path / expected}'.*never downloads"
    ):
        get_dataset(name, root=tmp_path)


@pytest.mark.parametrize(
    ("name", "files"),
    [("cifar10", [f"cifar-10-batches-py/{f}" for f in
                  ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                   "batches.meta"]]),
     ("cifar100", ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]),
     ("svhn", ["train_32x32.mat", "test_32x32.mat"])],
)  # fmt: skip
def test_local_datasets_report_corrupt_files(name: str, files: list[str], tmp_path: Path) -> None:
    for rel in files[:-1]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"not the real data")
    with pytest.raises(DatasetError, match=f"expected '{tmp_path / files[-1]}'"):
        get_dataset(name, root=tmp_path)
    (tmp_path / files[-1]).write_bytes(b"not the real data")
    with pytest.raises(
        DatasetError, match=f"dataset '{name}': cannot read the files under '{tmp_path}"
    ):
        get_dataset(name, root=tmp_path)


def _write_images(folder: Path, classes: list[str], per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", ["cat", "dog"], per_class=10, seed=0)
    _write_images(tmp_path / "val", ["cat", "dog"], per_class=3, seed=1)
    splits = get_dataset("imagefolder", root=tmp_path, seed=0, image_size=8, val_fraction=0.2)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (2, 3, 8)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [16, 4, 6]
    assert sorted(splits.val[i][1].item() for i in range(4)) == [0, 0, 1, 1]  # stratified
    for ds in (splits.train, splits.val, splits.test):
        image, label = ds[0]
        assert (
            image.shape == (3, 8, 8) and image.dtype == torch.float32 and label.dtype == torch.int64
        )
    assert set(splits.train.indices).isdisjoint(splits.val.indices)
    assert sorted(splits.train.indices + splits.val.indices) == list(range(20))
    again = get_dataset("imagefolder", root=tmp_path, seed=0, image_size=8, val_fraction=0.2)
    assert again.val.indices == splits.val.indices
    assert torch.equal(again.val[0][0], splits.val[0][0])  # eval transform is deterministic
    plain = get_dataset("imagefolder", root=tmp_path, image_size=8, augment=False, val_fraction=0.2)
    assert torch.equal(plain.train[0][0], plain.train[0][0])

    _write_images(tmp_path / "val", ["emu"], per_class=1, seed=2)
    with pytest.raises(DatasetError, match=r"class folders of .* differ, e.g. \['emu'\]"):
        get_dataset("imagefolder", root=tmp_path, image_size=8)


def test_imagefolder_empty_train(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match=f"cannot read the files under '{tmp_path / 'train'}'"):
        get_dataset("imagefolder", root=tmp_path)


def _epoch(loader: torch.utils.data.DataLoader) -> torch.Tensor:
    return torch.cat([y for _, y in loader])


def test_make_loaders_is_seeded() -> None:
    splits = get_dataset("synthetic", seed=0, n_train=40, n_val=10, n_test=12)
    train, val, test = make_loaders(splits, batch_size=8, seed=5)
    assert [len(train), len(val), len(test)] == [5, 2, 2]
    x, y = next(iter(val))
    assert x.shape == (8, 3, 8, 8) and y.dtype == torch.int64
    first, second = _epoch(train), _epoch(train)
    assert not torch.equal(first, second)  # reshuffled each epoch ...
    train2, _, _ = make_loaders(splits, batch_size=8, seed=5)
    assert torch.equal(_epoch(train2), first)  # ... reproducibly
    assert torch.equal(_epoch(train2), second)
    train3, _, _ = make_loaders(splits, batch_size=8, seed=6)
    assert not torch.equal(_epoch(train3), first)
    assert sorted(first.tolist()) == sorted(_arrays(splits.train)[1].tolist())
    assert torch.equal(_epoch(val), _arrays(splits.val)[1])  # not shuffled
    assert torch.equal(_epoch(test), _arrays(splits.test)[1])


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"batch_size": 0}, "batch_size"), ({"num_workers": -1}, "num_workers")]
)
def test_make_loaders_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"batch_size": 4, "seed": 0, **kwargs}
    with pytest.raises(DatasetError, match=match):
        make_loaders(get_dataset("synthetic"), **args)


@pytest.mark.slow  # two spawned workers import torch: ~10 s idle, a minute on a loaded box
@pytest.mark.timeout(300)
def test_spawned_loader_workers_read_what_the_main_process_reads(tmp_path: Path) -> None:
    """File datasets are decoded by spawned (never forked), persistent DataLoader workers."""
    _write_images(tmp_path / "train", ["cat", "dog"], per_class=6, seed=0)
    _write_images(tmp_path / "val", ["cat", "dog"], per_class=2, seed=1)
    splits = get_dataset("imagefolder", root=tmp_path, seed=0, image_size=16, augment=False)
    _, inline, _ = make_loaders(splits, batch_size=4, seed=0)
    train, spawned, _ = make_loaders(splits, batch_size=4, seed=0, num_workers=2)
    assert spawned.multiprocessing_context.get_start_method() == "spawn"
    assert spawned.persistent_workers and train.num_workers == 2
    for (a, la), (b, lb) in zip(inline, spawned, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb) and a.shape[1:] == (3, 16, 16)


def test_cifar_like_transforms_upscale() -> None:
    from metaprune.data.local import _cifar_like_transforms

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for size in (32, 224):
        train_tf, eval_tf = _cifar_like_transforms(stats, augment=True, flip=True, image_size=size)
        assert train_tf(image).shape == eval_tf(image).shape == (3, size, size)
    with pytest.raises(DatasetError, match="image_size must be an int >= 8"):
        get_dataset("cifar10", root="/nonexistent-metaprune-root", image_size=4)  # checked first

"""File-based datasets read from a local ``root``: CIFAR-10/100, SVHN, ImageFolder.

Nothing is ever downloaded: missing directories or files raise :class:`DatasetError`
naming the dataset and the path expected. The validation split is carved from the
training data (seeded, stratified) and uses the evaluation transform.

Expected layouts (the ones torchvision's own downloads produce)::

    cifar10:     <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    cifar100:    <root>/cifar-100-python/{train, test, meta}
    svhn:        <root>/{train_32x32.mat, test_32x32.mat}
    imagefolder: <root>/train/<class>/<image>, <root>/val/<class>/<image>
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision import transforms as T

from metaprune.data._utils import TransformSubset, check_fraction, check_int, stratified_split
from metaprune.data.registry import DatasetError, DatasetSplits, register_dataset
from metaprune.errors import describe_exception
from metaprune.limits import DEFAULT_LIMITS

__all__ = ["cifar10", "cifar100", "imagefolder", "svhn"]

_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_NO_DOWNLOAD = "metaprune never downloads datasets; place the files there first"

#: Largest image (width x height) a local image dataset may hold: 8192 x 8192. Checked from
#: the file header before decoding, so a small file that claims gigapixels is refused.
MAX_IMAGE_PIXELS = 8192 * 8192


def load_image(path: str) -> Any:
    """Open an image file as RGB (the ImageFolder loader), refusing decompression bombs
    and unreadable files with :class:`DatasetError` naming the file."""
    from PIL import Image

    name = os.path.basename(path)
    try:
        with Image.open(path) as img:  # parses the header only
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DatasetError(
                    f"dataset 'imagefolder': image {name!r} is {width} x {height} pixels, over "
                    f"the {MAX_IMAGE_PIXELS:,}-pixel bound (a decompression bomb?)"
                )
            return img.convert("RGB")
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"dataset 'imagefolder': cannot read image {name!r}: "
            + describe_exception(err).replace(path, name)  # the file, not the host's layout
        ) from None


def _root(name: str, root: str | os.PathLike[str] | None, expected: str) -> Path:
    if root is None:
        raise DatasetError(
            f"dataset {name!r} is read from a local directory: pass root=<dir> containing {expected} ({_NO_DOWNLOAD})"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"dataset {name!r}: root directory {str(path)!r} does not exist (expected {expected} inside it; {_NO_DOWNLOAD})"
        )
    return path


def _require(name: str, paths: list[Path]) -> None:
    for path in paths:
        if not path.exists():
            raise DatasetError(
                f"dataset {name!r}: expected {str(path)!r}, which does not exist ({_NO_DOWNLOAD})"
            )


def _open(name: str, where: Path, factory: Callable[[], Dataset]) -> Any:
    try:
        return factory()
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as err:
        raise DatasetError(
            f"dataset {name!r}: cannot read the files under {str(where)!r}: {describe_exception(err)}"
        ) from None


def _split(
    name: str,
    base: Dataset,
    labels: Any,
    train_tf: Callable,
    eval_tf: Callable,
    val_fraction: float,
    seed: int,
) -> tuple[TransformSubset, TransformSubset]:
    val_fraction = check_fraction(name, "val_fraction", val_fraction)
    try:
        train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    except ValueError as err:  # e.g. fewer samples than classes
        raise DatasetError(
            f"dataset {name!r}: cannot carve a {val_fraction:.0%} validation split: {err}"
        ) from None
    return TransformSubset(base, train_idx, train_tf), TransformSubset(base, val_idx, eval_tf)


def _cifar_like_transforms(
    stats: tuple, augment: bool, flip: bool, image_size: int = 32
) -> tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]:
    # upscaled (e.g. 224 for ImageNet models): resized after the 32x32 augmentation
    resize: list[Callable] = [T.Resize(image_size)] if image_size != 32 else []
    normalize = [*resize, T.ToTensor(), T.Normalize(*stats)]
    eval_tf = T.Compose(normalize)
    if not augment:
        return eval_tf, eval_tf
    aug: list[Callable] = [T.RandomCrop(32, padding=4)] + (
        [T.RandomHorizontalFlip()] if flip else []
    )
    return T.Compose(aug + normalize), eval_tf


def _image_size(name: str, image_size: object) -> int:
    size = check_int(name, "image_size", image_size, minimum=8)
    DEFAULT_LIMITS.check("max_image_size", size, f"dataset {name!r} image_size")
    return size


def _cifar(
    name: str, root: Any, seed: int, augment: bool, val_fraction: float, image_size: int = 32
) -> DatasetSplits:
    image_size = _image_size(name, image_size)
    if name == "cifar10":
        cls, folder, files, classes, stats = (datasets.CIFAR10, "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"], 10, _CIFAR10_STATS)  # fmt: skip
    else:
        cls, folder, files, classes, stats = (datasets.CIFAR100, "cifar-100-python",
            ["train", "test", "meta"], 100, _CIFAR100_STATS)  # fmt: skip
    path = _root(name, root, f"{folder}/")
    _require(name, [path / folder] + [path / folder / f for f in files])
    train_base = _open(name, path / folder, lambda: cls(str(path), train=True, download=False))
    test_base = _open(name, path / folder, lambda: cls(str(path), train=False, download=False))
    train_tf, eval_tf = _cifar_like_transforms(stats, augment, flip=True, image_size=image_size)
    train, val = _split(name, train_base, train_base.targets, train_tf, eval_tf, val_fraction, seed)
    test = TransformSubset(test_base, range(len(test_base)), eval_tf)
    return DatasetSplits(
        train, val, test, num_classes=classes, in_channels=3, image_size=image_size, name=name
    )


@register_dataset("cifar10")
def cifar10(
    root: str | os.PathLike[str] | None,
    seed: int,
    *,
    augment: bool = True,
    val_fraction: float = 0.1,
    image_size: int = 32,
) -> DatasetSplits:
    """CIFAR-10 from ``<root>/cifar-10-batches-py``; train augmentation: random crop (pad 4) + flip;
    ``image_size`` other than 32 resizes every image (e.g. 224 for ImageNet models)."""
    return _cifar("cifar10", root, seed, augment, val_fraction, image_size)


@register_dataset("cifar100")
def cifar100(
    root: str | os.PathLike[str] | None,
    seed: int,
    *,
    augment: bool = True,
    val_fraction: float = 0.1,
    image_size: int = 32,
) -> DatasetSplits:
    """CIFAR-100 from ``<root>/cifar-100-python``; train augmentation: random crop (pad 4) + flip;
    ``image_size`` other than 32 resizes every image (e.g. 224 for ImageNet models)."""
    return _cifar("cifar100", root, seed, augment, val_fraction, image_size)


@register_dataset("svhn")
def svhn(
    root: str | os.PathLike[str] | None,
    seed: int,
    *,
    augment: bool = True,
    val_fraction: float = 0.1,
    image_size: int = 32,
) -> DatasetSplits:
    """SVHN (cropped digits, ``train`` and ``test`` splits) from ``<root>/*_32x32.mat``;
    train augmentation: random crop (pad 4), no flip; ``image_size`` resizes as CIFAR's."""
    image_size = _image_size("svhn", image_size)
    path = _root("svhn", root, "train_32x32.mat and test_32x32.mat")
    _require("svhn", [path / "train_32x32.mat", path / "test_32x32.mat"])
    train_base = _open(
        "svhn", path, lambda: datasets.SVHN(str(path), split="train", download=False)
    )
    test_base = _open("svhn", path, lambda: datasets.SVHN(str(path), split="test", download=False))
    train_tf, eval_tf = _cifar_like_transforms(_SVHN_STATS, augment, flip=False,
                                               image_size=image_size)  # fmt: skip
    train, val = _split(
        "svhn", train_base, train_base.labels, train_tf, eval_tf, val_fraction, seed
    )
    test = TransformSubset(test_base, range(len(test_base)), eval_tf)
    return DatasetSplits(
        train, val, test, num_classes=10, in_channels=3, image_size=image_size, name="svhn"
    )


@register_dataset("imagefolder")
def imagefolder(
    root: str | os.PathLike[str] | None,
    seed: int,
    *,
    image_size: int = 224,
    augment: bool = True,
    val_fraction: float = 0.1,
) -> DatasetSplits:
    """An ImageNet-layout folder: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*``.

    ``<root>/val`` is the *test* split (ImageNet's labelled validation set is reported
    once); our validation split is carved from ``<root>/train``. Images are converted
    to RGB; train: RandomResizedCrop + flip; eval: resize to ``image_size / 0.875`` and
    center crop. Normalised with ImageNet statistics.
    """
    check_int("imagefolder", "image_size", image_size)
    DEFAULT_LIMITS.check("max_image_size", image_size, "dataset 'imagefolder' image_size")
    path = _root("imagefolder", root, "train/ and val/ class folders")
    _require("imagefolder", [path / "train", path / "val"])
    train_base = _open(
        "imagefolder",
        path / "train",
        lambda: datasets.ImageFolder(str(path / "train"), loader=load_image),
    )
    test_base = _open(
        "imagefolder",
        path / "val",
        lambda: datasets.ImageFolder(str(path / "val"), loader=load_image),
    )
    if train_base.classes != test_base.classes:
        raise DatasetError(
            f"dataset 'imagefolder': class folders of {str(path / 'train')!r} ({len(train_base.classes)}) and "
            f"{str(path / 'val')!r} ({len(test_base.classes)}) differ, e.g. "
            f"{sorted(set(train_base.classes) ^ set(test_base.classes))[:3]}"
        )
    normalize = [T.ToTensor(), T.Normalize(*_IMAGENET_STATS)]
    eval_tf = T.Compose(
        [T.Resize(max(image_size, round(image_size / 0.875))), T.CenterCrop(image_size), *normalize]
    )
    train_tf = (
        T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *normalize])
        if augment
        else eval_tf
    )
    train, val = _split(
        "imagefolder", train_base, train_base.targets, train_tf, eval_tf, val_fraction, seed
    )
    test = TransformSubset(test_base, range(len(test_base)), eval_tf)
    return DatasetSplits(
        train,
        val,
        test,
        num_classes=len(train_base.classes),
        in_channels=3,
        image_size=image_size,
        name="imagefolder",
    )

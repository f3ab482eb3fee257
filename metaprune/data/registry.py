"""The dataset registry: ``register_dataset``, ``get_dataset``, ``list_datasets``.

A dataset builder takes ``(root, seed, **kwargs)`` and returns :class:`DatasetSplits`:
train / validation (carved from the training data with ``seed``) / test.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from torch.utils.data import Dataset

from metaprune.errors import InvalidInputError, NotFoundError, describe_exception, quote
from metaprune.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DatasetBuilder",
    "DatasetError",
    "DatasetSplits",
    "UnknownDatasetError",
    "check_dataset_kwargs",
    "get_dataset",
    "list_datasets",
    "register_dataset",
]


class DatasetError(InvalidInputError):
    """A dataset is unknown, misconfigured, or its local files are missing."""


class UnknownDatasetError(DatasetError, NotFoundError):
    """A dataset name is not registered."""


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetSplits:
    """The three splits of a classification dataset and what a model needs to know about it.

    Attributes:
        train, val, test: map-style datasets of ``(image, label)`` pairs; images are float
            tensors ``(in_channels, image_size, image_size)``, labels int64 scalars.
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        in_channels: image channels.
        image_size: image height and width.
        name: the registered dataset name.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    name: str


class DatasetBuilder(Protocol):
    def __call__(
        self, root: str | os.PathLike[str] | None, seed: int, **kwargs: object
    ) -> DatasetSplits: ...


_B = TypeVar("_B", bound=Callable[..., DatasetSplits])
_REGISTRY: dict[str, Callable[..., DatasetSplits]] = {}


def register_dataset(name: str) -> Callable[[_B], _B]:
    """Decorator registering a builder ``fn(root, seed, **kwargs) -> DatasetSplits``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string (found {name!r})")

    def decorator(fn: _B) -> _B:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_datasets(pattern: str | None = None) -> list[str]:
    """Sorted registered dataset names, optionally filtered by an ``fnmatch`` pattern."""
    names = sorted(_REGISTRY)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def check_dataset_kwargs(
    name: str, kwargs: Mapping[str, Any] | None, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Dataset options from a client or a command line, checked before any data is built:
    a mapping of plain JSON data whose keys are options of dataset ``name`` (the builder's
    keyword-only arguments), whose shape options (``image_size``, ``in_channels``,
    ``num_classes``) are positive ints, and whose ``image_size`` is within ``limits``. The
    builder checks the other values when it runs.

    Returns:
        A plain ``dict`` copy of ``kwargs`` (``{}`` for ``None``).

    Raises:
        UnknownDatasetError: ``name`` is not registered.
        DatasetError: not a mapping of plain data, or an unknown option (named, with the
            dataset's options).
        LimitExceededError: ``image_size`` over ``limits.max_image_size``, or nesting over
            ``limits.max_json_depth``.
    """
    from metaprune.documents import check_depth

    builder = _builder(name)
    if kwargs is None:
        return {}
    where = f"dataset {name!r} options"
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise DatasetError(f"{where} must be a mapping with string keys (found {quote(kwargs)})")
    check_depth(dict(kwargs), limits, where)
    try:
        plain = json.loads(json.dumps(dict(kwargs), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where} must be plain JSON data ({describe_exception(err)})") from None
    options = _options(builder)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
    for key in plain:
        if key not in options and not takes_any:
            close = difflib.get_close_matches(key[:100], options, n=1, cutoff=0.6)
            raise DatasetError(
                f"dataset {name!r} has no option {quote(key, 100)}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; its options: {', '.join(options) or 'none'}"
            )
    for key in ("image_size", "in_channels", "num_classes"):  # shape options: before any work
        value = plain.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DatasetError(
                f"dataset {name!r}: {key} must be an int >= 1 (found {quote(value)})"
            )
    limits.check("max_image_size", plain.get("image_size", 0), f"dataset {name!r} image_size")
    return plain


def _options(builder: Callable[..., DatasetSplits]) -> list[str]:
    params = inspect.signature(builder).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]


def _builder(name: str) -> Callable[..., DatasetSplits]:
    builder = _REGISTRY.get(name) if isinstance(name, str) else None
    if builder is None:
        # difflib is quadratic in the length; str() of a deep list would recurse
        text = name[:100] if isinstance(name, str) else ""
        close = difflib.get_close_matches(text, list(_REGISTRY), n=3, cutoff=0.6) if text else []
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownDatasetError(
            f"unknown dataset {quote(name)} (registered: {', '.join(sorted(_REGISTRY))}){hint}"
        )
    return builder


def get_dataset(
    name: str, root: str | os.PathLike[str] | None = None, seed: int = 0, **kwargs: object
) -> DatasetSplits:
    """Build the splits of dataset ``name``; nothing is ever downloaded.

    Args:
        name: a name from :func:`list_datasets`.
        root: local directory of file-based datasets (ignored by built-in ones).
        seed: seed of the train/validation split (and of synthetic data).
        **kwargs: dataset-specific options.

    Raises:
        UnknownDatasetError: unknown name (a NotFoundError, with close matches).
        DatasetError: invalid options, or missing/invalid local files (an InvalidInputError).
        LimitExceededError: ``image_size`` over ``Limits.max_image_size``.
    """
    builder = _builder(name)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DatasetError(f"dataset {name!r}: seed must be an int (found {quote(seed)})")
    image_size = kwargs.get("image_size")
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        DEFAULT_LIMITS.check("max_image_size", image_size, f"dataset {name!r} image_size")
    try:
        inspect.signature(builder).bind(root, seed, **kwargs)
    except TypeError as err:
        options = _options(builder)
        raise DatasetError(
            f"dataset {name!r}: {describe_exception(err)} (options: {', '.join(options) or 'none'})"
        ) from None
    return builder(root, seed, **kwargs)

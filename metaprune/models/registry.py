"""A timm-style registry of model constructors.

Every architecture metaprune can build is registered here under a name; checkpoints
store that name plus JSON kwargs, so the registry doubles as the allow-list of code a
checkpoint may ask us to run.

Example::

    @register_model("my_net")
    def my_net(*, num_classes: int = 10) -> nn.Module: ...

    model = create_model("my_net", num_classes=3)
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from metaprune.errors import NotFoundError, quote

__all__ = [
    "ModelFactory",
    "UnknownModelError",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
]

ModelFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}


class UnknownModelError(NotFoundError, KeyError):
    """Raised for a model name that is not registered (a :class:`NotFoundError`, so also a
    ``KeyError``/``LookupError`` and a ``ValueError``)."""

    def __init__(self, name: str) -> None:
        name = str(name)
        # close matches only for plausible names: difflib is quadratic in the length
        close = (
            difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.6)
            if len(name) <= 100
            else []
        )
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        self.name = name
        self.message = (
            f"unknown model {quote(name)} ({len(_REGISTRY)} models registered, "
            f"see metaprune.models.list_models()){hint}"
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


def register_model(name: str) -> Callable[[_F], _F]:
    """Decorator registering ``fn`` as the constructor of model ``name``.

    Raises:
        ValueError: if ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string (found {name!r})")

    def decorator(fn: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(
                f"model {name!r} is already registered (by {_REGISTRY[name].__module__}."
                f"{getattr(_REGISTRY[name], '__qualname__', '?')})"
            )
        _REGISTRY[name] = fn
        return fn

    return decorator


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model name."""
    return isinstance(name, str) and name in _REGISTRY


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by an ``fnmatch`` pattern."""
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with constructor ``kwargs``.

    Raises:
        UnknownModelError: if ``name`` is not registered (message lists close matches).
    """
    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownModelError(name if isinstance(name, str) else quote(name)) from None
    return factory(**kwargs)

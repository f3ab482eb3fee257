"""A timm-style registry of model constructors.

Every architecture metaprune can build is registered here under a name; checkpoints
store that name plus JSON kwargs, so the registry doubles as the allow-list of code a
checkpoint may ask us to run.

Example::

    @register_model("my_net")
    def my_net(*, num_classes: int = 10) -> nn.Module: ...

    model = create_model("my_net", num_classes=3)

Names come from *architecture sources*: ``builtin`` (the CIFAR models, no ``/`` in the
name), ``torchvision/<name>`` (registered one by one) and, when timm is installed,
``timm/<name>`` for every name in timm's own registry (a dynamic source: resolved by
:func:`register_source`'s lookup, never listed by :func:`list_models`).
:func:`list_sources` says which a process accepts; an operator narrows them with
``METAPRUNE_ARCH_SOURCES=builtin,torchvision`` (inherited by worker processes) or
:func:`set_enabled_sources`.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from torch import nn

from metaprune.errors import NotFoundError, quote

__all__ = [
    "SOURCES_ENV",
    "ArchitectureSource",
    "ModelFactory",
    "UnknownModelError",
    "create_model",
    "is_model",
    "list_models",
    "list_sources",
    "register_model",
    "register_source",
    "set_enabled_sources",
]

ModelFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}

#: Environment variable naming the architecture sources a process accepts (comma-separated).
SOURCES_ENV = "METAPRUNE_ARCH_SOURCES"


@dataclasses.dataclass(frozen=True)
class ArchitectureSource:
    """A dynamic source of architectures named ``prefix + name``.

    Attributes:
        name: the source's name (``"timm"``), also the prefix without its ``/``.
        names: the names it offers, without the prefix (the allow-list).
        factory: ``factory(name)`` returns the constructor of ``prefix + name``.
        unavailable: why the source cannot be used here (e.g. not installed), or ``None``.
    """

    name: str
    names: Callable[[], frozenset[str]]
    factory: Callable[[str], ModelFactory]
    unavailable: Callable[[], str | None] = lambda: None

    @property
    def prefix(self) -> str:
        return self.name + "/"


_SOURCES: dict[str, ArchitectureSource] = {}
_STATIC_SOURCES = ("builtin", "torchvision")


def register_source(source: ArchitectureSource) -> ArchitectureSource:
    """Add a dynamic architecture source (see :class:`ArchitectureSource`).

    Raises:
        ValueError: if a source of that name exists.
    """
    if source.name in _SOURCES or source.name in _STATIC_SOURCES:
        raise ValueError(f"architecture source {source.name!r} is already registered")
    _SOURCES[source.name] = source
    return source


def _source_of(name: str) -> str:
    return name.split("/", 1)[0] if "/" in name else "builtin"


def _enabled() -> frozenset[str] | None:
    """The sources the operator allowed (``None``: all)."""
    text = os.environ.get(SOURCES_ENV)
    if text is None:
        return None
    return frozenset(s.strip() for s in text.split(",") if s.strip())


def set_enabled_sources(names: Sequence[str] | None) -> None:
    """Accept only the architecture sources ``names`` in this process and the worker
    processes it starts afterwards (``None``: all). Sets ``METAPRUNE_ARCH_SOURCES``.

    Raises:
        ValueError: on an unknown source name.
    """
    if names is None:
        os.environ.pop(SOURCES_ENV, None)
        return
    known = {*_STATIC_SOURCES, *_SOURCES}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown architecture source(s) {unknown} (known: {sorted(known)})")
    os.environ[SOURCES_ENV] = ",".join(names)


def _why_not(source: str) -> str | None:
    """Why architecture source ``source`` cannot be used in this process, or ``None``."""
    enabled = _enabled()
    if enabled is not None and source not in enabled:
        return f"architecture source {source!r} is switched off here ({SOURCES_ENV}={','.join(sorted(enabled))})"
    dynamic = _SOURCES.get(source)
    return dynamic.unavailable() if dynamic is not None else None


def list_sources() -> list[str]:
    """The architecture sources this process accepts: ``builtin``, ``torchvision``, and
    ``timm`` when it is installed (all of them unless an operator narrowed them)."""
    return [s for s in (*_STATIC_SOURCES, *_SOURCES) if _why_not(s) is None]


def _dynamic(name: str) -> tuple[ArchitectureSource, str] | None:
    source = _SOURCES.get(_source_of(name))
    if source is None or _why_not(source.name) is not None:
        return None
    base = name[len(source.prefix) :]
    return (source, base) if base in source.names() else None


class UnknownModelError(NotFoundError, KeyError):
    """Raised for a model name that is not registered (a :class:`NotFoundError`, so also a
    ``KeyError``/``LookupError`` and a ``ValueError``)."""

    def __init__(self, name: str) -> None:
        name = str(name)
        self.name = name
        reason = _why_not(_source_of(name)) if len(name) <= 200 else None
        detail = (
            f"{reason}" if reason is not None
            else f"{len(_REGISTRY)} models registered, see metaprune.models.list_models()"
            + "".join(f"; {s}/<name> for any name in {s}'s own registry" for s in _SOURCES
                      if s in list_sources())
        )  # fmt: skip
        self.message = f"unknown model {quote(name)} ({detail}){_hint(name)}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


def _hint(name: str) -> str:
    """Names the user may have meant: the same model in another source first (``resnet18``
    -> ``torchvision/resnet18``, ``timm/resnet18``), then close spellings."""
    if len(name) > 100:  # difflib is quadratic in the length
        return ""
    accepted = set(list_sources())
    base = name.rsplit("/", 1)[-1]
    same = [n for n in (f"{s}/{base}" for s in ("torchvision", *_SOURCES)) if n != name]
    close = [n for n in same if _source_of(n) in accepted and is_model(n)]
    if not close:
        pool = [n for n in _REGISTRY if _source_of(n) in accepted]
        for s in _SOURCES:
            if s in accepted and name.startswith(s + "/"):
                pool += [s + "/" + n for n in _SOURCES[s].names()]
        close += [n for n in difflib.get_close_matches(name, pool, n=5, cutoff=0.6) if n not in close]
    close = close[:5]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


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
    """Whether ``name`` is a model this process accepts: registered, or offered by an
    enabled dynamic source (``timm/<name>``)."""
    if not isinstance(name, str) or len(name) > 200:
        return False
    if name in _REGISTRY:
        return _why_not(_source_of(name)) is None
    return _dynamic(name) is not None


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by an ``fnmatch`` pattern."""
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the model ``name`` (see :func:`is_model`) with constructor ``kwargs``.

    Raises:
        UnknownModelError: if ``name`` is not accepted (message lists close matches).
    """
    if not is_model(name):
        raise UnknownModelError(name if isinstance(name, str) else quote(name))
    factory = _REGISTRY.get(name)
    if factory is None:
        found = _dynamic(name)
        assert found is not None
        factory = found[0].factory(found[1])
    return factory(**kwargs)

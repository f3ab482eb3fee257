"""Importance criteria for progressive pruning, as a registry (open set, tested per entry).

An importance maps a Torch-Pruning group to one score per channel; low scores are
pruned first. Registered criteria:

* ``"group-l2"``: ``GroupMagnitudeImportance`` -- the L``p`` norm of each channel's
  weights in every coupled layer, reduced over the group (mean) and divided by the
  group's maximum so that all groups can be ranked globally (METHOD.md section 5).
* ``"random"``: seeded uniform scores, the floor every method must beat.

Example::

    @register_importance("my-criterion")
    def my_criterion(*, p: int, group_reduction: str, normalizer: str, seed: int):
        return MyImportance(...)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
import torch_pruning as tp

from metaprune.pruning._checks import ConfigError

__all__ = [
    "ImportanceFactory",
    "SeededRandomImportance",
    "list_importances",
    "make_importance",
    "register_importance",
]

ImportanceFactory = Callable[..., tp.importance.Importance]
_REGISTRY: dict[str, ImportanceFactory] = {}


def register_importance(name: str) -> Callable[[ImportanceFactory], ImportanceFactory]:
    """Decorator registering ``factory(*, p, group_reduction, normalizer, seed)`` as ``name``."""

    def decorator(factory: ImportanceFactory) -> ImportanceFactory:
        if name in _REGISTRY:
            raise ValueError(f"importance {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_importances() -> list[str]:
    """Sorted names of the registered importance criteria."""
    return sorted(_REGISTRY)


def make_importance(
    name: str,
    *,
    p: int = 2,
    group_reduction: str = "mean",
    normalizer: str = "max",
    seed: int = 0,
) -> tp.importance.Importance:
    """Build the registered importance ``name``.

    Raises:
        ConfigError: if ``name`` is not registered (close matches are suggested).
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown importance {name!r} (registered: {', '.join(list_importances())}){hint}"
        )
    return factory(p=p, group_reduction=group_reduction, normalizer=normalizer, seed=seed)


class SeededRandomImportance(tp.importance.Importance):
    """Uniform random scores from a private generator, so ``random`` runs are reproducible
    (Torch-Pruning's ``RandomImportance`` draws from the global RNG)."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor:
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self.generator)


@register_importance("group-l2")
def _group_l2(
    *, p: int, group_reduction: str, normalizer: str, seed: int
) -> tp.importance.Importance:
    return tp.importance.GroupMagnitudeImportance(
        p=p,
        group_reduction=group_reduction,
        normalizer=None if normalizer == "none" else normalizer,
    )


@register_importance("random")
def _random(
    *, p: int, group_reduction: str, normalizer: str, seed: int
) -> tp.importance.Importance:
    return SeededRandomImportance(seed)

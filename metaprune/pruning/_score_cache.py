"""A group's scores reused across pruning steps while nothing they read has changed.

A progressive prune ranks every coupled group again at every step. A criterion's scores
of a group are a function of the group (its dependencies and indices) and of the tensors
its layers hold (weights, biases, buffers, gradients), and a prune never changes those
in place: it replaces the tensors of the layers it prunes with smaller ones. So a group
none of whose layers was pruned since its last scoring, holding the very same tensors
(same objects, same version counters), scores the same bit for bit, and its last scores
are returned instead of computed again.

Only criteria known to be such functions are cached (:func:`cacheable`): Torch-Pruning's
group magnitude, Taylor and Hessian importances (the Hessian one while it reads ``.grad``,
i.e. without ``accumulate_grad``), and :class:`~metaprune.pruning.macs_importance.
MacsAwareImportance` over one of them (its cost reads the layers' shapes, which the same
tensors fix). A change made through ``.data`` bumps no version counter: whoever changes
weights between the steps of one pruner must not do it that way (nothing here does; see
``progressive_prune``'s ``on_step``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch_pruning as tp
from torch import Tensor

from metaprune.pruning.macs_importance import MacsAwareImportance

__all__ = ["ScoreCache", "cacheable"]

_imp = tp.importance
_PURE = (_imp.GroupMagnitudeImportance, _imp.GroupTaylorImportance)


def cacheable(importance: Any) -> bool:
    """Whether ``importance``'s scores of a group follow from the group and its tensors."""
    if type(importance) is MacsAwareImportance:
        return cacheable(importance.base)
    if type(importance) is _imp.GroupHessianImportance:
        return not importance._accu_grad  # else it reads gradients it accumulated itself
    return type(importance) in _PURE  # exact types: a subclass may keep state


def _tensors(target: Any) -> list[Tensor]:
    """What a criterion may read of a group item's layer (or bare parameter)."""
    if isinstance(target, Tensor):
        found = [target]
    elif not target._modules:  # a leaf layer: its own tables, no walk of the tree
        found = [t for table in (target._parameters, target._buffers)
                 for t in table.values() if t is not None]  # fmt: skip
    else:
        found = [*target.parameters(), *target.buffers()]
    grads = [t.grad for t in found if t.grad is not None]
    return found + grads


class ScoreCache:
    """The last scores of each group (by its root) and what they were computed from."""

    def __init__(self) -> None:
        # root (layer, pruning function) -> (key, its layers, weak refs to its tensors, scores)
        self._entries: dict[tuple[int, Any], tuple[tuple, list[Any], list[Any], Tensor | None]] = {}
        self.hits = 0
        self.misses = 0

    def scores(self, group: tp.dependency.Group, compute: Callable[[], Tensor | None]) -> Tensor | None:
        """``compute()``'s scores of ``group``, or a copy of the ones it gave last time."""
        key: list[Any] = []
        layers, tensors = [], []
        for item in group:
            # what a criterion reads of an item: its layer, pruning function and indices
            # (the dependency object itself is new for a group's root at every build)
            layer, roots = item.dep.target.module, item.root_idxs
            layers.append(layer)
            found = _tensors(layer)
            tensors += found
            key.append((id(layer), item.dep.handler, tuple(item.idxs),
                        None if roots is None else tuple(roots),
                        tuple((id(t), t._version) for t in found)))  # fmt: skip
        root = (id(group[0].dep.target.module), group[0].dep.handler)
        entry = self._entries.get(root)
        # alive weak references: the ids in the key are still those very tensors
        if entry is not None and entry[0] == tuple(key) and all(r() is not None for r in entry[2]):
            self.hits += 1
            return None if entry[3] is None else entry[3].clone()
        self.misses += 1
        scores = compute()
        refs = [weakref.ref(t) for t in tensors]
        self._entries[root] = (tuple(key), layers, refs, None if scores is None else scores.clone())
        return scores

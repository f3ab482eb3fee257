"""Torch-Pruning's group bookkeeping with an index, applied on import (by
:mod:`metaprune.pruning._tp_fixes`): the same groups, item for item, in less time.

Building a group, Torch-Pruning looks an item up by its layer and pruning function with a
scan over the group's items: ``Group.has_pruning_op`` for every dependency its walk
follows, and ``Group.add_and_merge`` for every item it merges. A group spanning a whole
network (a ViT's residual stream: ~430 items) costs a quadratic number of comparisons,
twice a step (ranking and pruning). Here each group keeps a map from (layer, pruning
function) to its items' positions, filled as items are appended and dropped when an
item is replaced by position (``group[i] = ...``); the answers are the scans' answers.
"""

from __future__ import annotations

import operator
from typing import Any

import torch_pruning as tp

__all__ = ["ORIGINALS"]

_Group = tp.dependency.Group
_GroupItem = tp._helpers.GroupItem
_set_item = _Group.__setitem__
#: Torch-Pruning's own scans (the tests compare the groups both build)
ORIGINALS = {"has_pruning_op": _Group.has_pruning_op, "add_and_merge": _Group.add_and_merge,
             "to_plain_idxs": tp._helpers.to_plain_idxs, "to_root_idxs": tp._helpers.to_root_idxs}


def _positions(group: Any) -> dict[tuple[int, Any], list[int]]:
    """(id of the target node, handler) -> positions of the group's items, in order."""
    index = group.__dict__.get("_positions")
    if index is None:
        index = group.__dict__["_positions"] = ({}, 0)
    found, done = index
    items = group._group
    for i in range(done, len(items)):  # items appended since the last look-up
        dep = items[i].dep
        found.setdefault((id(dep.target), dep.handler), []).append(i)
    group.__dict__["_positions"] = (found, len(items))
    return found


def _has_pruning_op(group: Any, dep: Any, idxs: Any) -> bool:
    items = group._group
    for i in _positions(group).get((id(dep.target), dep.handler), ()):
        if items[i].idxs == idxs:
            return True
    return False


def _add_and_merge(group: Any, dep: Any, idxs: Any) -> None:
    """Merge ``idxs`` into the first item with ``dep``'s layer and pruning function
    (each index once, by its position in the layer, first occurrence kept), or append."""
    at = _positions(group).get((id(dep.target), dep.handler))
    if not at:
        group.add_dep(dep, idxs)
        return
    old = group._group[at[0]]
    seen: set[int] = set()
    merged = [i for i in (*old.idxs, *idxs) if not (i.idx in seen or seen.add(i.idx))]
    _set_item(group, at[0], _GroupItem(dep=old.dep, idxs=merged))  # same layer and handler


def _replace_item(group: Any, k: Any, item: Any) -> None:
    group.__dict__.pop("_positions", None)  # the new item may have another layer
    _set_item(group, k, item)


_Group.has_pruning_op = _has_pruning_op
_Group.add_and_merge = _add_and_merge
_Group.__setitem__ = _replace_item


# A group's items get plain and root index lists from its walk's (index, root index)
# pairs: once per item of every group built (ViT-B/16: 23k lists a prune, 8 % of its
# time as list comprehensions); ``map`` with ``itemgetter`` makes the same lists in C.
_HybridIndex = tp._helpers._HybridIndex
_idx, _root_idx = operator.itemgetter(0), operator.itemgetter(1)  # fields of _HybridIndex


def _to_plain_idxs(idxs: Any) -> Any:
    if len(idxs) == 0 or not isinstance(idxs[0], _HybridIndex):
        return idxs
    return list(map(_idx, idxs))


def _to_root_idxs(idxs: Any) -> Any:
    if len(idxs) == 0 or not isinstance(idxs[0], _HybridIndex):
        return idxs
    return list(map(_root_idx, idxs))


assert _HybridIndex._fields == ("idx", "root_idx")  # what the getters above read
tp._helpers.to_plain_idxs = _to_plain_idxs
tp._helpers.to_root_idxs = _to_root_idxs

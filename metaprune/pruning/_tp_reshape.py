"""Torch-Pruning's reshape mapping, checked against the shapes autograd recorded
(applied on import by :mod:`metaprune.pruning._tp_fixes`; see
:func:`_reshape_index_mapping` for the cases).

Torch-Pruning infers the widths on either side of a reshape from the layers around it
and maps any two that differ as a flatten; the traced shapes say what the reshape does.
"""

from __future__ import annotations

import math
from typing import Any

import torch_pruning as tp

__all__: list[str] = []

_update_reshape_index_mapping = tp.dependency.index_mapping.update_reshape_index_mapping


def _reshape_shapes(grad_fn: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """A traced reshape's input and output shapes, from what autograd keeps of it."""
    try:
        before = tuple(int(n) for n in grad_fn._saved_self_sym_sizes)
        after = tuple(int(n) for n in grad_fn._input_metadata[0].shape)
    except (AttributeError, IndexError, RuntimeError, TypeError):
        return None
    return before, after


def _merges_channels(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Whether a reshape from ``before`` to ``after`` merges the channel axis (axis 1)
    with the axes after it (a flatten before a classifier) or splits it (the reverse):
    the two cases Torch-Pruning's reshape mapping describes (channel ``c`` <-> indices
    ``c * stride ... (c + 1) * stride - 1``)."""
    if len(before) < 2 or len(after) < 2 or before[0] != after[0]:
        return False
    wide, narrow = (after, before) if len(after) < len(before) else (before, after)
    for j in range(3, len(narrow) + 1):  # narrow[1:j] merged into wide[1]
        if math.prod(narrow[1:j]) == wide[1] and narrow[j:] == wide[2:]:
            return True
    return False


def _reshape_index_mapping(graph: Any, reshape_node: Any) -> None:
    """Torch-Pruning's reshape mapping, corrected by the shapes autograd recorded.
    Torch-Pruning infers the widths on either side from the neighbouring layers and maps
    any two that differ as a flatten (channel ``c`` <-> ``c * stride ...``). Where that is
    wrong, found from the traced shapes:

    * the last axis is unchanged and the channel axis is not touched (torchvision Swin's
      window partitions and attention views, channels last): nothing is mapped, the
      channels pass through, where Torch-Pruning's index lists multiplied block after
      block (its own reshape paths are kept otherwise);
    * the channel axis is split or merged but neither side has the width a layer next
      to it has (ShuffleNet's channel shuffle: a view into ``(groups, C / groups)``, a
      transpose, a view back; Torch-Pruning passed indices straight through, or divided
      by zero): no channel-by-channel mapping exists, so the groups stop there
      (:func:`_cut`);
    * the channel axis is split into ``(..., C)`` and the layers on that side are ``C``
      wide: the layout is ``r * C + c`` (ResNeSt's radix split), so channel ``k`` is
      ``k % C`` (:class:`_InnerAxisMapping`), where Torch-Pruning's ``k // stride``
      removed the wrong channels (the model still ran); a side whose layers see the
      whole flat width maps channels one to one;
    * only size-1 axes come or go, or (the channel axis untouched) only the last axis
      is split or merged, channels last: channels pass through (Torch-Pruning's width
      guesses across MaxViT's attention, a head split and an einsum traced as views,
      multiplied index lists until its dry run filled 5 GB).
    """
    shapes = _reshape_shapes(getattr(reshape_node, "grad_fn", None))
    if shapes is None:
        _update_reshape_index_mapping(graph, reshape_node)
        return
    before, after = shapes
    last_kept = before[-1:] == after[-1:]
    if _squeezed(before) == _squeezed(after):  # size-1 axes only
        return
    if not _merges_channels(before, after):
        squeezed = _squeezed(before), _squeezed(after)
        if _merges_channels(*squeezed) and _radix_layout(graph, reshape_node, *squeezed):
            return
        if not (last_kept or _only_last_axes(*squeezed)):
            _update_reshape_index_mapping(graph, reshape_node)
        return
    widths = _inferred_widths(graph, reshape_node)
    if None in widths or (last_kept and before[-1] in widths):
        # unknown, or channels last with the tokens reshaped: Torch-Pruning's own paths
        _update_reshape_index_mapping(graph, reshape_node)
        return
    on_axis_1 = (widths[0] == before[1], widths[1] == after[1])
    if all(on_axis_1):  # a flatten before a classifier, or its reverse
        _update_reshape_index_mapping(graph, reshape_node)
    elif (
        _moves_channels(before, after) and (widths[0] == widths[1] or not any(on_axis_1))
        and _beside_a_transpose_of_axis_1(reshape_node)
    ):  # fmt: skip
        _cut(reshape_node)
    elif not _radix_layout(graph, reshape_node, before, after):
        try:
            _update_reshape_index_mapping(graph, reshape_node)
        except ZeroDivisionError:  # it inferred a width of 0 on one side
            _cut(reshape_node)


def _radix_layout(graph: Any, node: Any, before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Map a channel split ``(B, R * C, ...)`` <-> ``(B, R, C, ...)`` whose nearest
    layers on the split side are ``C`` wide (channel ``k`` is ``k % C``), or are as wide
    as the flat channels, or are behind another reshape (one to one: a view and its
    inverse, ResNeSt's radix softmax); ``False`` for any other reshape (left to
    Torch-Pruning)."""
    split = len(after) > len(before)
    wide, narrow = (before, after) if split else (after, before)
    parts = narrow[1 : len(narrow) - len(wide) + 2]
    width = _nearest_width(graph, node, forward=split)
    if width is _BEHIND_A_RESHAPE or width == wide[1]:
        return True  # nothing to map
    if width != parts[-1] or width == parts[0]:
        return False
    for other in node.outputs if split else node.inputs:
        for dep in node.dependencies:
            if dep.target == other:
                dep.index_mapping[0] = _InnerAxisMapping(width, wide[1] // width, to_inner=True)
        for dep in other.dependencies:
            if dep.target == node:
                dep.index_mapping[0] = _InnerAxisMapping(width, wide[1] // width, to_inner=False)
    return True


_BEHIND_A_RESHAPE = object()


def _nearest_width(graph: Any, node: Any, *, forward: bool) -> Any:
    """The input (``forward``) or output width of the nearest layer after (before)
    ``node`` through element-wise ops that keep the memory layout (not a transpose of
    two axes wider than 1: ShuffleNet's) and reshapes of size-1 axes;
    :data:`_BEHIND_A_RESHAPE` if another reshape comes first, ``None`` if neither is
    found."""
    frontier, seen = list(node.outputs if forward else node.inputs), set()
    for _ in range(16):
        following = []
        for n in frontier:
            if id(n) in seen:
                continue
            seen.add(id(n))
            width = graph.get_in_channels(n) if forward else graph.get_out_channels(n)
            if width is not None:
                return int(width)
            if n.type == tp.ops.OPTYPE.RESHAPE:
                shapes = _reshape_shapes(n.grad_fn)
                if shapes is None or _squeezed(shapes[0]) != _squeezed(shapes[1]):
                    return _BEHIND_A_RESHAPE
                # size-1 axes only (a flatten after pooling): channels pass through
            elif n.type != tp.ops.OPTYPE.ELEMENTWISE or not _keeps_layout(n.grad_fn):
                return None
            following += n.outputs if forward else n.inputs
        frontier = following
    return None


def _keeps_layout(grad_fn: Any) -> bool:
    """Whether a traced op leaves the memory order of its elements alone: anything but a
    transpose or permute that reorders axes wider than 1."""
    try:
        shape = tuple(int(n) for n in grad_fn._input_metadata[0].shape)  # its output
    except (AttributeError, IndexError, RuntimeError, TypeError):
        return True
    rank = len(shape)
    dims = getattr(grad_fn, "_saved_dims", None)
    if dims is not None:
        order = [_axis(d, rank) for d in dims]
    elif getattr(grad_fn, "_saved_dim0", None) is not None:
        order = list(range(rank))
        a, b = _axis(grad_fn._saved_dim0, rank), _axis(grad_fn._saved_dim1, rank)
        order[a], order[b] = order[b], order[a]
    else:
        return True
    if len(order) != rank:
        return True  # not a permutation of this tensor (a reduction's dims)
    wide = [axis for axis, n in zip(order, shape) if n != 1]
    return wide == sorted(wide)


def _axis(dim: Any, rank: int) -> int:
    """An axis autograd saved (negative ones may come back as unsigned 64-bit ints)."""
    dim = int(dim)
    return (dim - (1 << 64) if dim >= 1 << 63 else dim) % rank


class _InnerAxisMapping:
    """Channel ``k`` of a flat ``R x C`` layout (``k = r * C + c``) <-> channel ``c``."""

    def __init__(self, inner: int, count: int, *, to_inner: bool) -> None:
        self.inner, self.count, self.to_inner = inner, count, to_inner

    def __call__(self, idxs: Any) -> list[Any]:
        index = tp._helpers._HybridIndex
        if self.to_inner:  # each channel once (the R layout channels of c map to one c)
            return list({i.idx % self.inner: index(i.idx % self.inner, i.root_idx)
                         for i in reversed(idxs)}.values())  # fmt: skip
        return [index(i.idx + r * self.inner, i.root_idx) for i in idxs for r in range(self.count)]


def _only_last_axes(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Whether a reshape keeps the last axis, or splits it (merges into it) and keeps
    every axis before it: channels last, the flat channel index is unchanged (MaxViT's
    head split ``(B, G, P, D)`` -> ``(B, G, P, heads, D / heads)``; its einsum's views of
    the batch axes)."""
    if before[-1:] == after[-1:]:
        return True
    short, long = sorted((before, after), key=len)
    head = len(short) - 1
    return short[:head] == long[:head] and math.prod(long[head:]) == short[-1]


def _moves_channels(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Whether the axes a channel split or merge makes (or joins) are all wider than 1.
    Where one is 1 (ResNeSt's radix softmax at cardinality 1: a view to
    ``(1, radix, C)``, a transpose of the size-1 axis, a view back) the layout is the
    flat one and Torch-Pruning's pass-through is right."""
    wide, narrow = (after, before) if len(after) < len(before) else (before, after)
    parts = narrow[1 : len(narrow) - len(wide) + 2]
    return all(n > 1 for n in parts)


def _beside_a_transpose_of_axis_1(node: Any) -> bool:
    """Whether a transpose or permute that moves axis 1 follows or precedes ``node``
    (through a ``contiguous`` copy): a channel shuffle's signature. A window partition
    permutes the other axes (timm Swin), which the channel groups pass through."""
    near = [*node.outputs, *node.inputs]
    near += [m for n in list(near) for m in (*n.outputs, *n.inputs)]
    for other in near:
        fn = getattr(other, "grad_fn", None)
        dims = getattr(fn, "_saved_dims", None)
        if dims is not None and len(dims) > 1 and int(dims[1]) != 1:
            return True
        pair = (getattr(fn, "_saved_dim0", None), getattr(fn, "_saved_dim1", None))
        if None not in pair and 1 in pair and pair[0] != pair[1]:
            return True
    return False


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its size-1 axes after the batch axis (inserting or removing
    them reshapes nothing)."""
    return shape[:1] + tuple(n for n in shape[1:] if n != 1)


def _inferred_widths(graph: Any, node: Any) -> tuple[int | None, int | None]:
    """The widths Torch-Pruning infers before and after a reshape (as it does itself)."""
    infer, limit = tp.dependency.shape_infer, tp.dependency.constants.MAX_RECURSION_DEPTH

    def first(nodes: Any, fn: Any) -> int | None:
        for n in nodes:
            depth = [0]
            width = fn(graph, n, depth)
            if depth[0] > limit:
                return None
            if width is not None:
                return int(width)
        return None

    return (
        first(node.inputs, infer.infer_out_channels_recursively),
        first(node.outputs, infer.infer_in_channels_recursively),
    )


def _cut(node: Any) -> None:
    """Map no index through ``node`` (either way): groups end there. A layer whose
    outputs reach it is then pruned alone, which breaks the widths on the other side:
    the dry run finds this and freezes that layer's group."""
    for other in (*node.inputs, *node.outputs):
        for dep in (*node.dependencies, *other.dependencies):
            if {dep.source, dep.target} == {node, other}:
                dep.index_mapping[0] = _no_indices


def _no_indices(idxs: Any) -> list[Any]:
    return []


tp.dependency.index_mapping.update_reshape_index_mapping = _reshape_index_mapping

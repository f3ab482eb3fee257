"""Fixes to Torch-Pruning's dependency graph, applied on import (by
:mod:`metaprune.pruning.structure`): every graph built afterwards uses them.

Torch-Pruning maps channel indices between coupled layers through concatenations,
splits, slices and reshapes. Where its mapping is wrong or unbounded, the fix is here,
each one the smallest change to the function or class Torch-Pruning looks up by name:

* reshapes, checked against the shapes autograd recorded
  (:mod:`metaprune.pruning._tp_reshape`): window partitions, head splits and einsum views pass channels through (torchvision
  Swin, MaxViT), a channel shuffle is a boundary groups stop at (ShuffleNet), a radix
  split ``r * C + c`` maps channel ``k`` to ``k % C`` (ResNeSt, SKNet), and index lists
  that still multiply are bounded;
* the group walk: a layer reached by too many different index lists stops it;
* concatenations: input widths are recorded from the traced forward pass
  (:func:`recorded_concat_widths`) instead of inferred from neighbouring layers, which
  goes wrong through sliced residuals (ReXNet), and an input of unknown width leaves
  the concatenation unmapped instead of raising (CSPNet);
* splits: each output gets its own slice, after pruning too (MixNet), and sizes
  Torch-Pruning cannot infer come from autograd (ShuffleNet's ``chunk``);
* the mappings are recomputed only when the model's widths changed since they were last
  computed (Torch-Pruning recomputes them for every group it builds: a third of a
  ViT-B/16 pruning step).

(With ReXNet's widths inferred wrongly, the offsets shifted indices past every layer's
width and the group walk, which follows a layer again for every new index list, did not
end in 45 min; with the recorded widths its dry run takes 5 s.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor
from torch.overrides import TorchFunctionMode

from metaprune.pruning import (
    _tp_groups,  # noqa: F401 (indexes the groups' items)
    _tp_reshape,  # noqa: F401 (applies the reshape mapping)
)

__all__ = ["MAX_MAPPED_INDICES", "MAX_WALKS_PER_LAYER", "MappingTooLarge", "recorded_concat_widths"]

# Torch-Pruning maps channel indices through reshapes by expanding each index into
# `stride` indices; through a chain of reshapes that do not act on channels (Swin's
# window partitions) the lists multiply until the process runs out of memory (15 GB
# for torchvision's swin_t at 64 px). Past this many indices the mapping stops.
MAX_MAPPED_INDICES = 1 << 18


class MappingTooLarge(RuntimeError):
    pass


class _BoundedFlattenIndexMapping(tp.dependency.index_mapping._FlattenIndexMapping):
    def __call__(self, idxs: Any) -> Any:
        if not self.reverse and len(idxs) * self._stride > MAX_MAPPED_INDICES:
            raise MappingTooLarge(
                f"its index mapping passed {MAX_MAPPED_INDICES:,} indices (mapping "
                f"{len(idxs)} through a reshape of stride {self._stride})"
            )
        return super().__call__(idxs)


# looked up by name when Torch-Pruning builds a graph: every graph built after this import
# is bounded (the class itself is left alone)
tp.dependency.index_mapping._FlattenIndexMapping = _BoundedFlattenIndexMapping

# Torch-Pruning's group walk follows a layer again for every index list that reaches it
# which it has not seen there before (lists that differ only in order count as new), so
# a walk whose mappings keep producing new lists never ends. Across the sweep's
# families a walk reaches a layer by at most 97 lists (ResNeSt; EdgeNeXt 66, most 1-10);
# past this many the walk stops. (It did not catch torchvision's maxvit_t, whose walk
# filled 5 GB with few, long lists: Torch-Pruning mapped its attention's head split and
# einsum views as flattens of stride 3 and 32; they pass channels through now.)
MAX_WALKS_PER_LAYER = 1024

_add_dep = tp.dependency.Group.add_dep


def _bounded_add_dep(group: Any, dep: Any, idxs: Any) -> None:
    counts = group.__dict__.setdefault("_walks", {})
    key = (dep.target, dep.handler)
    counts[key] = counts.get(key, 0) + 1
    if counts[key] > MAX_WALKS_PER_LAYER:
        raise MappingTooLarge(
            f"its group walk reached one layer by more than {MAX_WALKS_PER_LAYER:,} "
            "different index lists"
        )
    _add_dep(group, dep, idxs)


tp.dependency.Group.add_dep = _bounded_add_dep

_update_concat_index_mapping = tp.dependency.index_mapping.update_concat_index_mapping


def _concat_index_mapping(graph: Any, cat_node: Any) -> None:
    """Torch-Pruning's concat mapping, with the input widths the trace recorded (once:
    later, its concat pruner keeps them up to date), and which leaves a concatenation
    unmapped when it cannot infer an input's width, except that it sums those widths
    before it checks them (``int + None``, CSPNet's cross-stage concatenations).
    Unmapped, the dry run decides."""
    widths = _CAT_WIDTHS.pop(getattr(cat_node, "grad_fn", None), None)
    if widths is not None and len(widths) == len(cat_node.inputs):
        cat_node.module.concat_sizes = widths
    try:
        _update_concat_index_mapping(graph, cat_node)
    except TypeError:
        if None not in (cat_node.module.concat_sizes or ()):
            raise


tp.dependency.index_mapping.update_concat_index_mapping = _concat_index_mapping

_update_split_index_mapping = tp.dependency.index_mapping.update_split_index_mapping


def _split_index_mapping(graph: Any, split_node: Any) -> None:
    """Torch-Pruning's split mapping, given the two things it assumes: that the node's
    outputs are listed in the order of the split (they are listed in the order the trace
    found them: MixNet's ``MixedConv2d`` got its slices swapped) and that ``offsets``
    follow the pruned ``split_sizes`` (its split pruner updates only the sizes). The
    order comes from autograd: each consumer's input names the split output it reads."""
    op = split_node.module
    if op.split_sizes is not None and None in op.split_sizes:
        op.split_sizes = _traced_split_sizes(split_node.grad_fn)
    if op.split_sizes is not None:
        op.offsets = [0]
        for size in op.split_sizes:
            op.offsets.append(op.offsets[-1] + size)
    positions = []
    for out in split_node.outputs:
        nrs = {
            nr for fn, nr in getattr(out.grad_fn, "next_functions", ()) if fn is split_node.grad_fn
        }
        positions.append(nrs.pop() if len(nrs) == 1 else None)
    if None not in positions and len(set(positions)) == len(positions):
        order = sorted(range(len(positions)), key=positions.__getitem__)
        split_node.outputs[:] = [split_node.outputs[i] for i in order]
        if sorted(positions) != list(range(len(positions))):  # some outputs are unused
            return
    _update_split_index_mapping(graph, split_node)


tp.dependency.index_mapping.update_split_index_mapping = _split_index_mapping


_update_index_mapping = tp.dependency.index_mapping.update_index_mapping


def _widths_index_mapping(graph: Any) -> None:
    """Torch-Pruning's update of every index mapping of ``graph``, skipped while the
    shapes of its model's parameters and buffers are those of the last update. The
    mappings are a function of the widths (and of what the trace recorded); only a prune,
    which changes shapes, changes them, and Torch-Pruning recomputes them each time it
    builds a group: every group of every step (a ViT-B/16's 40-step prune to 2x spent
    20 s of 67 here, profiled; RESULTS.md, issue 18)."""
    model = getattr(graph, "model", None)
    key = None
    if model is not None:
        key = _widths(graph, model)
        if graph.__dict__.get("_mapped_widths") == key:
            return
    graph.__dict__.pop("_mapped_widths", None)  # a failed update leaves no key behind
    _update_index_mapping(graph)
    if key is not None:
        graph.__dict__["_mapped_widths"] = key


tp.dependency.index_mapping.update_index_mapping = _widths_index_mapping


def _widths(graph: Any, model: Any) -> tuple:
    """The shapes of every parameter and buffer of ``model``, read from its modules'
    own tables (listed once per graph: the graph is keyed by those very modules, so a
    prune changes their tensors, never the modules; ``model.parameters()`` walks the
    tree with names and a memo: 0.7 of a ViT-B/16 prune's 17 CPU s)."""
    modules = graph.__dict__.get("_width_modules")
    if modules is None:
        modules = graph.__dict__["_width_modules"] = list(model.modules())
    return tuple(
        t.shape for m in modules for table in (m._parameters, m._buffers)
        for t in table.values() if t is not None
    )  # fmt: skip


def _traced_split_sizes(grad_fn: Any) -> list[int] | None:
    """The sizes of a channel split as autograd recorded it (``chunk``: ``split_size``;
    ``split``: ``split_sizes``), where Torch-Pruning could not infer one from the layers
    around it (ShuffleNet's ``chunk`` after a channel shuffle); ``None`` if not known."""
    saved = lambda name: getattr(grad_fn, name, None)  # noqa: E731
    sizes, dim = saved("_saved_self_sym_sizes"), saved("_saved_dim")
    if sizes is None or dim != 1:
        return None
    if saved("_saved_split_sizes") is not None:
        return [int(n) for n in saved("_saved_split_sizes")]
    step, total = saved("_saved_split_size"), int(sizes[1])
    if not step:
        return None
    return [min(int(step), total - start) for start in range(0, total, int(step))]


_CATS = (torch.cat, torch.concat, torch.concatenate)
#: grad_fn of every concatenation along dim 1 traced under :func:`recorded_concat_widths`
#: -> its inputs' widths (consumed by the first mapping of that concatenation)
_CAT_WIDTHS: dict[Any, list[int]] = {}


class _RecordCats(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CATS and isinstance(out, Tensor) and out.grad_fn is not None and out.dim() > 1:
            tensors = args[0] if args else kwargs.get("tensors", kwargs.get("arrays", ()))
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            if dim in (1, 1 - out.dim()):
                _CAT_WIDTHS[out.grad_fn] = [int(t.shape[1]) for t in tensors]
        return out


@contextlib.contextmanager
def recorded_concat_widths() -> Iterator[None]:
    """Build Torch-Pruning graphs inside this block: every channel concatenation of the
    traced forward pass gets its inputs' true widths."""
    try:
        with _RecordCats():
            yield
    finally:
        _CAT_WIDTHS.clear()

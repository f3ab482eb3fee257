"""``decode``: the exact inverse of ``encode``, and its differentiable form."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from .graph import ModelGraph
from .plan import Carried, Plan
from .schema import SLOT, SLOTS_PER_ROLE

__all__ = ["decode", "decode_tensors", "DecodeError"]

_STATS = {SLOT["running_mean"], SLOT["running_var"]}


class DecodeError(ValueError):
    """A graph that does not fit the model it is decoded into."""


def decode_tensors(
    plan: Plan,
    x: torch.Tensor,
    edge_flat: torch.Tensor,
    extras: Mapping[str, torch.Tensor] | Carried,
    *,
    stats_from: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """State tensors from node features ``x`` and edge values ``edge_flat``.

    The result holds views of ``x`` and ``edge_flat``, so gradients flow back to them (use
    it with ``torch.func.functional_call``). Running statistics are read from
    ``stats_from`` when given: a metanetwork's predictions for them are discarded.
    """
    if edge_flat.numel() != plan.num_values or x.shape[0] != plan.num_nodes:
        raise DecodeError(
            f"graph has {x.shape[0]} nodes and {edge_flat.numel()} edge values; the model's "
            f"plan expects {plan.num_nodes} nodes and {plan.num_values} values"
        )
    out: dict[str, torch.Tensor] = {}
    start = 0
    for key, shape in plan.weights:
        n = 1
        for s in shape:
            n *= s
        out[key] = edge_flat[start : start + n].view(shape)
        start += n
    pieces: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for p in plan.placements:
        src = stats_from if stats_from is not None and p.column % SLOTS_PER_ROLE in _STATS else x
        pieces.setdefault(p.key, []).append(
            (p.start, src[p.node_offset : p.node_offset + p.size, p.column])
        )
    for key, parts in pieces.items():
        parts.sort(key=lambda t: t[0])
        out[key] = parts[0][1] if len(parts) == 1 else torch.cat([t for _, t in parts])
    out.update(extras.items())
    return out


def decode(graph: ModelGraph, model: nn.Module) -> dict[str, torch.Tensor]:
    """A full state dict for ``model`` (same keys, shapes and dtypes) from ``graph``."""
    plan = graph.plan
    reference = model.state_dict()
    if list(reference) != plan.state_keys:
        missing = sorted(set(plan.state_keys) - set(reference))
        extra = sorted(set(reference) - set(plan.state_keys))
        raise DecodeError(
            f"graph was encoded from a different architecture than {type(model).__name__}: "
            f"keys only in the graph {missing[:5]}, keys only in the model {extra[:5]}"
        )
    with torch.no_grad():
        tensors = decode_tensors(plan, graph.x, graph.edge_flat, graph.extras)
    # an OrderedDict carrying the model's ``_metadata`` (module versions), as
    # ``state_dict()`` does: loaders such as torchvision's MNASNet read their version there
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    metadata = getattr(reference, "_metadata", None)
    if metadata is not None:
        state._metadata = copy.deepcopy(metadata)  # type: ignore[attr-defined]
    for key, ref in reference.items():
        value = tensors[key]
        if value.shape != ref.shape:
            raise DecodeError(
                f"'{key}': expected shape {tuple(ref.shape)}, found {tuple(value.shape)}"
            )
        state[key] = value.to(ref.dtype).clone()
    return state

"""``encode``: a network's parameters and buffers as a :class:`ModelGraph`."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .graph import ModelGraph
from .plan import Carried, Plan
from .trace import build_plan

__all__ = ["encode", "plan_for", "clear_plan_cache"]

_CACHE: OrderedDict[tuple, Plan] = OrderedDict()
_CACHE_SIZE = 16


def _as_tuple(example_inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def plan_for(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    state: dict[str, torch.Tensor] | None = None,
) -> Plan:
    """The graph structure of ``model``'s architecture, traced once and cached.

    The cache key is the module tree (its ``repr`` names every layer's configuration), the
    shape of every state tensor and the input shapes, so models of one architecture share
    a plan while a pruned or re-configured model gets its own.
    """
    inputs = _as_tuple(example_inputs)
    state = model.state_dict() if state is None else state
    key = (
        type(model),
        repr(model),
        tuple((k, tuple(v.shape), v.dtype) for k, v in state.items()),
        tuple((tuple(x.shape), x.dtype) for x in inputs),
    )
    plan = _CACHE.get(key)
    if plan is None:
        plan = build_plan(model, inputs)
        _CACHE[key] = plan
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return plan


def clear_plan_cache() -> None:
    _CACHE.clear()


def encode(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> ModelGraph:
    """Encode ``model`` as a graph; ``example_inputs`` fix the input shapes for tracing.

    Nodes are channels, edges weight slices (see :mod:`graph_encoding.schema`). The result
    holds copies of the values, so editing the graph never edits the model.
    """
    state = model.state_dict()
    plan = plan_for(model, example_inputs, state)  # one state_dict walk serves key and values
    with torch.no_grad():
        flat = (
            torch.cat([state[k].detach().reshape(-1) for k, _ in plan.weights])
            if plan.weights
            else torch.empty(0, dtype=plan.dtype)
        )
        x = plan.node_template().clone()
        for p in plan.placements:
            x[p.node_offset : p.node_offset + p.size, p.column] = state[p.key].detach()[
                p.start : p.start + p.size
            ]
        extras = Carried({k: state[k].detach().clone() for k in plan.carried})
    return ModelGraph(
        x=x,
        edge_flat=flat,
        layer_table=plan.layer_table.clone(),
        num_nodes=plan.num_nodes,
        plan=plan,
        extras=extras,
    )

"""Running a metanetwork on a model: graph in, transformed weights out."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from graph_encoding import ModelGraph, decode_tensors, encode

from .network import MetaNetwork

__all__ = ["apply_metanetwork", "transformed_tensors"]


def transformed_tensors(metanet: MetaNetwork, graph: ModelGraph) -> dict[str, Tensor]:
    """The state tensors of ``graph``'s network after ``metanet``, differentiable with
    respect to ``metanet``'s parameters (use with ``torch.func.functional_call``).

    Running statistics come from the input graph: the metanetwork's predictions for them
    are discarded. ``graph`` must be one network (not a ``Batch``).
    """
    if isinstance(graph.plan, list):
        raise ValueError(
            "transformed_tensors takes one ModelGraph, got a Batch of "
            f"{len(graph.plan)}; call it per graph (Batch.get_example(i))"
        )
    x_new, flat_new = metanet(graph)
    return decode_tensors(graph.plan, x_new, flat_new, graph.extras, stats_from=graph.x)


def apply_metanetwork(
    metanet: MetaNetwork,
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    graph: ModelGraph | None = None,
) -> nn.Module:
    """A copy of ``model`` whose weights ``metanet`` has rewritten (``model`` is untouched).

    ``example_inputs`` fix the input shapes for tracing (see :func:`graph_encoding.encode`);
    ``graph``, if given, is ``model``'s encoding already made with them (not encoded again;
    its tensors are moved in place).
    The graph is moved to the metanetwork's device and dtype, the results back to the model's.
    """
    if graph is None:
        graph = encode(model, example_inputs)
    param = next(metanet.parameters())
    graph.x = graph.x.to(param.device, param.dtype)
    graph.edge_flat = graph.edge_flat.to(param.device, param.dtype)
    with torch.no_grad():
        tensors = transformed_tensors(metanet, graph)
    out = copy.deepcopy(model)
    reference = out.state_dict()
    out.load_state_dict({k: tensors[k].to(v.device, v.dtype) for k, v in reference.items()})
    return out

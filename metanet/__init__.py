"""The graph metanetwork: a GNN that rewrites a network's weights so it prunes well.

``MetaNetwork(edge_types=edge_types_of(graphs))`` (one encoder per edge type) or
``MetaNetwork(edge_encoding="canonical")`` (one encoder for every kind and kernel size,
:mod:`metanet.canonical`) maps a :class:`graph_encoding.ModelGraph` to new node features and
edge values; :func:`apply_metanetwork` does it for an
``nn.Module`` and returns a transformed copy; :func:`transformed_tensors` gives the
differentiable state tensors that meta-training feeds to ``torch.func.functional_call``.
Layers run on the encoder's dense per-layer blocks (:class:`MetaLayer`);
:class:`ReferenceMetaLayer` is the plain PyG formulation of the same function.
"""

from . import method as _method  # noqa: F401  (registers the "metanet" pruning method)
from .apply import apply_metanetwork, transformed_tensors
from .blocks import BlockLayout
from .choice import MetanetChoice, NoMetanetworkError, choose_metanetwork
from .export import export, list_pretrained, load
from .layer import MetaLayer, sign_vector
from .network import EDGE_ENCODINGS, MetaNetwork, edge_signatures_of, edge_types_of
from .reference import ReferenceMetaLayer, ReferenceMetaNetwork
from .summary import training_summary

__all__ = [
    "MetaNetwork",
    "MetaLayer",
    "BlockLayout",
    "ReferenceMetaLayer",
    "ReferenceMetaNetwork",
    "apply_metanetwork",
    "transformed_tensors",
    "edge_types_of",
    "edge_signatures_of",
    "EDGE_ENCODINGS",
    "sign_vector",
    "export",
    "load",
    "list_pretrained",
    "choose_metanetwork",
    "MetanetChoice",
    "NoMetanetworkError",
    "training_summary",
]

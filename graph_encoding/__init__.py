"""Networks as graphs, exactly.

``encode(model, example_inputs)`` traces ``model`` with torch.fx and returns a
:class:`ModelGraph` (a PyG ``Data``): one node per channel (the network's input channels
and the output channels of every conv / linear / attention projection; a residual add or
a gate merges into the node set of its main branch), one edge per (output, input) weight
slice whose feature is the flattened kernel. ``decode(graph, model)`` gives back a full
state dict, bit for bit.

Schema (the same for every family, see :mod:`graph_encoding.schema`):

* Node features ``x``: two roles of five values (bias, norm weight, norm bias, running
  mean, running var; role 1 is a projection shortcut or a gate writing the same channels),
  one-hot node kind (input, hidden, output, norm, concat, sum, attention), one-hot norm
  kind per role (none, batch, layer, group), and depth.
* Edges are grouped per layer into blocks (``layer_table``; columns in
  ``schema.LAYER_COLUMNS``: node ranges, groups, kernel size, stride, dilation, padding,
  edge kind, edge/value offsets, attention heads). Dense blocks are out-major views of
  ``edge_flat``; identity residuals are sparse diagonals with feature 1.0.
* Edge kinds (``EdgeKind``): identity, linear, conv, grouped conv, depthwise conv,
  projection shortcut, gate (squeeze-excitation), attention q / k / v / out. The per-edge
  feature width is the kernel size (``edge_type_key`` names the pair, e.g. ``CONV:9``).
* Tensors the graph does not hold (positional embeddings, class tokens, layer scales,
  ``num_batches_tracked``) travel in ``graph.extras``; ``graph.coverage`` is the fraction of
  parameters in the graph.

Supported: Conv1d/Conv2d (any kernel, stride, padding, dilation, groups), Linear,
BatchNorm, LayerNorm (over channels), GroupNorm, biases, residual adds (identity and
projection), concatenation, flatten / reshape / permute, nn.MultiheadAttention,
multiplicative gates, the usual activations and pools; and (issue 13, timm) functional
norms / convs / linears reading the model's own tensors (:mod:`.functional_rules`),
channel slices, ``split`` / ``chunk`` as node sub-ranges (:mod:`.op_rules`), channels
reshaped into factors: attention heads, fused ``qkv`` cut into q / k / v blocks over its
weight rows, channel shuffles as node permutations, SK / ResNeSt branch attention
(:mod:`.spread_rules`), torchvision's Swin window attention. Anything else raises
:class:`EncodingError` naming the module path and the op; the README lists what is still
refused and why. ``decode`` returns the state dict with the model's ``_metadata``.
"""

from .decode import DecodeError, decode, decode_tensors
from .encode import clear_plan_cache, encode, plan_for
from .graph import ModelGraph
from .plan import Block, Plan
from .schema import (
    COL,
    LAYER_COLUMNS,
    NODE_FEATURES,
    VALUE_SLOTS,
    EdgeKind,
    NodeKind,
    NormKind,
    edge_type_key,
)
from .trace import EncodingError

__all__ = [
    "encode",
    "decode",
    "decode_tensors",
    "plan_for",
    "clear_plan_cache",
    "ModelGraph",
    "Plan",
    "Block",
    "EncodingError",
    "DecodeError",
    "EdgeKind",
    "NodeKind",
    "NormKind",
    "COL",
    "LAYER_COLUMNS",
    "NODE_FEATURES",
    "VALUE_SLOTS",
    "edge_type_key",
]

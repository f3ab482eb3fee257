"""The one node/edge schema shared by every architecture family.

Node features (``ModelGraph.x``, one row per channel) are ``NODE_FEATURES`` floats:

========  ===========================================================
columns   meaning
========  ===========================================================
0-4       role 0 (the layer that writes the node set): bias, norm weight,
          norm bias, norm running mean, norm running var
5-9       role 1 (a projection shortcut or a gate merged into the same
          node set): the same five values
10-16     one-hot :class:`NodeKind`
17-20     one-hot :class:`NormKind` of role 0
21-24     one-hot :class:`NormKind` of role 1
25        depth: index of the writing layer / number of layers
========  ===========================================================

Absent values take the "identity" defaults (bias 0, norm 1, 0, 0, 1), so a metanetwork
sees the same slot meaning in every family. Running statistics are inputs only: a
decoder must take them from the input graph, never from predictions.

Edges are grouped per layer ("blocks"); ``ModelGraph.layer_table`` has one row per block
with the columns of :data:`LAYER_COLUMNS`. A block of kind ``IDENTITY`` is a sparse
diagonal (edge ``k`` goes from ``in_offset + k`` to ``out_offset + k``) with the constant
feature 1.0 and no stored values; every other block is dense, out-major:
``edge_flat[value_offset : value_offset + out*in_per_group*width]`` viewed as
``(out_size, in_size // groups, width)`` is the layer's weight, with no copy.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "EdgeKind",
    "NodeKind",
    "NormKind",
    "LAYER_COLUMNS",
    "COL",
    "NODE_FEATURES",
    "VALUE_SLOTS",
    "SLOT",
    "ROLES",
    "DEFAULT_SLOT_VALUES",
    "edge_type_key",
]


class EdgeKind(IntEnum):
    """What a block of edges is; stored per edge in ``edge_type``."""

    IDENTITY = 0  # residual / pass-through diagonal, feature 1.0
    LINEAR = 1
    CONV = 2
    GROUPED_CONV = 3
    DEPTHWISE_CONV = 4
    PROJECTION = 5  # a layer whose output is added into another layer's node set
    GATE = 6  # a layer whose output multiplies a node set (squeeze-excitation)
    ATTN_Q = 7
    ATTN_K = 8
    ATTN_V = 9
    ATTN_OUT = 10


class NodeKind(IntEnum):
    INPUT = 0  # channels of the network input
    HIDDEN = 1  # output channels of a conv / linear layer
    OUTPUT = 2  # channels of the network output (never pruned)
    NORM = 3  # a normalisation applied to channels that are not its own (pre-norm, DenseNet)
    CONCAT = 4  # a concatenation read by a layer as one contiguous input
    SUM = 5  # a sum of node sets none of which a layer writes alone
    ATTENTION = 6  # query / key / value channels of an attention layer


class NormKind(IntEnum):
    NONE = 0
    BATCH = 1
    LAYER = 2
    GROUP = 3


ROLES = 2
SLOT = {"bias": 0, "weight": 1, "norm_bias": 2, "running_mean": 3, "running_var": 4}
SLOTS_PER_ROLE = len(SLOT)
VALUE_SLOTS = ROLES * SLOTS_PER_ROLE
DEFAULT_SLOT_VALUES = (0.0, 1.0, 0.0, 0.0, 1.0) * ROLES
NODE_KIND_COL = VALUE_SLOTS
NORM_KIND_COL = NODE_KIND_COL + len(NodeKind)
DEPTH_COL = NORM_KIND_COL + ROLES * len(NormKind)
NODE_FEATURES = DEPTH_COL + 1

LAYER_COLUMNS = (
    "out_offset",  # first node of the block's output range
    "out_size",
    "in_offset",  # first node of the block's input range
    "in_size",
    "groups",
    "width",  # features per edge (kernel numel; 1 for linear and identity)
    "kind",  # EdgeKind
    "edge_offset",  # first edge of the block in edge order
    "value_offset",  # first value of the block in edge_flat
    "kernel_h",
    "kernel_w",
    "stride",
    "dilation",
    "padding",
    "depth",
    "heads",  # attention heads (1 otherwise)
)
COL = {name: i for i, name in enumerate(LAYER_COLUMNS)}


def edge_type_key(kind: int, width: int) -> str:
    """A stable name per (edge kind, feature width), e.g. ``"CONV:9"``; a metanetwork keys
    its per-edge-type encoders on it."""
    return f"{EdgeKind(int(kind)).name}:{int(width)}"

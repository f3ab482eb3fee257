"""``MetaLayer``: one bidirectional message-passing layer of the metanetwork, computed on
the encoder's dense per-layer blocks instead of scattering over ``edge_index``.

A dense block of ``out x in`` edges is one ``(out, in / groups, h)`` slab of the edge
states: messages into its output nodes are a reduction along its ``in`` axis, messages
into its input nodes (the reverse direction) a reduction along its ``out`` axis, and
factors that depend only on the receiving node are pulled out of the reductions. The edge
side of all blocks (both directions' statistics and the edge update) is one fused custom
op, :func:`cuda_ops.meta_blocks`; what remains here is node-sized. The result is the same
function as :class:`metanet.reference.ReferenceMetaLayer`, the plain PyG formulation
(tests compare them in float64 to 1e-12).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cuda_ops import STD_EPS, meta_blocks, multi_aggregate

from .blocks import BlockLayout

__all__ = ["MetaLayer", "sign_vector", "STD_EPS"]

# STD_EPS (1e-5): the clamp of PyG's StdAggregation, reproduced so that both layers agree


def sign_vector(hidden: int) -> Tensor:
    """``+1`` on the first ``hidden // 2`` channels, ``-1`` on the rest: multiplies the edge
    features of the reverse direction so that the shared layer can tell directions apart."""
    s = torch.ones(hidden)
    s[hidden // 2 :] = -1.0
    return s


class MetaLayer(nn.Module):
    r"""The metanetwork's message-passing layer (METHOD.md section 3), on dense blocks.

    With :math:`\bar{h} = \mathrm{LayerNorm}(h)` (no affine),
    :math:`x = \sigma(W_1\bar{h})`, :math:`z = \sigma(W_2\bar{h})`,
    :math:`a = \sigma(W_3\bar{h})`, :math:`b = \sigma(W_4\bar{h})` (:math:`\sigma` = SiLU),
    one direction over edges :math:`j \to i` with features :math:`e_{ij}` computes

    .. math::
        m_i = W_5 \big[\mathrm{mean}, \mathrm{std}, \max, \min\big]_{j \in N(i)}
              \left(z_i \odot x_j \odot e_{ij}\right), \qquad
        \Delta e_{ij} = a_j \odot b_i \odot e_{ij}

    and the layer applies it forward and, with the same weights, over the flipped edges
    with features :math:`s \odot e` (:math:`s` = :func:`sign_vector`):

    .. math::
        h \leftarrow h + m^{\rightarrow} + m^{\leftarrow}, \qquad
        e \leftarrow e + \Delta e^{\rightarrow} + s \odot \Delta e^{\leftarrow}.

    Aggregations follow PyG: ``std`` is :math:`\sqrt{\max(\mathrm{var}, 10^{-5})}`, set to 0
    at the floor; a node without incoming edges gets 0 for all four.

    Args:
        hidden (int): Size of node and edge hidden states.

    Shapes:
        - **input:** node states :math:`(|V|, h)`, edge states :math:`(|E|, h)` block after
          block in ``layer_table`` order (see :class:`metanet.blocks.BlockLayout`), and the
          graph's :class:`~metanet.blocks.BlockLayout`
        - **output:** node states :math:`(|V|, h)`, edge states :math:`(|E|, h)`
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.lin1 = nn.Linear(hidden, hidden)  # x: source factor of messages
        self.lin2 = nn.Linear(hidden, hidden)  # z: receiver factor of messages
        self.lin3 = nn.Linear(hidden, hidden)  # a: source factor of edge updates
        self.lin4 = nn.Linear(hidden, hidden)  # b: target factor of edge updates
        self.lin_out = nn.Linear(4 * hidden, hidden)
        self.register_buffer("sign", sign_vector(hidden), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin1, self.lin2, self.lin3, self.lin4, self.lin_out):
            lin.reset_parameters()

    def node_factors(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``[x | a | b]`` (``[N, 3h]``, what blocks read; one matmul) and ``z``."""
        hn = self.norm(h)
        lins = (self.lin1, self.lin3, self.lin4)
        weight = torch.cat([lin.weight for lin in lins])
        bias = torch.cat([lin.bias for lin in lins])
        return F.silu(F.linear(hn, weight, bias)), F.silu(self.lin2(hn))

    def forward(self, h: Tensor, edges: Tensor, layout: BlockLayout) -> tuple[Tensor, Tensor]:
        if h.size(0) != layout.num_nodes or edges.size(0) != layout.num_edges:
            raise ValueError(
                f"MetaLayer got {h.size(0)} nodes and {edges.size(0)} edges; the layout has "
                f"{layout.num_nodes} nodes and {layout.num_edges} edges (build both from the "
                f"same graph)"
            )
        xab, z = self.node_factors(h)
        fwd, rev, new_edges = meta_blocks(edges, xab, layout.table)
        # both directions at once: [2, N, 4, h] statistics; reverse messages carry s * e, and
        # the sign is a per-channel constant, pulled out of the reductions with z
        aggregated = multi_aggregate(
            torch.stack([fwd, rev]), layout.counts, torch.stack([z, z * self.sign])
        )
        return h + self.lin_out(aggregated).sum(0), new_edges

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}"

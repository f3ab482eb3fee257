"""The metanetwork layer written the straightforward way: PyG message passing over
``edge_index``. It is the ground truth that :class:`metanet.layer.MetaLayer` (dense blocks)
is tested and benchmarked against; it holds the same parameters under the same names."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from graph_encoding import ModelGraph

from .blocks import BlockLayout
from .layer import sign_vector
from .network import MetaNetwork

__all__ = ["ReferenceMetaLayer", "ReferenceMetaNetwork"]


class ReferenceMetaLayer(MessagePassing):
    r"""The update rule of :class:`metanet.layer.MetaLayer`, one message per edge.

    .. math::
        m_i = W_5 \big[\mathrm{mean}, \mathrm{std}, \max, \min\big]_{j \in N(i)}
              \left(z_i \odot x_j \odot e_{ij}\right), \qquad
        \Delta e_{ij} = a_j \odot b_i \odot e_{ij},

    applied over ``edge_index`` and over the flipped ``edge_index`` with features
    :math:`s \odot e`; :math:`h \leftarrow h + m^{\rightarrow} + m^{\leftarrow}`,
    :math:`e \leftarrow e + \Delta e^{\rightarrow} + s \odot \Delta e^{\leftarrow}`.

    Args:
        hidden (int): Size of node and edge hidden states.

    Shapes:
        - **input:** node states :math:`(|V|, h)`, edge indices :math:`(2, |E|)`
          (row 0 source), edge states :math:`(|E|, h)`
        - **output:** node states :math:`(|V|, h)`, edge states :math:`(|E|, h)`
    """

    def __init__(self, hidden: int) -> None:
        super().__init__(aggr=["mean", "std", "max", "min"])
        self.hidden = hidden
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.lin1 = nn.Linear(hidden, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.lin3 = nn.Linear(hidden, hidden)
        self.lin4 = nn.Linear(hidden, hidden)
        self.lin_out = nn.Linear(4 * hidden, hidden)
        self.register_buffer("sign", sign_vector(hidden), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin1, self.lin2, self.lin3, self.lin4, self.lin_out):
            lin.reset_parameters()

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        hn = self.norm(h)
        x, z = F.silu(self.lin1(hn)), F.silu(self.lin2(hn))
        a, b = F.silu(self.lin3(hn)), F.silu(self.lin4(hn))
        node_fwd, edge_fwd = self._direction(edge_index, x, z, a, b, edge_attr)
        node_rev, edge_rev = self._direction(edge_index.flip(0), x, z, a, b, edge_attr * self.sign)
        return h + node_fwd + node_rev, edge_attr + edge_fwd + self.sign * edge_rev

    def _direction(
        self, edge_index: Tensor, x: Tensor, z: Tensor, a: Tensor, b: Tensor, e: Tensor
    ) -> tuple[Tensor, Tensor]:
        n = x.size(0)
        aggregated = self.propagate(edge_index, x=x, z=z, edge_attr=e, size=(n, n))
        src, dst = edge_index
        return self.lin_out(aggregated), a[src] * b[dst] * e

    def message(self, x_j: Tensor, z_i: Tensor, edge_attr: Tensor) -> Tensor:
        return z_i * x_j * edge_attr

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(hidden={self.hidden})"


class ReferenceMetaNetwork(MetaNetwork):
    """:class:`metanet.MetaNetwork` with :class:`ReferenceMetaLayer` layers: the same
    parameters (``load_state_dict`` works both ways), the edges as one ``(|E|, h)`` tensor
    in ``edge_index`` order."""

    def _make_layer(self, hidden: int) -> nn.Module:
        return ReferenceMetaLayer(hidden)

    def _message_passing(
        self, h: Tensor, edges: Tensor, graph: ModelGraph, layout: BlockLayout
    ) -> tuple[Tensor, Tensor]:
        edge_index = graph.edge_index  # blocks are in edge order
        for layer in self.layers:
            h, edges = layer(h, edge_index, edges)
        return h, edges

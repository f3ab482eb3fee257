"""MetaLayer (dense blocks) against ReferenceMetaLayer (PyG over edge_index) and by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graph_encoding import COL, LAYER_COLUMNS, EdgeKind, ModelGraph, encode
from metanet import BlockLayout, MetaLayer, ReferenceMetaLayer, sign_vector
from metanet.layer import STD_EPS
from metaprune.models import create_model
from metaprune.testing import TinyConvNet, TinyMLP, TinyResidual, randomize_norms

HIDDEN = 6


class GroupedNet(nn.Module):
    """conv -> grouped conv (groups=2) -> depthwise (groups=in=out) -> depthwise x2 -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
        self.depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.multiplier = nn.Conv2d(6, 12, 1, groups=6, bias=False)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.grouped(torch.relu(self.conv(x))))
        h = torch.relu(self.multiplier(torch.relu(self.depthwise(h))))
        return self.fc(h.mean((2, 3)))


GRAPHS = {
    "tiny_mlp": lambda: (TinyMLP(), torch.randn(1, 2)),
    "tiny_residual": lambda: (TinyResidual(), torch.randn(1, 2)),
    "tiny_conv_projection": lambda: (randomize_norms(TinyConvNet()), torch.randn(1, 3, 6, 6)),
    "grouped_depthwise": lambda: (GroupedNet(), torch.randn(1, 3, 6, 6)),
    "cifar_resnet20_w025": lambda: (
        create_model("cifar_resnet20", width=0.25),
        torch.randn(1, 3, 32, 32),
    ),
}


def _graph(name: str) -> ModelGraph:
    torch.manual_seed(0)
    model, x = GRAPHS[name]()
    return encode(model.double().eval(), x.double())


def _layers(hidden: int = HIDDEN, seed: int = 0) -> tuple[MetaLayer, ReferenceMetaLayer]:
    torch.manual_seed(seed)
    dense = MetaLayer(hidden).double()
    ref = ReferenceMetaLayer(hidden).double()
    ref.load_state_dict(dense.state_dict())
    return dense, ref


def _edge_states(layout: BlockLayout, hidden: int, seed: int = 1) -> torch.Tensor:
    """Random edge states, ``[E, h]`` (blocks in table order = edge_index order)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(layout.num_edges, hidden, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_dense_layer_equals_pyg_reference(name: str) -> None:
    graph = _graph(name)
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    dense, ref = _layers()
    h = torch.randn(graph.num_nodes, HIDDEN, dtype=torch.float64)
    e = _edge_states(layout, HIDDEN)
    h_d, e_d = dense(h, e, layout)
    h_r, e_r = ref(h, graph.edge_index, e)
    assert e_d.shape == (graph.num_edges, HIDDEN)
    assert not torch.allclose(h_d, h) and not torch.allclose(e_d, e)
    torch.testing.assert_close(h_d, h_r, rtol=0, atol=1e-12)
    torch.testing.assert_close(e_d, e_r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["tiny_conv_projection", "grouped_depthwise"])
def test_dense_layer_gradients_equal_pyg_reference(name: str) -> None:
    graph = _graph(name)
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    dense, ref = _layers()
    h = torch.randn(graph.num_nodes, HIDDEN, dtype=torch.float64)
    grads = []
    for layer, run in (
        (dense, lambda hh, ee: dense(hh, ee, layout)),
        (ref, lambda hh, ee: ref(hh, graph.edge_index, ee)),
    ):
        hh = h.clone().requires_grad_()
        ee = _edge_states(layout, HIDDEN).requires_grad_()
        h_new, e_new = run(hh, ee)
        (h_new.sin().sum() + e_new.cos().sum()).backward()
        grads.append([hh.grad, ee.grad, *(p.grad for p in layer.parameters())])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_four_node_literal_graph_by_hand() -> None:
    """Nodes 0, 1 (inputs) -> 2, 3 (outputs), one dense 2x2 block; messages computed per
    node from the literal edge list, with PyG's std."""
    table = torch.zeros(1, len(LAYER_COLUMNS), dtype=torch.long)
    for col, v in dict(
        out_offset=2,
        out_size=2,
        in_offset=0,
        in_size=2,
        groups=1,
        width=1,
        kind=int(EdgeKind.LINEAR),
    ).items():
        table[0, COL[col]] = v
    layout = BlockLayout.from_table(table, 4)
    src, dst = [0, 1, 0, 1], [2, 2, 3, 3]  # out-major: (o0,i0) (o0,i1) (o1,i0) (o1,i1)
    hidden = 4
    dense, ref = _layers(hidden)
    h = torch.randn(4, hidden, dtype=torch.float64)
    e = torch.randn(4, hidden, dtype=torch.float64)
    h_d, e_d = dense(h, e, layout)
    h_r, e_r = ref(h, torch.tensor([src, dst]), e)

    hn = torch.nn.functional.layer_norm(h, (hidden,))
    x, z, a, b = (
        torch.nn.functional.silu(lin(hn))
        for lin in (dense.lin1, dense.lin2, dense.lin3, dense.lin4)
    )
    s = sign_vector(hidden).double()
    edges = e

    def aggregate(node: int, pairs: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
        if not pairs:
            return torch.zeros(4 * hidden, dtype=torch.float64)
        m = torch.stack([z[node] * x[j] * f for _, j, f in pairs])
        std = (m.square().mean(0) - m.mean(0).square()).clamp(min=STD_EPS).sqrt()
        std = torch.where(std <= STD_EPS**0.5, 0.0, std)
        return torch.cat([m.mean(0), std, m.amax(0), m.amin(0)])

    expected_h = h.clone()
    for node in range(4):
        fwd = [(k, src[k], edges[k]) for k in range(4) if dst[k] == node]
        rev = [(k, dst[k], s * edges[k]) for k in range(4) if src[k] == node]
        expected_h[node] += dense.lin_out(aggregate(node, fwd)) + dense.lin_out(
            aggregate(node, rev)
        )
    expected_e = torch.stack(
        [
            edges[k] + a[src[k]] * b[dst[k]] * edges[k] + s * (a[dst[k]] * b[src[k]] * s * edges[k])
            for k in range(4)
        ]
    )
    # nodes 0 and 1 receive nothing forward: their forward update is lin_out's bias alone
    assert layout.counts.view(2, 4).tolist() == [[0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 0.0, 0.0]]
    assert layout.table.tolist() == [[0, 2, 2, 0, 2, 1]]
    for got in (h_d, h_r):
        torch.testing.assert_close(got, expected_h, rtol=0, atol=1e-12)
    for got in (e_d, e_r):
        torch.testing.assert_close(got, expected_e, rtol=0, atol=1e-12)


def test_reference_is_invariant_to_edge_order() -> None:
    graph = _graph("tiny_conv_projection")
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    _, ref = _layers()
    h = torch.randn(graph.num_nodes, HIDDEN, dtype=torch.float64)
    e = _edge_states(layout, HIDDEN)
    perm = torch.randperm(e.size(0), generator=torch.Generator().manual_seed(3))
    h1, e1 = ref(h, graph.edge_index, e)
    h2, e2 = ref(h, graph.edge_index[:, perm], e[perm])
    assert not torch.equal(perm, torch.arange(e.size(0)))
    torch.testing.assert_close(h2, h1, rtol=0, atol=1e-12)
    torch.testing.assert_close(e2, e1[perm], rtol=0, atol=1e-12)


def test_dense_layer_gradcheck_float64() -> None:
    graph = _graph("grouped_depthwise")  # grouped, depthwise and multiplier blocks
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    dense, _ = _layers(hidden=2)
    h = torch.randn(graph.num_nodes, 2, dtype=torch.float64, requires_grad=True)
    e = _edge_states(layout, 2).requires_grad_()

    def fn(h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return dense(h, e, layout)

    assert torch.autograd.gradcheck(fn, (h, e), atol=1e-8, fast_mode=True)


def test_layout_table_counts_and_split() -> None:
    graph = _graph("cifar_resnet20_w025")
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    assert layout is BlockLayout.from_table(graph.layer_table.clone(), graph.num_nodes)  # cached
    assert layout.num_edges == graph.num_edges == graph.edge_index.size(1)
    table = graph.layer_table
    identity = table[:, COL["kind"]] == EdgeKind.IDENTITY
    assert layout.table.shape == (table.size(0), 6) and layout.table.dtype == torch.int64
    edge, out, out_size, inp, in_size, groups = layout.table.unbind(1)
    assert torch.equal(out, table[:, COL["out_offset"]]) and torch.equal(
        inp, table[:, COL["in_offset"]]
    )
    # identity diagonals are blocks of n groups of one edge
    assert identity.any() and torch.equal(groups[identity], out_size[identity])
    assert torch.equal(in_size[identity], out_size[identity])
    assert torch.equal(groups[~identity], table[~identity, COL["groups"]])
    sizes = out_size * (in_size // groups)
    assert list(layout.edge_counts) == sizes.tolist()
    assert torch.equal(edge, torch.cumsum(sizes, 0) - sizes)
    # edge states split into per-block views, edge_index order: block k's first edge starts
    # at out_offset / in_offset
    e = _edge_states(layout, 3)
    parts = layout.split(e)
    assert [p.size(0) for p in parts] == list(layout.edge_counts)
    assert all(p.data_ptr() == e[o].data_ptr() for p, o in zip(parts, edge.tolist()))
    assert graph.edge_index[:, edge].tolist() == [inp.tolist(), out.tolist()]
    # counts: fan-in of every node, i.e. the in-degree in edge_index, and the out-degree
    indegree = torch.bincount(graph.edge_index[1], minlength=graph.num_nodes).double()
    outdegree = torch.bincount(graph.edge_index[0], minlength=graph.num_nodes).double()
    assert torch.equal(layout.counts[0].view(-1), indegree)
    assert torch.equal(layout.counts[1].view(-1), outdegree)


def test_sign_vector_and_errors() -> None:
    assert sign_vector(5).tolist() == [1.0, 1.0, -1.0, -1.0, -1.0]
    graph = _graph("tiny_mlp")
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    dense, _ = _layers()
    h = torch.zeros(graph.num_nodes, HIDDEN, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"0 edges; the layout has {graph.num_nodes} nodes"):
        dense(h, torch.zeros(0, HIDDEN, dtype=torch.float64), layout)
    with pytest.raises(ValueError, match=f"expected edge states for {graph.num_edges} edges"):
        layout.split(torch.zeros(1, HIDDEN))

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


def _edge_states(layout: BlockLayout, hidden: int, seed: int = 1) -> list[torch.Tensor]:
    """Random per-block edge states (table order): (out, in/groups, h) or (n, h)."""
    g = torch.Generator().manual_seed(seed)
    states = []
    for b in layout.blocks:
        shape = (b.out_size, hidden) if b.identity else (b.out_size, b.in_size // b.groups, hidden)
        states.append(torch.randn(shape, generator=g, dtype=torch.float64))
    return states


def _run_dense(layer: MetaLayer, h: torch.Tensor, blocks: list[torch.Tensor], layout: BlockLayout):
    h_new, stacked = layer(h, layout.stack(blocks), layout)
    return h_new, torch.cat([e.reshape(-1, h.size(1)) for e in layout.unstack(stacked)])


def _run_reference(
    layer: ReferenceMetaLayer, h: torch.Tensor, blocks: list[torch.Tensor], edge_index: torch.Tensor
):
    return layer(h, edge_index, torch.cat([e.reshape(-1, h.size(1)) for e in blocks]))


@pytest.mark.parametrize("name", list(GRAPHS))
def test_dense_layer_equals_pyg_reference(name: str) -> None:
    graph = _graph(name)
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    dense, ref = _layers()
    h = torch.randn(graph.num_nodes, HIDDEN, dtype=torch.float64)
    blocks = _edge_states(layout, HIDDEN)
    h_d, e_d = _run_dense(dense, h, blocks, layout)
    h_r, e_r = _run_reference(ref, h, blocks, graph.edge_index)
    assert e_d.shape == (graph.num_edges, HIDDEN)
    assert not torch.allclose(h_d, h) and not torch.allclose(
        e_d, torch.cat([b.reshape(-1, HIDDEN) for b in blocks])
    )
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
        (dense, lambda hh, bb: _run_dense(dense, hh, bb, layout)),
        (ref, lambda hh, bb: _run_reference(ref, hh, bb, graph.edge_index)),
    ):
        hh = h.clone().requires_grad_()
        bb = [b.requires_grad_() for b in _edge_states(layout, HIDDEN)]
        h_new, e_new = run(hh, bb)
        (h_new.sin().sum() + e_new.cos().sum()).backward()
        grads.append([hh.grad, *(b.grad for b in bb), *(p.grad for p in layer.parameters())])
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
    e = torch.randn(2, 2, hidden, dtype=torch.float64)
    h_d, e_d = _run_dense(dense, h, [e], layout)
    h_r, e_r = _run_reference(ref, h, [e], torch.tensor([src, dst]))

    hn = torch.nn.functional.layer_norm(h, (hidden,))
    x, z, a, b = (
        torch.nn.functional.silu(lin(hn))
        for lin in (dense.lin1, dense.lin2, dense.lin3, dense.lin4)
    )
    s = sign_vector(hidden).double()
    edges = e.reshape(4, hidden)

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
    assert torch.equal(
        layout.forward_counts.view(-1), torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    )
    assert torch.equal(
        layout.reverse_counts.view(-1), torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    )
    for got in (h_d, h_r):
        torch.testing.assert_close(got, expected_h, rtol=0, atol=1e-12)
    for got in (e_d, e_r):
        torch.testing.assert_close(got, expected_e, rtol=0, atol=1e-12)


def test_reference_is_invariant_to_edge_order() -> None:
    graph = _graph("tiny_conv_projection")
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    _, ref = _layers()
    h = torch.randn(graph.num_nodes, HIDDEN, dtype=torch.float64)
    e = torch.cat([b.reshape(-1, HIDDEN) for b in _edge_states(layout, HIDDEN)])
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
    blocks = [b.requires_grad_() for b in _edge_states(layout, 2)]

    def fn(h: torch.Tensor, *blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _run_dense(dense, h, list(blocks), layout)

    assert torch.autograd.gradcheck(fn, (h, *blocks), atol=1e-8, fast_mode=True)


def test_layout_classes_stack_and_unstack() -> None:
    graph = _graph("cifar_resnet20_w025")
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    assert layout is BlockLayout.from_table(graph.layer_table.clone(), graph.num_nodes)  # cached
    assert sorted(i for c in layout.classes for i in c.members) == list(range(len(layout.blocks)))
    assert sum(layout.chunk_sizes) == graph.num_nodes
    blocks = _edge_states(layout, 3)
    stacked = layout.stack(blocks)
    for cls, t in zip(layout.classes, stacked):
        assert t.shape == cls.edge_shape(3)
    assert all(torch.equal(a, b) for a, b in zip(layout.unstack(stacked), blocks))
    assert len(layout.classes) < len(layout.blocks)  # same-shape blocks are stacked
    # forward counts: fan-in of every node, i.e. the in-degree in edge_index
    indegree = torch.bincount(graph.edge_index[1], minlength=graph.num_nodes).double()
    outdegree = torch.bincount(graph.edge_index[0], minlength=graph.num_nodes).double()
    assert torch.equal(layout.forward_counts.view(-1), indegree)
    assert torch.equal(layout.reverse_counts.view(-1), outdegree)


def test_sign_vector_and_errors() -> None:
    assert sign_vector(5).tolist() == [1.0, 1.0, -1.0, -1.0, -1.0]
    graph = _graph("tiny_mlp")
    layout = BlockLayout.from_table(graph.layer_table, graph.num_nodes)
    dense, _ = _layers()
    with pytest.raises(ValueError, match="layout.stack"):
        dense(torch.zeros(graph.num_nodes, HIDDEN, dtype=torch.float64), [], layout)
    with pytest.raises(ValueError, match="one per layer_table row"):
        layout.stack([])

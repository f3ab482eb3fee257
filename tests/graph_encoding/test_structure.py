"""Structural invariants: literal graphs, edge counts, block views, batching."""

import torch
import torchvision
from torch_geometric.data import Batch

from graph_encoding import COL, EdgeKind, NodeKind, encode
from graph_encoding.schema import NODE_FEATURES, VALUE_SLOTS
from metaprune.testing import TinyConvNet, TinyMLP, TinyResidual


def test_tiny_mlp_has_the_literal_edge_index() -> None:
    torch.manual_seed(0)
    model = TinyMLP()
    graph = encode(model, torch.randn(1, 2))
    assert graph.num_nodes == 7
    expected = torch.tensor(
        [[0, 1, 0, 1, 0, 1, 2, 3, 4, 2, 3, 4], [2, 2, 3, 3, 4, 4, 5, 5, 5, 6, 6, 6]]
    )
    assert torch.equal(graph.edge_index, expected)
    assert torch.equal(graph.edge_type, torch.full((12,), int(EdgeKind.LINEAR)))
    assert torch.equal(graph.edge_attr[:6, 0], model.fc1.weight.reshape(-1))
    assert torch.equal(graph.edge_attr[6:, 0], model.fc2.weight.reshape(-1))
    assert torch.equal(graph.x[2:5, 0], model.fc1.bias.detach())
    assert torch.equal(graph.x[5:7, 0], model.fc2.bias.detach())
    assert torch.equal(graph.x[:2, 0], torch.zeros(2))  # inputs: default bias
    kinds = graph.x[:, VALUE_SLOTS : VALUE_SLOTS + len(NodeKind)].argmax(1)
    assert kinds.tolist() == [NodeKind.INPUT] * 2 + [NodeKind.HIDDEN] * 3 + [NodeKind.OUTPUT] * 2
    assert graph.x.shape == (7, NODE_FEATURES)
    graph.validate()


def test_identity_residual_is_a_sparse_diagonal() -> None:
    graph = encode(TinyResidual(), torch.randn(1, 2))
    # input 0-1, fc1 2-3, fc2 (= the sum) 4-5
    expected = torch.tensor([[0, 1, 0, 1, 2, 3, 2, 3, 2, 3], [2, 2, 3, 3, 4, 4, 5, 5, 4, 5]])
    assert torch.equal(graph.edge_index, expected)
    assert graph.edge_type[-2:].tolist() == [EdgeKind.IDENTITY] * 2
    assert torch.equal(graph.edge_attr[-2:], torch.ones(2, 1))


def test_projection_shortcut_shares_the_main_branch_nodes() -> None:
    model = TinyConvNet()
    graph = encode(model, torch.randn(1, 3, 6, 6))
    table = graph.layer_table
    kinds = table[:, COL["kind"]].tolist()
    assert kinds == [EdgeKind.CONV, EdgeKind.CONV, EdgeKind.PROJECTION, EdgeKind.LINEAR]
    conv2, proj = table[1], table[2]
    assert conv2[COL["out_offset"]] == proj[COL["out_offset"]]
    assert conv2[COL["in_offset"]] == proj[COL["in_offset"]]
    assert graph.num_nodes == 3 + 4 + 5 + 3
    # role 1 holds the shortcut's BatchNorm
    rows = slice(int(conv2[COL["out_offset"]]), int(conv2[COL["out_offset"]]) + 5)
    assert torch.equal(graph.x[rows, 6], model.bnp.weight.detach())
    assert torch.equal(graph.x[rows, 1], model.bn2.weight.detach())


def test_edges_per_layer_equal_out_times_in_over_groups() -> None:
    model = torchvision.models.mobilenet_v2(num_classes=10)
    graph = encode(model, torch.randn(1, 3, 32, 32))
    by_name = {b.name: b for b in graph.plan.blocks}
    seen_depthwise = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            b = by_name[name]
            assert b.num_edges == m.out_channels * m.in_channels // m.groups
            assert b.width == m.kernel_size[0] * m.kernel_size[1]
            assert b.stride == m.stride[0] and b.groups == m.groups
            seen_depthwise += b.kind == EdgeKind.DEPTHWISE_CONV
            view = graph.block(graph.plan.blocks.index(b))
            assert view.shape == (m.out_channels, m.in_channels // m.groups, b.width)
            assert view.data_ptr() == graph.edge_flat[b.value_offset :].data_ptr()  # no copy
            assert torch.equal(view.reshape(m.weight.shape), m.weight)
    assert seen_depthwise == 17


def test_grouped_edges_stay_inside_their_group() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 1, groups=2))
    graph = encode(model, torch.randn(1, 4, 3, 3))
    src, dst = graph.edge_index
    assert graph.num_edges == 12
    assert graph.edge_type.tolist() == [EdgeKind.GROUPED_CONV] * 12
    assert torch.equal((src // 2), ((dst - 4) // 3))  # input group == output group


def test_batches_and_unbatches_unchanged() -> None:
    g1 = encode(TinyMLP(), torch.randn(1, 2))
    g2 = encode(TinyConvNet(), torch.randn(1, 3, 6, 6))
    assert Batch.from_data_list([g2, g1]).num_graphs == 2  # different carried tensors
    batch = Batch.from_data_list([g1, g2])
    assert batch.num_nodes == g1.num_nodes + g2.num_nodes
    expected = torch.cat([g1.edge_index, g2.edge_index + g1.num_nodes], dim=1)
    assert torch.equal(batch.edge_index, expected)
    assert torch.equal(batch.edge_attr[: g1.num_edges, :1], g1.edge_attr)
    for i, g in enumerate(batch.to_data_list()):
        ref = (g1, g2)[i]
        assert torch.equal(g.x, ref.x)
        assert torch.equal(g.edge_flat, ref.edge_flat)
        assert torch.equal(g.layer_table, ref.layer_table)
        assert torch.equal(g.edge_index, ref.edge_index)
        assert g.plan is ref.plan
        assert list(g.extras) == list(ref.extras)
        assert all(torch.equal(g.extras[k], ref.extras[k]) for k in ref.extras)


def test_a_pruned_resnet_gets_its_own_plan() -> None:
    from metaprune.models import create_model

    a = create_model("cifar_resnet20", width=1.0)
    b = create_model("cifar_resnet20", width=0.5)
    ga, gb = encode(a, torch.randn(1, 3, 8, 8)), encode(b, torch.randn(1, 3, 8, 8))
    assert ga.plan is not gb.plan
    assert gb.num_nodes == 3 + (8 * 7 + 16 * 6 + 32 * 6) + 10
    assert ga.plan is encode(a, torch.randn(1, 3, 8, 8)).plan  # cached

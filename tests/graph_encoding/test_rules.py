"""The tracer rules added for timm, each on a tiny hand-built module (issue 13)."""

import copy

import pytest
import torch
import torchvision

from graph_encoding import COL, EdgeKind, EncodingError, NodeKind, decode, encode
from graph_encoding.schema import NODE_KIND_COL, VALUE_SLOTS
from metaprune.testing import randomize_norms
from metaprune.testing.encoder_nets import (
    ChannelConv,
    DynamicConv,
    EinsumAttention,
    FunctionalBN,
    FusedAttention,
    GatedBranches,
    GRNMixer,
    HeadMajorAttention,
    ModuleBN,
    SelectiveBranches,
    ShapeBranch,
    Shuffle,
    SplitCat,
    StdConv,
    exact_round_trip,
)

pytestmark = pytest.mark.timeout(60)


def _kinds(graph) -> list[int]:
    return graph.layer_table[:, COL["kind"]].tolist()


def test_functional_norms_give_the_graph_of_the_module_norms() -> None:
    torch.manual_seed(0)
    module = randomize_norms(ModuleBN()).eval()
    functional = FunctionalBN().eval()
    functional.load_state_dict(module.state_dict())
    x = torch.randn(2, 3, 5, 5)
    gm, gf = encode(module, x), exact_round_trip(functional, x)
    assert torch.equal(gf.x, gm.x)
    assert torch.equal(gf.edge_flat, gm.edge_flat)
    assert torch.equal(gf.layer_table, gm.layer_table)
    # the BatchNorm's four vectors sit in role 0 of conv1's nodes (3 inputs, then conv1)
    assert torch.equal(gf.x[3:7, 1], module.bn.weight.detach())
    assert torch.equal(gf.x[3:7, 4], module.bn.running_var)
    assert torch.equal(gf.x[7:13, 2], module.gn.bias.detach())
    assert list(gf.extras) == ["bn.num_batches_tracked"]


def test_a_standardised_conv_stores_its_raw_weight() -> None:
    torch.manual_seed(0)
    model = StdConv().eval()
    graph = exact_round_trip(model, torch.randn(2, 3, 6, 6))
    assert _kinds(graph) == [EdgeKind.CONV, EdgeKind.LINEAR]
    assert torch.equal(graph.block(0).reshape(5, 3, 3, 3), model.weight.detach())
    assert torch.equal(graph.x[3:8, 0], model.bias.detach())
    assert list(graph.extras) == ["gain"]  # the transform's other parameter travels beside


def test_a_conv_weight_computed_from_the_input_is_refused() -> None:
    with pytest.raises(EncodingError, match="conv2d.*depend on the input"):
        encode(DynamicConv(), torch.randn(1, 3, 4, 4))


def test_split_chunk_and_cat_read_sub_ranges_of_one_node_set() -> None:
    torch.manual_seed(0)
    model = SplitCat().eval()
    graph = exact_round_trip(model, torch.randn(2, 3, 4, 4))
    blocks = {b.name: b for b in graph.plan.blocks}
    h = blocks["conv1"].out_offset
    assert (blocks["conv_a"].in_offset, blocks["conv_a"].in_size) == (h, 2)
    assert (blocks["conv_b"].in_offset, blocks["conv_b"].in_size) == (h + 2, 4)
    # conv2 reads a concatenation: conv_a, conv_b and conv1's channels 4..5, by identity
    concat = blocks["conv2"].in_offset
    ident = [b for b in graph.plan.blocks if b.kind == EdgeKind.IDENTITY]
    assert [(b.in_offset, b.out_offset, b.out_size) for b in ident] == [
        (blocks["conv_a"].out_offset, concat, 3),
        (blocks["conv_b"].out_offset, concat + 3, 4),
        (h + 4, concat + 7, 2),
    ]
    kinds = graph.x[:, NODE_KIND_COL : NODE_KIND_COL + len(NodeKind)].argmax(1)
    assert (kinds[concat : concat + 9] == NodeKind.CONCAT).all()


def test_a_channel_shuffle_is_a_permutation_of_node_indices() -> None:
    torch.manual_seed(0)
    model = Shuffle().eval()
    graph = exact_round_trip(model, torch.randn(2, 3, 4, 4))
    src, dst = graph.edge_index
    identity = graph.edge_type == EdgeKind.IDENTITY
    h = next(b for b in graph.plan.blocks if b.name == "conv1").out_offset
    concat = next(b for b in graph.plan.blocks if b.name == "conv2").in_offset
    pairs = sorted(zip((dst[identity] - concat).tolist(), (src[identity] - h).tolist()))
    assert pairs == [(0, 0), (1, 3), (2, 1), (3, 4), (4, 2), (5, 5)]  # shuffled order
    assert identity.sum() == 6  # one identity edge per channel, nothing else added


@pytest.mark.parametrize("fused", [False, True])
def test_a_fused_qkv_is_three_attention_blocks_over_its_weight_rows(fused: bool) -> None:
    torch.manual_seed(0)
    model = FusedAttention(fused=fused).eval()
    graph = exact_round_trip(model, torch.randn(2, 3, 5))
    a = EdgeKind
    assert _kinds(graph) == [a.CONV, a.ATTN_Q, a.ATTN_K, a.ATTN_V, a.LINEAR]
    _, q, k, v, proj = graph.plan.blocks
    assert [b.out_offset for b in (q, k, v)] == [11, 19, 27]  # 3 inputs, 8 embed, then qkv
    assert [b.value_offset for b in (q, k, v)] == [24, 88, 152]  # rows of one weight, in order
    assert all(b.heads == 2 and b.in_offset == 3 and b.in_size == 8 for b in (q, k, v))
    assert (proj.in_offset, proj.in_size) == (27, 8)  # proj reads the values
    for i in range(3):
        view = graph.block(i + 1).reshape(8, 8)
        assert torch.equal(view, model.qkv.weight.detach()[8 * i : 8 * i + 8])
    assert [w for w, _ in graph.plan.weights] == ["embed.weight", "qkv.weight", "proj.weight"]
    kinds = graph.x[:, NODE_KIND_COL : NODE_KIND_COL + len(NodeKind)].argmax(1)
    assert (kinds[11:35] == NodeKind.ATTENTION).all()
    assert torch.equal(graph.x[11:35, 0], model.qkv.bias.detach())


def test_a_head_major_qkv_alternates_roles_per_head() -> None:
    torch.manual_seed(0)
    graph = exact_round_trip(HeadMajorAttention().eval(), torch.randn(2, 3, 5))
    q, k, v = EdgeKind.ATTN_Q, EdgeKind.ATTN_K, EdgeKind.ATTN_V
    assert _kinds(graph)[1:7] == [q, k, v, q, k, v]
    assert _kinds(graph)[-1] == EdgeKind.LINEAR
    assert graph.layer_table[1:7, COL["out_size"]].tolist() == [4] * 6
    assert graph.layer_table[1:7, COL["value_offset"]].tolist() == [24, 56, 88, 120, 152, 184]
    # proj reads the value rows of both heads: a concatenation of two runs
    assert graph.layer_table[-1, COL["in_size"]] == 8
    assert _kinds(graph).count(EdgeKind.IDENTITY) == 2


def test_attention_written_with_einsum_is_attention() -> None:
    torch.manual_seed(0)
    model = EinsumAttention().eval()
    graph = exact_round_trip(model, torch.randn(2, 3, 5))
    a = EdgeKind
    assert _kinds(graph) == [a.CONV, a.ATTN_Q, a.ATTN_K, a.ATTN_V, a.LINEAR]
    assert graph.layer_table[-1, COL["in_offset"]] == 27


def test_selective_kernel_branches_are_gated_and_summed() -> None:
    torch.manual_seed(0)
    model = SelectiveBranches().eval()
    graph = exact_round_trip(model, torch.randn(2, 3, 4, 4))
    blocks = {b.name: b for b in graph.plan.blocks}
    # the stacked branches get one node set (identity from a and b), gated by `select`
    assert blocks["select"].kind == EdgeKind.GATE
    gated = blocks["select"].out_offset
    ident = [b for b in graph.plan.blocks if b.kind == EdgeKind.IDENTITY]
    into_gated = [(b.in_offset, b.out_offset) for b in ident if gated <= b.out_offset < gated + 8]
    assert into_gated == [(blocks["a"].out_offset, gated), (blocks["b"].out_offset, gated + 4)]
    # the sum over the branches: a node set of 4 fed by both halves of the gated set
    head_in = blocks["head"].in_offset
    into_head = sorted(b.in_offset for b in ident if b.out_offset == head_in)
    assert into_head == [gated, gated + 4]


def test_control_flow_on_shapes_is_traced_for_the_example_shapes() -> None:
    torch.manual_seed(0)
    model = ShapeBranch().eval()
    small, large = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 5, 5)
    graph_small = exact_round_trip(model, small)  # takes the pooling branch
    graph_large = exact_round_trip(model, large)
    assert graph_small.plan is not graph_large.plan  # one plan per input shape
    assert _kinds(graph_small) == _kinds(graph_large) == [EdgeKind.CONV, EdgeKind.CONV]


def test_a_product_of_slices_ties_them_and_one_head_attention_reads_plain_channels() -> None:
    torch.manual_seed(0)
    model = GatedBranches().eval()
    graph = exact_round_trip(model, torch.randn(2, 3, 5))
    a = EdgeKind
    kinds = _kinds(graph)
    # fc; the product (identity from both slices of fc); q, k, v rows of one conv; out
    assert kinds == [a.CONV, a.IDENTITY, a.IDENTITY, a.ATTN_Q, a.ATTN_K, a.ATTN_V, a.CONV]
    fc, g_in, i_in, q, k, v, out = graph.plan.blocks
    assert (g_in.in_offset, i_in.in_offset) == (fc.out_offset, fc.out_offset + 4)
    assert g_in.out_offset == i_in.out_offset == q.in_offset  # one product node set
    kinds_of = graph.x[:, NODE_KIND_COL : NODE_KIND_COL + len(NodeKind)].argmax(1)
    assert (kinds_of[g_in.out_offset : g_in.out_offset + 4] == NodeKind.SUM).all()
    assert out.in_offset == v.out_offset and out.in_size == 4


def test_channel_mixing_across_the_channel_axis_is_refused_by_name() -> None:
    with pytest.raises(EncodingError, match=r"^conv: a convolution across the channel axis"):
        encode(ChannelConv(), torch.randn(1, 3, 4, 4))


def test_token_mixing_addcmul_and_grn_keep_the_channels() -> None:
    torch.manual_seed(0)
    model = GRNMixer().eval()
    graph = exact_round_trip(model, torch.randn(2, 3, 4))
    assert _kinds(graph) == [EdgeKind.CONV, EdgeKind.LINEAR]  # embed, fc
    assert set(graph.extras) == {"tokens.weight", "tokens.bias", "alpha", "beta", "gamma"}
    assert graph.num_nodes == 3 + 6 + 2


def test_decode_keeps_the_metadata_mnasnet_loads_with() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    state = decode(encode(model, x), model)
    assert state._metadata == model.state_dict()._metadata
    rebuilt = copy.deepcopy(model)
    rebuilt.load_state_dict(state)  # MNASNet's loader reads its version from _metadata
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_graph_values_live_in_node_features_not_only_extras() -> None:
    model = randomize_norms(FunctionalBN()).eval()
    graph = encode(model, torch.randn(1, 3, 4, 4))
    assert graph.coverage == 1.0
    assert graph.x[:, :VALUE_SLOTS].abs().sum() > 0

"""Permuting hidden channels keeps the function and only permutes the graph's nodes."""

import torch

from graph_encoding import encode
from metaprune.testing import TinyConvNet, permute_hidden_conv, randomize_norms


def _edge_table(graph, node_map: torch.Tensor | None = None) -> torch.Tensor:
    """Edges as sorted rows (src, dst, features...), nodes renamed through ``node_map``."""
    src, dst = graph.edge_index
    if node_map is not None:
        src, dst = node_map[src], node_map[dst]
    rows = torch.cat(
        [src[:, None], dst[:, None], graph.edge_type[:, None], graph.edge_attr.double()], 1
    )
    return torch.tensor(sorted(rows.tolist()), dtype=torch.double)


def test_permuting_a_hidden_conv_permutes_the_graph_nodes() -> None:
    torch.manual_seed(0)
    model = randomize_norms(TinyConvNet(width=6)).eval()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = permute_hidden_conv(model, perm).eval()
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert not torch.equal(permuted.conv1.weight, model.conv1.weight)
        assert torch.allclose(permuted(x), model(x), atol=1e-5)  # same function first

    g, gp = encode(model, x), encode(permuted, x)
    hidden = next(s for s in g.plan.node_sets if s.name == "conv1")
    # node ``offset + j`` of the permuted graph is node ``offset + perm[j]`` of the original
    new_of_old = torch.arange(g.num_nodes)
    new_of_old[hidden.offset + perm] = hidden.offset + torch.arange(6)
    old_of_new = torch.argsort(new_of_old)

    assert torch.equal(gp.x, g.x[old_of_new])
    assert not torch.equal(gp.x, g.x)
    assert torch.equal(_edge_table(gp), _edge_table(g, new_of_old))


def test_graph_is_invariant_to_renaming_nothing() -> None:
    model = TinyConvNet()
    x = torch.randn(1, 3, 6, 6)
    a, b = encode(model, x), encode(model, x)
    assert torch.equal(a.x, b.x) and torch.equal(a.edge_flat, b.edge_flat)
    assert torch.equal(a.edge_index, b.edge_index)


# ---------------------------------------------------------------- the rules added for timm
def _assert_nodes_permuted(g, gp, moves: dict[int, int]) -> None:
    """``gp`` is ``g`` with node ``old`` renamed ``moves[old]`` (others unchanged)."""
    new_of_old = torch.arange(g.num_nodes)
    for old, new in moves.items():
        new_of_old[old] = new
    assert sorted(new_of_old.tolist()) == list(range(g.num_nodes))
    old_of_new = torch.argsort(new_of_old)
    assert torch.equal(gp.x, g.x[old_of_new])
    assert not torch.equal(gp.x, g.x) or not torch.equal(gp.edge_flat, g.edge_flat)
    assert torch.equal(_edge_table(gp), _edge_table(g, new_of_old))


def _same_function(a, b, x) -> None:
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)


def _block(graph, name):
    return next(b for b in graph.plan.blocks if b.name == name)


def test_functional_norms_permute_with_their_conv() -> None:
    import copy

    from metaprune.testing.encoder_nets import FunctionalBN

    torch.manual_seed(0)
    model = randomize_norms(FunctionalBN()).eval()
    perm = torch.tensor([2, 0, 3, 1])
    p = copy.deepcopy(model)
    with torch.no_grad():
        p.conv1.weight.copy_(model.conv1.weight[perm])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(p.bn, name).copy_(getattr(model.bn, name)[perm])
        p.conv2.weight.copy_(model.conv2.weight[:, perm])
    x = torch.randn(2, 3, 5, 5)
    _same_function(model, p, x)
    g, gp = encode(model, x), encode(p, x)
    h = _block(g, "conv1").out_offset
    _assert_nodes_permuted(g, gp, {h + int(perm[j]): h + j for j in range(4)})


def test_split_pieces_permute_inside_their_sub_ranges() -> None:
    import copy

    from metaprune.testing.encoder_nets import SplitCat

    torch.manual_seed(0)
    model = SplitCat().eval()
    perm = torch.tensor([0, 1, 3, 2, 5, 4])  # inside piece b = channels 2..5
    p = copy.deepcopy(model)
    with torch.no_grad():
        p.conv1.weight.copy_(model.conv1.weight[perm])
        p.conv1.bias.copy_(model.conv1.bias[perm])
        p.conv_b.weight.copy_(model.conv_b.weight[:, perm[2:] - 2])
        cols = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8, 7])  # the chunk (4, 5) read by conv2
        p.conv2.weight.copy_(model.conv2.weight[:, cols])
    x = torch.randn(2, 3, 4, 4)
    _same_function(model, p, x)
    g, gp = encode(model, x), encode(p, x)
    h, c = _block(g, "conv1").out_offset, _block(g, "conv2").in_offset
    moves = {h + int(perm[j]): h + j for j in range(6)}
    moves.update({c + 7: c + 8, c + 8: c + 7})
    _assert_nodes_permuted(g, gp, moves)


def test_shuffled_channels_permute_through_the_shuffle() -> None:
    import copy

    from metaprune.testing.encoder_nets import Shuffle

    torch.manual_seed(0)
    model = Shuffle().eval()
    perm = torch.tensor([1, 2, 0, 5, 3, 4])
    shuffle = torch.tensor([0, 3, 1, 4, 2, 5])  # position j of the shuffle holds channel s[j]
    p = copy.deepcopy(model)
    with torch.no_grad():
        p.conv1.weight.copy_(model.conv1.weight[perm])
        p.conv1.bias.copy_(model.conv1.bias[perm])
        # position j now holds old channel perm[s[j]], which sat at position s^-1[perm[s[j]]]
        inv = torch.argsort(shuffle)
        cols = inv[perm[shuffle]]
        p.conv2.weight.copy_(model.conv2.weight[:, cols])
    x = torch.randn(2, 3, 4, 4)
    _same_function(model, p, x)
    g, gp = encode(model, x), encode(p, x)
    h, c = _block(g, "conv1").out_offset, _block(g, "conv2").in_offset
    moves = {h + int(perm[j]): h + j for j in range(6)}
    moves.update({c + int(cols[j]): c + j for j in range(6)})
    _assert_nodes_permuted(g, gp, moves)


def test_fused_qkv_permutes_inside_a_head() -> None:
    import copy

    from metaprune.testing.encoder_nets import FusedAttention

    torch.manual_seed(0)
    model = FusedAttention().eval()
    within = torch.tensor([2, 0, 3, 1])  # head 1 (dims 4..7) of q and k jointly, and of v
    rows = torch.arange(24)
    for part in range(3):
        rows[part * 8 + 4 : part * 8 + 8] = part * 8 + 4 + within
    p = copy.deepcopy(model)
    with torch.no_grad():
        p.qkv.weight.copy_(model.qkv.weight[rows])
        p.qkv.bias.copy_(model.qkv.bias[rows])
        p.proj.weight.copy_(model.proj.weight[:, rows[16:] - 16])
    x = torch.randn(2, 3, 5)
    _same_function(model, p, x)
    g, gp = encode(model, x), encode(p, x)
    q = _block(g, "qkv").out_offset
    _assert_nodes_permuted(g, gp, {q + int(rows[j]): q + j for j in range(24)})

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

"""The metanetwork consumes the graphs of the new rules unchanged (issue 13)."""

import pytest
import torch

from graph_encoding import encode
from metanet.apply import apply_metanetwork
from metanet.network import MetaNetwork, edge_types_of
from metaprune.testing.encoder_nets import FusedAttention, SelectiveBranches, Shuffle, SplitCat

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "make, shape",
    [
        (FusedAttention, (2, 3, 5)),
        (SelectiveBranches, (2, 3, 4, 4)),
        (Shuffle, (2, 3, 4, 4)),
        (SplitCat, (2, 3, 4, 4)),
    ],
)
def test_a_metanetwork_runs_on_the_new_graphs(make, shape) -> None:
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(*shape)
    graph = encode(model, x)
    metanet = MetaNetwork(num_layers=2, hidden=8, edge_types=edge_types_of([graph]))
    nodes, values = metanet(graph)
    assert nodes.shape == graph.x.shape and values.shape == graph.edge_flat.shape
    assert torch.isfinite(nodes).all() and torch.isfinite(values).all()
    out = apply_metanetwork(metanet, model, x)
    with torch.no_grad():
        assert out(x).shape == model(x).shape
    changed = [k for k, v in model.state_dict().items() if not torch.equal(out.state_dict()[k], v)]
    assert changed  # the metanetwork rewrote weights through the new blocks

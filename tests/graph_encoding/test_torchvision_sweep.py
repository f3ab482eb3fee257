"""A new user's check: torchvision classifiers encode exactly or fail with a clear error."""

import pytest
import torch
import torchvision

from graph_encoding import decode, encode
from metaprune.testing.torchvision_sweep import input_side

# small members of every torchvision family (all 80 classifiers: metaprune.testing.torchvision_sweep)
SUPPORTED = [
    "alexnet",
    "convnext_tiny",
    "googlenet",
    "inception_v3",
    "mnasnet0_5",
    "mobilenet_v3_small",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "resnext50_32x4d",
    "squeezenet1_1",
    "vit_b_32",
    "shufflenet_v2_x0_5",  # channel shuffle: a permutation of node indices
    "swin_t",  # shifted_window_attention / _patch_merging_pad, hidden from fx
    "swin_v2_t",
    "maxvit_t",  # attention written with einsum
]


@pytest.mark.slow
@pytest.mark.parametrize("name", SUPPORTED)
def test_torchvision_classifier_round_trips(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    size = input_side(name)
    graph = encode(model, torch.randn(1, 3, size, size))
    state = decode(graph, model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert state._metadata == model.state_dict()._metadata
    assert graph.edge_flat.numel() == sum(
        p.numel()
        for k, p in model.state_dict().items()
        if k.endswith("weight") and p.dim() > 1 and k not in graph.extras
    )
    # googlenet / inception carry their auxiliary heads (unused in eval) beside the graph
    assert graph.coverage >= (0.5 if name in {"googlenet", "inception_v3"} else 0.99)

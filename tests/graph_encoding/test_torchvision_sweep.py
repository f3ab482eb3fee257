"""A new user's check: torchvision classifiers encode exactly or fail with a clear error."""

import pytest
import torch
import torchvision

from graph_encoding import EncodingError, decode, encode

# small members of every torchvision family the encoder supports
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
]
# channel shuffles and windowed attention are outside the schema; they must say so
UNSUPPORTED = {
    "shufflenet_v2_x0_5": r"stage2\.0: .*cannot follow the channel axis",
    "swin_t": r"features\.1\.0\.attn: .*shifted_window_attention",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SUPPORTED)
def test_torchvision_classifier_round_trips(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    size = 299 if name == "inception_v3" else 224 if name.startswith("vit") else 64
    graph = encode(model, torch.randn(1, 3, size, size))
    state = decode(graph, model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert graph.edge_flat.numel() == sum(
        p.numel()
        for k, p in model.state_dict().items()
        if k.endswith("weight") and p.dim() > 1 and k not in graph.extras
    )
    # googlenet / inception carry their auxiliary heads (unused in eval) beside the graph
    assert graph.coverage >= (0.5 if name in {"googlenet", "inception_v3"} else 0.99)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_classifier_names_module_and_op(name: str) -> None:
    model = torchvision.models.get_model(name, num_classes=10).eval()
    with pytest.raises(EncodingError, match=UNSUPPORTED[name]):
        encode(model, torch.randn(1, 3, 64, 64))

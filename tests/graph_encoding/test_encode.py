"""Bit-exact round trips over every parameter and buffer, on real architectures."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from graph_encoding import decode, encode
from metaprune.models import create_model
from metaprune.testing import randomize_norms


def _small_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=48,
        num_classes=10,
    )


CASES = {
    "cifar_resnet20": lambda: create_model("cifar_resnet20"),
    "cifar_resnet56": lambda: create_model("cifar_resnet56"),
    "cifar_vgg11_bn": lambda: create_model("cifar_vgg11_bn"),
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "resnet50": lambda: torchvision.models.resnet50(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "vgg11_bn": lambda: torchvision.models.vgg11_bn(num_classes=10),
    "densenet121": lambda: torchvision.models.densenet121(num_classes=10),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
    "vit_small": _small_vit,
}
TORCHVISION = {"resnet18", "resnet50", "mobilenet_v2", "vgg11_bn", "densenet121", "efficientnet_b0"}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_bit_exact(name: str) -> None:
    torch.manual_seed(0)
    model = randomize_norms(CASES[name]()).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = encode(model, x)
    state = decode(graph, model)

    reference = model.state_dict()
    assert list(state) == list(reference)
    for key, value in reference.items():
        assert state[key].dtype == value.dtype, key
        assert torch.equal(state[key], value), key
        assert state[key].data_ptr() != value.data_ptr(), f"{key} aliases the model"

    rebuilt = copy.deepcopy(model)
    for p in rebuilt.parameters():
        nn.init.zeros_(p)
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))

    graph.validate()
    assert graph.num_edges == graph.edge_index.size(1) == graph.edge_type.numel()
    assert graph.edge_flat.numel() == sum(reference[k].numel() for k, _ in graph.plan.weights)
    if name in TORCHVISION:
        assert graph.coverage >= 0.99
    if name == "vit_small":
        assert set(graph.extras) >= {"class_token", "encoder.pos_embedding"}
        assert 0.9 < graph.coverage < 1.0


def test_encode_copies_values_and_restores_training_mode() -> None:
    model = CASES["cifar_resnet20"]().train()
    graph = encode(model, torch.randn(1, 3, 8, 8))
    assert model.training
    graph.edge_flat.add_(1.0)
    assert not torch.equal(decode(graph, model)["conv1.weight"], model.conv1.weight)


def test_resnet56_graph_size_matches_the_published_count() -> None:
    # 3 input + 16 stem + 27 blocks x 2 convs + 10 classes = 2,045 nodes (METHOD.md section 2)
    graph = encode(create_model("cifar_resnet56"), torch.randn(1, 3, 32, 32))
    assert graph.num_nodes == 2045


def test_resnet50_graph_size_matches_the_published_count() -> None:
    graph = encode(torchvision.models.resnet50(), torch.randn(1, 3, 64, 64))
    assert graph.num_nodes == 23_723
    assert graph.num_edges == 15_445_184

"""The differentiable decoder and the encoder's errors."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from graph_encoding import DecodeError, EncodingError, decode, decode_tensors, encode
from metaprune.testing import TinyConvNet, TinyMLP


def test_gradients_flow_from_the_loss_to_node_and_edge_features() -> None:
    torch.manual_seed(0)
    model = TinyConvNet().eval()
    x = torch.randn(2, 3, 6, 6)
    graph = encode(model, x)
    nodes = graph.x.clone().requires_grad_()
    edges = graph.edge_flat.clone().requires_grad_()
    tensors = decode_tensors(graph.plan, nodes, edges, graph.extras, stats_from=graph.x)
    out = functional_call(model, tensors, (x,))
    with torch.no_grad():
        assert torch.allclose(out, model(x))
    out.square().sum().backward()
    assert edges.grad is not None and edges.grad.abs().sum() > 0
    assert nodes.grad[:, 1].abs().sum() > 0  # norm weights
    assert nodes.grad[:, 3:5].abs().sum() == 0  # running stats come from stats_from


def test_decoding_into_another_architecture_is_a_clear_error() -> None:
    graph = encode(TinyMLP(), torch.randn(1, 2))
    with pytest.raises(DecodeError, match="different architecture"):
        decode(graph, TinyConvNet())


def test_an_unsupported_module_names_its_path() -> None:
    class WithLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)[0]

    with pytest.raises(EncodingError, match=r"body\.1: module LSTM is not supported"):
        encode(WithLSTM(), torch.randn(1, 4))


def test_an_unsupported_op_names_the_op() -> None:
    class Cumsum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(self.fc(x), dim=1)

    with pytest.raises(EncodingError, match="op 'cumsum'"):
        encode(Cumsum(), torch.randn(1, 4))


def test_an_untraceable_model_is_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(EncodingError, match="Branchy: torch.fx cannot trace"):
        encode(Branchy(), torch.randn(1, 4))


def test_a_layer_applied_twice_is_refused_at_encode() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 3, 1)
            self.d = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.d(torch.relu(self.c(torch.relu(self.c(x)))))

    with pytest.raises(EncodingError, match=r"'c\.weight': .*applied more than once"):
        encode(Twice(), torch.randn(1, 3, 4, 4))

"""MetaNetwork, apply_metanetwork and transformed_tensors: residual outputs, symmetry,
gradients, batching, export config."""

from __future__ import annotations

import json

import pytest
import torch
from torch_geometric.data import Batch

from graph_encoding import VALUE_SLOTS, ModelGraph, encode
from metanet import (
    MetaNetwork,
    ReferenceMetaNetwork,
    apply_metanetwork,
    edge_types_of,
    transformed_tensors,
)
from metaprune.models import create_model
from metaprune.testing import (
    TinyConvNet,
    TinyMLP,
    TinyResidual,
    permute_hidden_conv,
    randomize_norms,
)

CONV_INPUT = (1, 3, 6, 6)


def _conv(seed: int = 0, width: int = 4) -> TinyConvNet:
    torch.manual_seed(seed)
    return randomize_norms(TinyConvNet(width=width), seed=seed).double().eval()


def _metanet(graphs: list[ModelGraph], ratio: float = 0.5, seed: int = 0, **kwargs) -> MetaNetwork:
    torch.manual_seed(seed)
    kwargs = {"num_layers": 2, "hidden": 8, **kwargs}
    return MetaNetwork(
        edge_types=edge_types_of(graphs), node_ratio=ratio, edge_ratio=ratio, **kwargs
    ).double()


def test_forward_shapes_flags_and_residual() -> None:
    graph = encode(_conv(), torch.randn(CONV_INPUT, dtype=torch.float64))
    net = _metanet([graph])
    x, flat = net(graph)
    assert x.shape == graph.x.shape and flat.shape == graph.edge_flat.shape
    assert torch.equal(x[:, VALUE_SLOTS:], graph.x[:, VALUE_SLOTS:])  # flags and depth copied
    assert not torch.allclose(x[:, :VALUE_SLOTS], graph.x[:, :VALUE_SLOTS])
    assert not torch.allclose(flat, graph.edge_flat)
    # residual: halving the ratio halves the change
    half = _metanet([graph], ratio=0.25)
    x_half, flat_half = half(graph)
    torch.testing.assert_close(
        flat_half - graph.edge_flat, (flat - graph.edge_flat) / 2, rtol=1e-10, atol=1e-14
    )
    torch.testing.assert_close(x_half - graph.x, (x - graph.x) / 2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (_conv(), torch.randn(CONV_INPUT, dtype=torch.float64)),
        lambda: (create_model("cifar_resnet20", width=0.25).eval(), torch.randn(1, 3, 32, 32)),
    ],
)
def test_ratios_zero_give_the_input_network_exactly(make) -> None:
    model, inputs = make()
    graph = encode(model, inputs)
    net = _metanet([graph], ratio=0.0).to(graph.x.dtype)
    out = apply_metanetwork(net, model, inputs)
    assert out is not model
    state, ref = out.state_dict(), model.state_dict()
    assert list(state) == list(ref)
    for key, value in ref.items():
        assert torch.equal(state[key], value), key


def test_a_given_graph_is_used_instead_of_encoding_again() -> None:
    model, inputs = _conv(), torch.randn(CONV_INPUT, dtype=torch.float64)
    graph = encode(model, inputs)
    net = _metanet([graph], ratio=0.5)
    fresh = apply_metanetwork(net, model, inputs).state_dict()
    given = apply_metanetwork(net, model, inputs, graph).state_dict()
    assert list(fresh) == list(given)
    for key, value in fresh.items():
        assert torch.equal(given[key], value), key
    assert not all(torch.equal(fresh[k], v) for k, v in model.state_dict().items())


def test_running_stats_come_from_the_input() -> None:
    model = _conv()
    inputs = torch.randn(CONV_INPUT, dtype=torch.float64)
    out = apply_metanetwork(_metanet([encode(model, inputs)], ratio=1.0), model, inputs)
    before, after = model.state_dict(), out.state_dict()
    for key in before:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(after[key], before[key]), key
        else:
            assert not torch.equal(after[key], before[key]), key
    assert not torch.equal(model.conv1.weight, out.conv1.weight)  # the input model is untouched
    with torch.no_grad():
        assert torch.isfinite(out(inputs)).all()


def test_permuting_hidden_channels_permutes_the_output_network() -> None:
    model = _conv(width=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = permute_hidden_conv(model, perm).eval()
    inputs = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(permuted(inputs), model(inputs))  # same function first
    net = _metanet([encode(model, inputs)], ratio=1.0)
    out = apply_metanetwork(net, model, inputs)
    out_of_permuted = apply_metanetwork(net, permuted, inputs)
    expected = permute_hidden_conv(out, perm).state_dict()
    got = out_of_permuted.state_dict()
    assert not torch.allclose(got["conv1.weight"], out.state_dict()["conv1.weight"])
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-12, msg=key)


def test_gradients_reach_every_parameter_through_the_transformed_network() -> None:
    model = _conv()
    inputs = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    graph = encode(model, inputs)
    net = _metanet([graph], ratio=0.1)
    tensors = transformed_tensors(net, graph)
    assert set(tensors) == set(model.state_dict())
    logits = torch.func.functional_call(model, tensors, (inputs,))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # running statistics are detached from the metanetwork
    assert not tensors["bn1.running_mean"].requires_grad and tensors["bn1.weight"].requires_grad


def test_gradcheck_float64_tiny_graph() -> None:
    graph = encode(TinyResidual().double(), torch.randn(1, 2, dtype=torch.float64))
    net = _metanet([graph], ratio=1.0, num_layers=2, hidden=3)
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in net.parameters())

    def fn(*ps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.func.functional_call(net, dict(zip(names, ps)), (graph,))

    assert torch.autograd.gradcheck(fn, params, atol=1e-8, fast_mode=True)


def test_dense_network_equals_pyg_reference_network() -> None:
    graph = encode(
        create_model("cifar_resnet20", width=0.25).double().eval(),
        torch.randn(1, 3, 32, 32, dtype=torch.float64),
    )
    net = _metanet([graph], ratio=1.0, num_layers=3)
    ref = ReferenceMetaNetwork(**net.config).double()
    ref.load_state_dict(net.state_dict())
    for a, b in zip(net(graph), ref(graph)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_batch_equals_each_graph_alone() -> None:
    inputs = torch.randn(CONV_INPUT, dtype=torch.float64)
    same_arch = [encode(_conv(seed), inputs) for seed in (0, 1)]
    mixed = [
        encode(TinyMLP().double(), torch.randn(1, 2, dtype=torch.float64)),
        encode(TinyResidual().double(), torch.randn(1, 2, dtype=torch.float64)),
    ]
    for graphs in (same_arch, mixed):
        net = _metanet(graphs)
        batch = Batch.from_data_list(graphs)
        x, flat = net(batch)
        values = [g.edge_flat.numel() for g in graphs]
        for g, xs, fs in zip(graphs, x.split([g.num_nodes for g in graphs]), flat.split(values)):
            x1, f1 = net(g)
            torch.testing.assert_close(xs, x1, rtol=0, atol=1e-12)
            torch.testing.assert_close(fs, f1, rtol=0, atol=1e-12)


def test_unknown_edge_type_names_the_type_and_the_fix() -> None:
    mlp = encode(TinyMLP(), torch.randn(1, 2))
    conv = encode(TinyConvNet(), torch.randn(CONV_INPUT))
    net = MetaNetwork(2, 8, edge_types=edge_types_of([mlp]))
    with pytest.raises(ValueError, match=r"CONV:9.*edge_types=edge_types_of\(graphs\)"):
        net(conv)
    with pytest.raises(ValueError, match="at least one edge type"):
        MetaNetwork(edge_types=[])


def test_edge_types_config_and_size() -> None:
    resnet = encode(create_model("cifar_resnet20", width=0.25), torch.randn(1, 3, 32, 32))
    types = edge_types_of([resnet, encode(TinyMLP(), torch.randn(1, 2))])
    assert types == ["CONV:9", "IDENTITY:1", "LINEAR:1", "PROJECTION:1"]
    net = MetaNetwork(edge_types=types)  # the CIFAR setting: L=8, h=64
    assert json.loads(json.dumps(net.config)) == net.config
    assert net.config == {
        "num_layers": 8,
        "hidden": 64,
        "edge_types": types,
        "node_ratio": 0.01,
        "edge_ratio": 0.01,
    }
    assert sum(p.numel() for p in net.parameters()) == 285_973  # about 0.3 M, see network.py
    clone = MetaNetwork.from_config(net.config)
    clone.load_state_dict(net.state_dict())
    with torch.no_grad():
        for a, b in zip(net(resnet), clone(resnet)):
            assert torch.equal(a, b)

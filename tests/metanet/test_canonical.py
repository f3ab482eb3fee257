"""The canonical (kernel-size-agnostic) edge encoding: equal to the padded-grid formula,
permutation equivariant, exact at ratio 0, editing every kernel size of one model, leaving
the outer ring of a kernel larger than the grid alone, exported and reloaded, and running
on a torchvision model end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from graph_encoding import encode
from graph_encoding.schema import COL, LAYER_COLUMNS, EdgeKind
from metanet import MetaNetwork, apply_metanetwork, export, load
from metanet.canonical import CanonicalEdges, placement
from metaprune.models import create_model
from metaprune.testing import MixedKernels, TinyConvNet, permute_hidden_conv, randomize_norms

K = 7


def _general(ratio: float = 0.5, seed: int = 0, **kwargs) -> MetaNetwork:
    torch.manual_seed(seed)
    kwargs = {"num_layers": 2, "hidden": 8, **kwargs}
    return MetaNetwork(
        edge_encoding="canonical", node_ratio=ratio, edge_ratio=ratio, **kwargs
    ).double()


def _mixed(seed: int = 0) -> tuple[MixedKernels, torch.Tensor]:
    torch.manual_seed(seed)
    model = randomize_norms(MixedKernels(), seed=seed).double().eval()
    return model, torch.randn(1, 3, 12, 12, dtype=torch.float64)


def _row(kind: EdgeKind, kh: int, kw: int, out: int = 5) -> list[int]:
    row = dict.fromkeys(LAYER_COLUMNS, 0)
    row.update(kind=int(kind), kernel_h=kh, kernel_w=kw, width=kh * kw, out_size=out,
               in_size=1, groups=1)  # fmt: skip
    return [row[c] for c in LAYER_COLUMNS]


def _padded(values: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """The kernel on the centred zero-padded K x K grid, written out with F.pad."""
    top, left = (K - kh) // 2, (K - kw) // 2
    grid = F.pad(values.view(-1, kh, kw), (left, K - kw - left, top, K - kh - top))
    return grid.reshape(values.size(0), K * K)


@pytest.mark.parametrize(
    ("kind", "kh", "kw"),
    [(EdgeKind.CONV, 3, 3), (EdgeKind.CONV, 1, 1), (EdgeKind.CONV, 7, 7), (EdgeKind.CONV, 2, 2),
     (EdgeKind.DEPTHWISE_CONV, 5, 5), (EdgeKind.CONV, 1, 7), (EdgeKind.CONV, 7, 1),
     (EdgeKind.LINEAR, 1, 1), (EdgeKind.CONV, 11, 11), (EdgeKind.CONV, 16, 16),
     (EdgeKind.LINEAR, 49, 1)],
)  # fmt: skip
def test_encoder_and_decoder_equal_the_padded_grid_formula(
    kind: EdgeKind, kh: int, kw: int
) -> None:
    torch.manual_seed(0)
    edges = CanonicalEdges(6, K, list(EdgeKind.__members__)).double()
    values = torch.randn(5, kh * kw, dtype=torch.float64)
    row = _row(kind, kh, kw)
    flags = F.one_hot(torch.tensor(int(kind)), len(EdgeKind)).double()
    features = torch.cat([flags, torch.tensor([kh / K, kw / K], dtype=torch.float64)])
    # kernels larger than the grid: the centre window is what the grid holds
    top, left = max(0, -((K - kh) // 2)), max(0, -((K - kw) // 2))
    window = values.view(5, kh, kw)[:, top : top + min(kh, K), left : left + min(kw, K)]
    grid = _padded(window.reshape(5, -1), min(kh, K), min(kw, K))
    expected = edges.encoder(torch.cat([grid, features.expand(5, -1)], dim=1))
    states = edges.encode(row, values)
    torch.testing.assert_close(states, expected, rtol=0, atol=1e-12)
    full = edges.decoder(states).view(5, K, K)  # the full grid, cropped back
    offset_h, offset_w = (K - kh) // 2, (K - kw) // 2
    edit = torch.zeros(5, kh, kw, dtype=torch.float64)
    for r in range(kh):
        for c in range(kw):
            if 0 <= r + offset_h < K and 0 <= c + offset_w < K:
                edit[:, r, c] = full[:, r + offset_h, c + offset_w]
    torch.testing.assert_close(edges.decode(row, states), edit.view(5, -1), rtol=0, atol=1e-12)


def test_identity_edges_are_one_at_the_centre_with_their_flag() -> None:
    torch.manual_seed(0)
    edges = CanonicalEdges(6, K, list(EdgeKind.__members__)).double()
    grid = torch.zeros(K * K, dtype=torch.float64)
    grid[K * K // 2] = 1.0
    flags = F.one_hot(torch.tensor(int(EdgeKind.IDENTITY)), len(EdgeKind)).double()
    size = torch.tensor([1 / K, 1 / K], dtype=torch.float64)
    expected = edges.encoder(torch.cat([grid, flags, size]))
    states = edges.encode(_row(EdgeKind.IDENTITY, 1, 1, out=3), None)
    assert states.shape == (3, 6)
    torch.testing.assert_close(states, expected.expand(3, 6), rtol=0, atol=1e-12)
    assert placement(1, 1, K).grid_index.tolist() == [24]
    assert placement(3, 3, K).grid_index.tolist() == [16, 17, 18, 23, 24, 25, 30, 31, 32]


def test_every_kernel_size_of_one_model_is_rewritten_and_ratio_scales_the_change() -> None:
    model, inputs = _mixed()
    out = apply_metanetwork(_general(ratio=0.5), model, inputs)
    before, after = model.state_dict(), out.state_dict()
    for name in ("stem", "conv7", "conv3", "dw", "conv1", "fc"):
        changed = (after[f"{name}.weight"] - before[f"{name}.weight"]).abs()
        assert changed.amax() > 1e-3, name
    # the 11x11 stem: the centre 7x7 window changes everywhere, the outer ring not at all
    delta = after["stem.weight"] - before["stem.weight"]
    assert (delta[:, :, 2:9, 2:9] != 0).all()
    ring = delta.clone()
    ring[:, :, 2:9, 2:9] = 0
    assert torch.equal(ring, torch.zeros_like(ring))
    # residual: halving the ratio halves every change
    half = apply_metanetwork(_general(ratio=0.25), model, inputs).state_dict()
    for key in ("stem.weight", "conv1.weight", "dw.weight"):
        torch.testing.assert_close(half[key] - before[key], (after[key] - before[key]) / 2,
                                   rtol=1e-10, atol=1e-14)  # fmt: skip
    graph = encode(model, inputs)
    kinds = {EdgeKind(k).name for k in graph.layer_table[:, COL["kind"]].tolist()}
    assert {"CONV", "DEPTHWISE_CONV", "LINEAR"} <= kinds


@pytest.mark.parametrize("make", [_mixed, lambda: (create_model("cifar_resnet20", width=0.25).eval(),
                                                   torch.randn(1, 3, 32, 32))])  # fmt: skip
def test_ratio_zero_gives_the_input_network_bit_for_bit(make) -> None:
    model, inputs = make()
    net = _general(ratio=0.0).to(inputs.dtype)
    out = apply_metanetwork(net, model, inputs)
    state, ref = out.state_dict(), model.state_dict()
    assert list(state) == list(ref)
    for key, value in ref.items():
        assert torch.equal(state[key], value), key


def test_permuting_hidden_channels_permutes_the_output_network() -> None:
    torch.manual_seed(0)
    model = randomize_norms(TinyConvNet(width=6), seed=0).double().eval()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = permute_hidden_conv(model, perm).eval()
    inputs = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(permuted(inputs), model(inputs))  # same function first
    net = _general(ratio=1.0)
    out = apply_metanetwork(net, model, inputs)
    expected = permute_hidden_conv(out, perm).state_dict()
    got = apply_metanetwork(net, permuted, inputs).state_dict()
    assert not torch.allclose(got["conv1.weight"], out.state_dict()["conv1.weight"])
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-12, msg=key)


def test_gradients_reach_the_one_encoder_and_decoder() -> None:
    model, inputs = _mixed()
    graph = encode(model, inputs)
    net = _general(ratio=0.1)
    x, flat = net(graph)
    (flat.pow(2).sum() + x.pow(2).sum()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {n.split(".")[0] for n, _ in net.named_parameters()} == {
        "node_encoder", "edges", "layers", "node_decoder"}  # fmt: skip


def test_config_export_round_trip(tmp_path) -> None:
    net = _general(ratio=0.3, max_kernel=5)
    assert net.config == {
        "num_layers": 2, "hidden": 8, "edge_encoding": "canonical", "max_kernel": 5,
        "edge_kinds": list(EdgeKind.__members__), "node_ratio": 0.3, "edge_ratio": 0.3,
    }  # fmt: skip
    assert net.edges.encoder.in_features == 25 + len(EdgeKind) + 2
    export(net.float(), tmp_path / "general")
    loaded = load(tmp_path / "general.safetensors")
    assert loaded.config == net.config and loaded.edge_encoding == "canonical"
    model, inputs = _mixed()
    graph = encode(model.float(), inputs.float())
    for a, b in zip(net(graph), loaded(graph)):
        assert torch.equal(a, b)


def test_invalid_options_name_the_fix() -> None:
    with pytest.raises(ValueError, match="edge_encoding must be one of"):
        MetaNetwork(edge_encoding="grid")
    with pytest.raises(ValueError, match="options of edge_encoding='canonical'"):
        MetaNetwork(edge_types=["CONV:9"], max_kernel=5)
    with pytest.raises(ValueError, match="edge_kinds must be distinct EdgeKind names"):
        MetaNetwork(edge_encoding="canonical", edge_kinds=["CONV", "SHUFFLE"])
    with pytest.raises(ValueError, match=r"edge types \['GATE:1'\] have no flag"):
        MetaNetwork(edge_encoding="canonical", edge_kinds=["CONV"], edge_types=["GATE:1"])
    net = MetaNetwork(1, 4, edge_encoding="canonical", edge_kinds=["CONV", "LINEAR"])
    model, inputs = _mixed()
    with pytest.raises(ValueError, match=r"DEPTHWISE_CONV:3x3.*no flag"):
        net(encode(model.float(), inputs.float()))


@pytest.mark.timeout(120)
def test_runs_end_to_end_on_a_torchvision_model() -> None:
    torch.manual_seed(0)
    model = create_model("torchvision/mobilenet_v3_small", num_classes=10).eval()
    inputs = torch.randn(1, 3, 32, 32)
    net = MetaNetwork(2, 8, edge_encoding="canonical", edge_ratio=0.1, node_ratio=0.1)
    out = apply_metanetwork(net, model, inputs)
    graph = encode(model, inputs)
    kinds = {EdgeKind(k).name for k in graph.layer_table[:, COL["kind"]].tolist()}
    assert {"CONV", "DEPTHWISE_CONV", "GATE", "LINEAR"} <= kinds
    before, after = model.state_dict(), out.state_dict()
    changed = [k for k in before if k.endswith("weight") and before[k].dim() > 1
               and not torch.equal(before[k], after[k])]  # fmt: skip
    dense = [k for k in before if k.endswith("weight") and before[k].dim() > 1]
    assert changed == dense  # every conv / linear weight, whatever its kernel, is rewritten
    with torch.no_grad():
        assert torch.isfinite(out(inputs)).all()


@pytest.mark.timeout(120)
def test_the_shipped_general_metanetwork_runs_on_a_family_it_never_saw() -> None:
    from metanet import choose_metanetwork
    from metanet.export import load

    torch.manual_seed(0)
    model = create_model("torchvision/mobilenet_v3_small", num_classes=10).eval()
    inputs = torch.randn(1, 3, 32, 32)
    graph = encode(model, inputs)
    choice = choose_metanetwork(graph)
    assert choice.name == "general-digits" and choice.chosen.general
    assert "never seen" in choice.warning  # depthwise 3x3/5x5 kernels and gates: far from its zoo
    net = load("general-digits")
    assert net.config["edge_encoding"] == "canonical"
    out = apply_metanetwork(net, model, inputs)
    before, after = model.state_dict(), out.state_dict()
    dense = [k for k in before if k.endswith("weight") and before[k].dim() > 1]
    assert all(not torch.equal(before[k], after[k]) for k in dense)
    with torch.no_grad():
        assert torch.isfinite(out(inputs)).all()


def test_batch_equals_each_graph_alone_and_the_pyg_reference_agrees() -> None:
    from torch_geometric.data import Batch

    from metanet import ReferenceMetaNetwork

    graphs = [encode(_mixed(seed)[0], _mixed(seed)[1]) for seed in (0, 1)]
    graphs.append(encode(TinyConvNet().double(), torch.randn(1, 3, 6, 6, dtype=torch.float64)))
    net = _general(ratio=1.0)
    x, flat = net(Batch.from_data_list(graphs))
    sizes = [g.edge_flat.numel() for g in graphs]
    for g, xs, fs in zip(graphs, x.split([g.num_nodes for g in graphs]), flat.split(sizes)):
        x1, f1 = net(g)
        torch.testing.assert_close(xs, x1, rtol=0, atol=1e-12)
        torch.testing.assert_close(fs, f1, rtol=0, atol=1e-12)
    reference = ReferenceMetaNetwork(**net.config).double()
    reference.load_state_dict(net.state_dict())
    for a, b in zip(net(graphs[0]), reference(graphs[0])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

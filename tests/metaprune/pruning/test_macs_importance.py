"""Tests for metaprune/pruning/macs_importance.py: scores per MAC, costs by hand."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from metaprune.pruning import make_importance, progressive_prune
from metaprune.pruning.importance import COST_AWARE
from metaprune.pruning.macs_importance import MacsAwareImportance
from metaprune.pruning.targets import measure_cost

X = torch.zeros(1, 1, 8, 8)


def _net() -> nn.Sequential:
    """conv1 1->4 at 8x8, conv2 4->6 at 4x4 (stride 2), linear 6->3 after pooling."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()  # fmt: skip


def _group(net: nn.Module, layer: int, n: int) -> tp.dependency.Group:
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=X)
    return graph.get_pruning_group(net[layer], tp.prune_conv_out_channels, idxs=list(range(n)))


def test_channel_cost_is_the_macs_a_channel_owns():
    net = _net()
    imp = MacsAwareImportance(tp.importance.GroupMagnitudeImportance(normalizer=None), net, X)
    assert imp.positions[net[0]] == 64 and imp.positions[net[3]] == 16 and imp.positions[net[8]] == 1
    # conv1 output: 1*3*3 at 64 positions; conv2 input: 6*3*3 at 16 positions
    assert imp.channel_cost(_group(net, 0, 4)) == 9 * 64 + 6 * 9 * 16
    # conv2 output: 4*3*3 at 16 positions; linear input: 3 at 1 position
    assert imp.channel_cost(_group(net, 3, 6)) == 4 * 9 * 16 + 3
    # removing one channel saves that, plus the per-position bias/BN/ReLU operations
    # measure_cost also counts (at most 4 per position; the criterion ignores them)
    before = measure_cost(net, X).macs
    _group(net, 0, 4).prune(idxs=[1])
    saved = before - measure_cost(net, X).macs
    assert 0 <= saved - (9 * 64 + 6 * 9 * 16) <= 4 * 64


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_scores_are_divided_by_the_cost(alpha):
    net = _net()
    base = tp.importance.GroupMagnitudeImportance(normalizer="sum")
    imp = MacsAwareImportance(base, net, X, alpha=alpha)
    for layer, n in ((0, 4), (3, 6)):
        group = _group(net, layer, n)
        expected = base(group) / imp.channel_cost(group) ** alpha
        assert torch.allclose(imp(group), expected)
    assert torch.equal(imp(_group(net, 0, 4)), base(_group(net, 0, 4))) == (alpha == 0.0)


def test_cost_follows_the_current_widths():
    net = _net()
    imp = MacsAwareImportance(tp.importance.GroupMagnitudeImportance(normalizer=None), net, X)
    _group(net, 3, 6).prune(idxs=[0, 1, 2])  # conv2 keeps 3 outputs: conv1's channels cost less
    assert imp.channel_cost(_group(net, 0, 4)) == 9 * 64 + 3 * 9 * 16


def test_prefers_cheap_channels_of_equal_magnitude():
    """Every channel has the same L2 norm: per MAC, the expensive first layer goes first."""
    net = _net()
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.fill_(0.1)
    imp = make_importance("group-l2-macs", normalizer="none", model=net,
                          calibration=[(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))])  # fmt: skip
    first, second = imp(_group(net, 0, 4)), imp(_group(net, 3, 6))
    assert float(first.max()) < float(second.min())
    assert COST_AWARE == ("group-l2-macs",)


def test_prunes_to_a_macs_target_removing_more_of_the_expensive_layer():
    net = _net()
    calib = [(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    imp = make_importance("group-l2-macs", normalizer="sum", model=net, calibration=calib)
    history = progressive_prune(net, X, 1.5, importance=imp, steps=10, max_layer_ratio=0.75, min_channels=1)
    assert history[-1].reached and net(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert net[0].out_channels < 4

"""Tests for metaprune/pruning/importance.py: every registered criterion, data-aware ones too."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import TensorDataset

from metaprune.pruning import ConfigError, list_importances, make_importance, progressive_prune
from metaprune.pruning.bn import calibration_subset
from metaprune.pruning.importance import DATA_AWARE


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip


def _calibration(n: int = 24):
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    return calibration_subset(data, images=16, batch_size=5, seed=0)


def _scores(net: nn.Module, name: str) -> torch.Tensor:
    """Scores of the first conv's output channels (its group: conv1, bn1, conv2 inputs)."""
    imp = make_importance(name, normalizer="none", seed=3, model=net, calibration=_calibration())
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 1, 6, 6))
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=list(range(8)))
    return imp(group)


def test_registry_lists_every_criterion():
    assert set(list_importances()) >= {"group-l2", "random", "taylor", "hessian"}
    assert set(DATA_AWARE) == {"taylor", "hessian"}
    with pytest.raises(ConfigError, match="did you mean 'taylor'"):
        make_importance("tailor")


@pytest.mark.parametrize("name", DATA_AWARE)
def test_data_aware_needs_model_and_data(name):
    with pytest.raises(ConfigError, match="needs the model and calibration images"):
        make_importance(name)
    with pytest.raises(ConfigError, match="needs the model"):
        make_importance(name, calibration=_calibration())


@pytest.mark.parametrize("name", list_importances())
def test_deterministic_for_a_seed(name):
    a, b = _scores(_net(), name), _scores(_net(), name)
    assert a.shape == (8,) and torch.isfinite(a).all()
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list_importances())
def test_prunes_to_the_target(name):
    net = _net()
    imp = make_importance(name, normalizer="mean", model=net, calibration=_calibration())
    history = progressive_prune(net, torch.zeros(1, 1, 6, 6), 1.8, importance=imp, steps=20)
    assert history[-1].reached and history[-1].macs_speedup >= 1.8
    assert net(torch.randn(2, 1, 6, 6)).shape == (2, 3)


@pytest.mark.parametrize("name", DATA_AWARE)
def test_a_zeroed_channel_ranks_lowest(name):
    net = _net()
    with torch.no_grad():
        net[0].weight[5].zero_()
        net[0].bias[5] = 0.0
        net[1].weight[5] = 0.0
    scores = _scores(net, name)
    assert int(scores.argmin()) == 5 and float(scores[5]) == 0.0
    assert bool((scores[torch.arange(8) != 5] > 0).all())


@pytest.mark.parametrize("name", DATA_AWARE)
def test_a_channel_the_loss_ignores_ranks_lowest(name):
    """Channel 2 has large weights but the next layer never reads it: no loss gradient."""
    net = _net()
    with torch.no_grad():
        net[0].weight[2].mul_(50.0)
        net[3].weight[:, 2].zero_()
    scores = _scores(net, name)
    assert int(scores.argmin()) == 2
    assert _group_l2_rank(net) != 2  # magnitude alone keeps it (it is the largest)


def _group_l2_rank(net: nn.Module) -> int:
    return int(_scores(copy.deepcopy(net), "group-l2").argmin())


def test_gradients_ride_along_through_pruning():
    """Scores are gathered once: Torch-Pruning slices each .grad with its weight."""
    net = _net()
    imp = make_importance("taylor", normalizer="mean", model=net, calibration=_calibration())
    grad = net[0].weight.grad.clone()
    progressive_prune(net, torch.zeros(1, 1, 6, 6), 1.5, importance=imp, steps=10)
    kept = net[0].weight.shape[0]
    assert kept < 8 and net[0].weight.grad.shape == net[0].weight.shape
    rows = [i for i in range(8) if any(torch.equal(net[0].weight.grad[j], grad[i]) for j in range(kept))]
    assert len(rows) == kept

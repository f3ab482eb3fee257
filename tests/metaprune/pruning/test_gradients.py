"""Tests for metaprune/pruning/gradients.py: a fixed calibration set and exact gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from metaprune.pruning import ConfigError
from metaprune.pruning.gradients import Calibration, gather_gradients


def _data(n: int = 20) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def test_calibration_is_a_fixed_bounded_seeded_subset():
    data = _data()
    cal = Calibration(data, images=7, seed=3, batch_size=3)
    idx = cal.indices()
    assert len(idx) == 7 == len(set(idx)) and idx == sorted(idx) and idx == cal.indices()
    assert idx != list(range(7))  # a random subset, not the leading images
    assert Calibration(data, images=7, seed=4).indices() != idx
    batches = list(cal.batches(torch.device("cpu")))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([x for x, _ in batches]), data.tensors[0][idx])
    assert len(Calibration(data, images=500).indices()) == 20  # never more than there is
    with pytest.raises(ConfigError, match="calibration images"):
        Calibration(data, images=0)


def test_mean_and_fisher_match_a_per_sample_loop():
    data, net = _data(), _net().eval()
    cal = Calibration(data, images=9, seed=1, batch_size=4)
    x, y = data.tensors[0][cal.indices()], data.tensors[1][cal.indices()]
    per_sample = []
    for i in range(len(y)):
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        per_sample.append({n: p.grad.clone() for n, p in net.named_parameters()})
    net.train()  # gathering runs in eval mode and restores the mode
    for p in net[0].parameters():
        p.requires_grad_(False)
    assert gather_gradients(net, cal, "mean") == 9
    assert net.training and not net[0].weight.requires_grad
    for n, p in net.named_parameters():
        expected = torch.stack([g[n] for g in per_sample]).mean(0)
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7)
    gather_gradients(net, cal, "fisher")
    for n, p in net.named_parameters():
        expected = torch.stack([g[n] ** 2 for g in per_sample]).mean(0)
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="gradient kind"):
        gather_gradients(net, cal, "second")

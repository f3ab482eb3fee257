"""Tests for metaprune/pruning/bn.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaprune.pruning import ConfigError, recalibrate_bn


def _norms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_reestimates_statistics_and_restores_modes(model, loaders):
    train, _, _ = loaders
    model.eval()
    model.layer1[0].train()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    before = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in _norms(model)]
    assert recalibrate_bn(model, train, batches=2) == 2
    assert {name: m.training for name, m in model.named_modules()} == modes
    for bn, (mean, var) in zip(_norms(model), before):
        assert not torch.equal(bn.running_mean, mean) and not torch.equal(bn.running_var, var)
        assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2


def test_is_an_exact_average_over_the_batches(loaders):
    """momentum=None: the running mean is the mean of the per-batch means."""
    train, _, _ = loaders
    bn = nn.BatchNorm2d(1)
    batches = [x for x, _ in list(train)[:3]]
    recalibrate_bn(nn.Sequential(bn), [(x, None) for x in batches], batches=3)
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected)


def test_no_gradients_and_dropout_off(loaders):
    train, _, _ = loaders
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(p=1.0))
    seen = []
    model[2].register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled()))
    )
    recalibrate_bn(model, train, batches=1)
    assert seen == [(False, False)]
    assert all(p.grad is None for p in model.parameters())


def test_zero_batches_and_models_without_bn_are_noops(model, loaders):
    train, _, _ = loaders
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_bn(model, train, batches=0) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert recalibrate_bn(nn.Linear(2, 2), train, batches=3) == 0
    with pytest.raises(ConfigError, match="batches must be an int >= 0"):
        recalibrate_bn(model, train, batches=-1)

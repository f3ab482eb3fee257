"""Tests for metaprune.pruning._tp_fixes: reshape mappings checked by what they compute."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from metaprune.pruning.structure import check_prunable, make_pruner

split_attn = pytest.importorskip("timm.layers.split_attn")

_C, _RADIX = 6, 2  # SplitAttn's output width; its conv lays channels out as r * C + c


def _splat() -> nn.Sequential:
    """Stem, ResNeSt's split attention (radix 2), a 1x1 classifier conv."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        split_attn.SplitAttn(8, _C, radix=_RADIX, rd_channels=4, norm_layer=nn.BatchNorm2d),
        nn.Conv2d(_C, 4, 1),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (model[1], model[3].bn0, model[3].bn1):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(0.1, 0.5)  # no channel dead after the ReLU
    return model.eval()


def test_a_radix_split_removes_the_channels_it_names() -> None:
    """ResNeSt's SplitAttn splits its conv output ``(B, R * C, H, W)`` into
    ``(B, R, C, H, W)``: output channel ``c`` is conv channels ``c, C + c``. Torch-Pruning
    took ``2c, 2c + 1`` (the model still ran, and reloaded bit-exact, computing something
    else). Channels zeroed beforehand are the ones removed, and the pruned model computes
    what the unpruned one does with them zeroed."""
    model, dead = _splat(), [1, 4]
    keep = [c for c in range(_C) if c not in dead]
    splat = model[3]
    with torch.no_grad():  # everything that reads or writes channels 1 and 4: zero
        for c in dead:
            rows = [r * _C + c for r in range(_RADIX)]
            splat.conv.weight[rows] = 0
            splat.bn0.weight[rows] = 0
            splat.bn0.bias[rows] = 0
            splat.fc2.weight[rows] = 0
            splat.fc2.bias[rows] = 0
            splat.fc1.weight[:, c] = 0
            model[4].weight[:, c] = 0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want, inner = model(x), model[:4](x)
    assert inner[:, dead].abs().max() == 0 and inner[:, keep].abs().amax((0, 2, 3)).min() > 0
    original = copy.deepcopy(model)
    pruner = make_pruner(
        model, x, tp.importance.GroupMagnitudeImportance(p=2),
        ignored_layers=[model[0], splat.fc1, model[4]], pruning_ratio=len(dead) / _C,
        global_pruning=False, max_layer_ratio=1.0, min_channels=1,
    )  # fmt: skip
    assert pruner.prune_step() == 1
    rows = [r * _C + c for r in range(_RADIX) for c in keep]
    assert splat.conv.out_channels == splat.fc2.out_channels == _RADIX * len(keep)
    assert splat.fc1.in_channels == model[4].in_channels == len(keep)
    assert torch.equal(splat.conv.weight, original[3].conv.weight[rows])
    assert torch.equal(splat.fc2.weight, original[3].fc2.weight[rows])
    assert torch.equal(splat.bn0.running_mean, original[3].bn0.running_mean[rows])
    assert torch.equal(splat.fc1.weight, original[3].fc1.weight[:, keep])
    assert torch.equal(model[4].weight, original[4].weight[:, keep])
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-6)
        assert torch.allclose(model[:4](x), inner[:, keep], atol=1e-6)


def test_a_radix_split_passes_the_dry_run_unfrozen() -> None:
    model = _splat()
    structure = check_prunable(model, torch.randn(1, 3, 8, 8), ignored_layers=[model[4]])
    assert structure.frozen == ()

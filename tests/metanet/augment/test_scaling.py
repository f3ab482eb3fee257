"""Positive per-channel scaling and channel permutations keep the decoded network's function."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graph_encoding import decode, encode
from metanet.augment import (
    channel_groups,
    outputs,
    permutable_groups,
    permute,
    same_function,
    scalable_groups,
    scale,
)
from metanet.augment.augmenter import graph_with
from metanet.sparsity import GroupSparsity
from metaprune.models import ArchSpec

EXAMPLE = torch.zeros(1, 1, 8, 8)


def _randomised(arch: str, seed: int = 0) -> nn.Module:
    """``arch`` with non-trivial BatchNorm affine and statistics (init has 1 / 0)."""
    torch.manual_seed(seed)
    model = ArchSpec(arch, {"in_channels": 1, "num_classes": 10}).build().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, list]:
    model = _randomised("cifar_resnet20")
    groups = GroupSparsity.from_model(model, EXAMPLE).groups
    return model, channel_groups(groups, model.state_dict())


def test_channel_groups_cover_every_layer(resnet) -> None:
    model, groups = resnet
    # 9 block-internal groups + 3 residual streams; fc's outputs are never a group
    assert len(groups) == 12 and sorted(g.size for g in groups) == [16] * 4 + [32] * 4 + [64] * 4
    keys = {s.key for g in groups for s in g.slices}
    state = model.state_dict()
    for k in state:
        if k.endswith(("weight", "bias", "running_mean", "running_var")) and k != "fc.bias":
            assert k in keys, k
    for g in groups:
        for s in g.slices:  # every channel owns the same number of indices, none twice
            assert s.index.shape[0] == g.size
            assert s.index.unique().numel() == s.index.numel() <= state[s.key].shape[s.dim]


def test_scaling_keeps_the_function_and_changes_the_weights(resnet) -> None:
    model, groups = resnet
    inputs = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    safe = scalable_groups(model, groups, inputs)
    assert len(safe) == len(groups)  # ReLU + BatchNorm everywhere, residual streams included
    state = dict(model.state_dict())
    gen = torch.Generator().manual_seed(2)
    scaled = state
    for g in safe:
        scaled = scale(scaled, g, torch.exp(torch.empty(g.size).uniform_(-1, 1, generator=gen)))
    changed = [k for k in state if not torch.equal(state[k], scaled[k])]
    assert len(changed) >= 40 and not any("running" in k for k in changed)
    # on the decoded torch network: encode the scaled state, decode it, run it
    graph = graph_with(encode(model, EXAMPLE), scaled)
    copy = _randomised("cifar_resnet20")
    copy.load_state_dict(decode(graph, copy))
    with torch.no_grad():
        for train in (False, True):
            model.train(train), copy.train(train)
            assert torch.allclose(model(inputs), copy(inputs), rtol=1e-4, atol=1e-4)
    model.eval()
    # the group-L2 ranking moved: the point of the augmentation
    imp = GroupSparsity.from_model(model, EXAMPLE)
    before, after = imp.importance(state), imp.importance(scaled)
    assert any(not torch.equal(a.argsort(), b.argsort()) for a, b in zip(before, after))


def test_scaling_is_refused_where_it_would_change_the_function() -> None:
    model = _randomised("cifar_vgg11_bn")
    inputs = torch.randn(8, 1, 8, 8)
    groups = channel_groups(GroupSparsity.from_model(model, EXAMPLE).groups, model.state_dict())
    assert len(scalable_groups(model, groups, inputs)) == len(groups) == 8  # ReLU: all safe
    for i, m in enumerate(model.features):  # SiLU is not positively homogeneous
        if isinstance(m, nn.ReLU):
            model.features[i] = nn.SiLU()
    assert scalable_groups(model, groups, inputs) == []  # the check is not vacuous
    state = dict(model.state_dict())
    ref = outputs(model, state, inputs)
    for g in groups:
        assert not same_function(model, ref, scale(state, g, torch.full((g.size,), 2.0)), inputs)


def test_scale_rejects_bad_factors(resnet) -> None:
    _, groups = resnet
    g = groups[0]
    with pytest.raises(ValueError, match="positive"):
        scale({}, g, torch.zeros(g.size))
    with pytest.raises(ValueError, match=f"{g.size} positive values"):
        scale({}, g, torch.ones(g.size + 1))


def test_permutation_keeps_the_function(resnet) -> None:
    model, groups = resnet
    inputs = torch.randn(8, 1, 8, 8)
    assert len(permutable_groups(model, groups, inputs)) == len(groups)
    state = dict(model.state_dict())
    moved = state
    gen = torch.Generator().manual_seed(3)
    for g in groups:
        moved = permute(moved, g, torch.randperm(g.size, generator=gen))
    assert sum(not torch.equal(state[k], moved[k]) for k in state) > 80
    assert same_function(model, state, moved, inputs)
    with pytest.raises(ValueError, match="permutation"):
        permute(state, groups[0], torch.zeros(groups[0].size, dtype=torch.long))

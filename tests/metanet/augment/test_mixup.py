"""Channel alignment by weight matching, and weight-space MixUp."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metanet.augment import MixupError, align, aligned, channel_groups, mix, mixable, permute
from metanet.augment.scaling import same_function
from metanet.sparsity import GroupSparsity
from metaprune.models import ArchSpec

EXAMPLE = torch.zeros(1, 1, 8, 8)


def _member(seed: int, width: float = 1.0) -> tuple[nn.Module, dict, list]:
    torch.manual_seed(seed)
    model = ArchSpec(
        "cifar_resnet20", {"in_channels": 1, "num_classes": 10, "width": width}
    ).build()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    state = dict(model.state_dict())
    return model, state, channel_groups(GroupSparsity.from_model(model, EXAMPLE).groups, state)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aligning_a_permuted_copy_recovers_the_permutation(seed: int) -> None:
    model, a, groups = _member(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    perms = [torch.randperm(g.size, generator=gen) for g in groups]
    b = a
    for g, p in zip(groups, perms):
        b = permute(b, g, p)  # b's channel c is a's channel p[c]
    inputs = torch.randn(8, 1, 8, 8)
    assert same_function(model, a, b, inputs)  # the permuted copy is the same network
    assert sum(not torch.equal(a[k], b[k]) for k in a) > 80
    found = align(a, b, groups, groups)
    for p, q in zip(perms, found):
        assert torch.equal(q, torch.argsort(p))  # a's channel c sits at b's argsort(p)[c]
    back = aligned(a, b, groups, groups, found)
    assert all(torch.equal(a[k], back[k]) for k in a)  # bit for bit
    mixed = mix(a, back, 0.3)
    assert all(torch.allclose(mixed[k].float(), a[k].float()) for k in a)


def test_mixup_of_two_networks_and_of_a_wider_partner() -> None:
    _, a, groups_a = _member(0)
    _, b, groups_b = _member(1)
    perms = align(a, b, groups_a, groups_b)
    for p, g in zip(perms, groups_a):
        assert sorted(p.tolist()) == list(range(g.size))
    back = aligned(a, b, groups_a, groups_b, perms)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in a.items()}
    # the matching beats the identity: aligned rows agree more with a's
    w = "layer1.0.conv1.weight"
    assert float((a[w] * back[w]).sum()) > float((a[w] * b[w]).sum())
    mixed = mix(a, back, 0.75)
    assert torch.allclose(mixed[w], 0.75 * a[w] + 0.25 * back[w])
    assert mixed["bn1.num_batches_tracked"] is a["bn1.num_batches_tracked"]
    with pytest.raises(ValueError, match="lam must be in"):
        mix(a, back, 1.5)

    # a narrower network takes a distinct subset of a wider one's channels
    _, narrow, groups_n = _member(2, width=0.75)
    assert mixable(groups_n, groups_a) and not mixable(groups_a, groups_n)
    perms = align(narrow, a, groups_n, groups_a)
    for p, gn, ga in zip(perms, groups_n, groups_a):
        assert p.unique().numel() == gn.size and int(p.max()) < ga.size
    sub = aligned(narrow, a, groups_n, groups_a, perms)
    assert {k: v.shape for k, v in sub.items()} == {k: v.shape for k, v in narrow.items()}
    with pytest.raises(MixupError, match="do not correspond"):
        align(a, narrow, groups_a, groups_n)

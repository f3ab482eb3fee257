"""ChannelMask silences exactly the channels the pruner would remove: the masked network
computes what the Torch-Pruning-pruned network computes, and gradients reach the weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch.func import functional_call

from metanet.prune_mask import ChannelMask
from metanet.sparsity import GroupSparsity, output_layers
from metaprune.models import create_model
from metaprune.testing import randomize_norms

X = torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _resnet():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", in_channels=1, num_classes=5, width=0.25)
    return randomize_norms(model, seed=3).double().eval()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_masked_network_equals_the_pruned_network() -> None:
    model = _resnet()
    sparsity = GroupSparsity.from_model(model, X[:1])
    mask = ChannelMask(sparsity.groups, normalizer="sum")
    tensors = _state(model)
    masks = mask.masks(tensors, keep=0.6)
    dropped = [(m == 0).nonzero().flatten().tolist() for m in masks]
    total = sum(g.size for g in mask.groups)
    assert sum(map(len, dropped)) == round(0.4 * total)
    for m, floor in zip(masks, mask.floors):  # every group keeps its floor
        assert int(m.sum()) >= floor
    # the dropped channels are the least important ones left above the floors
    imps = mask.importance(tensors)
    kept_min = min(float(i[m == 1].min()) for i, m in zip(imps, masks) if int(m.sum()) > 0)
    free_max = [float(i[m == 0].max()) for i, m in zip(imps, masks) if (m == 0).any()]
    assert max(free_max) <= kept_min

    model.train()
    masked_out = functional_call(model, mask(tensors, keep=0.6), (X,))

    # prune the same channels with Torch-Pruning, group by group
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    ignored = [modules[n] for n in output_layers(pruned, X[:1])]
    dg = tp.DependencyGraph().build_dependency(pruned, example_inputs=X[:1])
    roots = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]
    groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=roots))
    assert len(groups) == len(mask.groups)
    plans = [(g[0].dep.target.module, g[0].dep.handler, d) for g, d in zip(groups, dropped) if d]
    assert plans
    for module, handler, idxs in plans:
        dg.get_pruning_group(module, handler, idxs).prune()
    pruned.train()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(masked_out, pruned(X), rtol=1e-9, atol=1e-10)


def test_keep_one_is_identity_and_gradients_reach_the_weights() -> None:
    model = _resnet()
    mask = ChannelMask(GroupSparsity.from_model(model, X[:1]).groups)
    tensors = _state(model)
    for key, value in tensors.items():
        value.requires_grad_(key.endswith(("weight", "bias")))
    same = mask(tensors, keep=1.0)
    for k, v in tensors.items():
        assert torch.equal(same[k], v), k
    masked = mask(tensors, keep=0.5)
    model.train()
    functional_call(model, masked, (X,)).square().sum().backward()
    conv = "layer1.0.conv1.weight"
    # straight-through: dropped channels still get a gradient through the soft mask
    assert tensors[conv].grad is not None and tensors[conv].grad.abs().sum() > 0
    assert all(torch.isfinite(v.grad).all() for v in tensors.values() if v.grad is not None)


def test_bad_arguments_are_named() -> None:
    groups = GroupSparsity.from_model(_resnet(), X[:1]).groups
    with pytest.raises(ValueError, match="normalizer"):
        ChannelMask(groups, normalizer="median")
    with pytest.raises(ValueError, match="temperature"):
        ChannelMask(groups, temperature=0.0)
    with pytest.raises(ValueError, match="keep"):
        ChannelMask(groups).masks(_state(_resnet()), keep=0.0)

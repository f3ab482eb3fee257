"""Tests for metaprune.pruning._tp_fixes: reshape mappings checked by what they compute."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from metaprune.models import apply_channel_plan, channel_plan_of
from metaprune.pruning.progressive import progressive_prune
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


def _tiny_maxvit() -> nn.Module:
    """torchvision MaxViT, one block of one layer, 2x2 windows of 7x7 at 56 px."""
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    return MaxVit(input_size=(56, 56), stem_channels=8, partition_size=7, block_channels=[16],
                  block_layers=[1], head_dim=8, stochastic_depth_prob=0.0, num_classes=4).eval()  # fmt: skip


def test_maxvit_prunes_its_mlps_and_convs_through_its_partitions() -> None:
    """MaxViT's attention is an einsum, traced as views that only add or drop size-1 axes;
    Torch-Pruning took them for flattens and its index lists multiplied (maxvit_t's dry
    run filled 5 GB). They pass channels through now: the MBConv and MLP hidden widths are
    pruned; the residual stream, which the attention reads back as its own width, is
    frozen by name; the rebuild computes the same."""
    model, x = _tiny_maxvit(), torch.randn(1, 3, 56, 56)
    base = copy.deepcopy(model)
    graph = make_pruner(model, x, tp.importance.RandomImportance(), ignored_layers=[]).DG
    tp.dependency.index_mapping.update_index_mapping(graph)
    flatten = tp.dependency.index_mapping._FlattenIndexMapping  # (our bounded subclass)
    mappings = [
        m for n in graph.module2node.values() for d in n.dependencies for m in d.index_mapping
    ]
    assert not any(isinstance(m, flatten) for m in mappings)  # its head split had stride 3
    structure = check_prunable(model, x)
    frozen = structure.frozen_modules
    layer = "blocks.0.layers.0.layers"
    assert (
        f"{layer}.MBconv.layers.conv_c" in frozen
        and f"{layer}.grid_attention.mlp_layer.3" in frozen
    )
    assert f"{layer}.MBconv.layers.conv_a.0" not in frozen
    history = progressive_prune(model, x, 1.5, steps=4, normalizer="sum", frozen=frozen)
    assert history[-1].reached
    block = model.blocks[0].layers[0].layers
    mbconv = block.MBconv.layers
    assert (
        mbconv.conv_a[0].out_channels == mbconv.conv_b[0].out_channels == mbconv.conv_c.in_channels
    )
    assert mbconv.conv_a[0].out_channels < 64 and mbconv.conv_c.out_channels == 16
    for part in (block.window_attention, block.grid_attention):
        assert part.mlp_layer[1].out_features == part.mlp_layer[3].in_features
        assert part.attn_layer[1].to_qkv.weight.shape == (48, 16)
    assert any(
        p.mlp_layer[1].out_features < 64 for p in (block.window_attention, block.grid_attention)
    )
    rebuilt = apply_channel_plan(_tiny_maxvit(), channel_plan_of(model, base))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def _tiny_sknet() -> nn.Sequential:
    """Stem, timm's SelectiveKernel (two kernel paths, split input, radix-split
    attention), a 1x1 classifier conv."""
    from timm.layers import SelectiveKernel

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        SelectiveKernel(16, 16, rd_divisor=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()  # fmt: skip


def test_selective_kernels_prune_through_their_radix_split_attention() -> None:
    """SKNet's attention selects between its kernel paths through the same ``r * C + c``
    split as ResNeSt: ``fc_select`` loses channel ``c`` of every path (the dry run froze
    the paths before: skresnet18 was refused)."""
    model, x = _tiny_sknet(), torch.randn(1, 3, 16, 16)
    base = copy.deepcopy(model)
    structure = check_prunable(model, x)
    assert progressive_prune(model, x, 1.5, steps=4, normalizer="sum",
                             frozen=structure.frozen_modules)[-1].reached  # fmt: skip
    sk = model[3]
    for conv in (*[p.conv for p in sk.paths], sk.attn.fc_reduce, sk.attn.fc_select):
        assert conv.weight.shape[0] == conv.out_channels
        assert conv.weight.shape[1] * conv.groups == conv.in_channels
    assert sk.paths[0].conv.out_channels < 16
    assert sk.attn.fc_select.out_channels == 2 * sk.paths[0].conv.out_channels
    rebuilt = apply_channel_plan(_tiny_sknet(), channel_plan_of(model, base))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_an_index_listed_twice_is_pruned_once() -> None:
    """A group walk can reach a layer's channel from two root channels (skresnet18's
    kernel paths did); Torch-Pruning subtracts the list's length from ``out_channels``,
    which fell below the weight's width and the channel plan then rebuilt it wrong after
    the whole job. The pruner lists each index once."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    pruner = make_pruner(model, x, tp.importance.GroupMagnitudeImportance(),
                         ignored_layers=[model[2]], pruning_ratio=0.5)  # fmt: skip
    group = pruner.DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [1, 1, 5, 1])
    assert [list(item.idxs) for item in group] == [[1, 5]] * len(group)
    group.prune()
    assert model[0].out_channels == model[0].weight.shape[0] == 6
    assert model[2].in_channels == model[2].weight.shape[1] == 6


def test_index_mappings_are_recomputed_only_when_widths_change(monkeypatch) -> None:
    """Torch-Pruning recomputes every index mapping for every group it builds; they are a
    function of the widths, so the update runs again only after a prune changed a shape,
    and a prune with the shortcut is the same prune, index for index, as without it."""
    from metaprune.pruning import _tp_fixes

    calls = [0]
    original = _tp_fixes._update_index_mapping

    def counted(graph):
        calls[0] += 1
        original(graph)

    monkeypatch.setattr(_tp_fixes, "_update_index_mapping", counted)
    model = _splat()
    x = torch.randn(2, 3, 8, 8)
    pruner = make_pruner(model, x, tp.importance.GroupMagnitudeImportance(),
                         ignored_layers=[model[4]], pruning_ratio=0.5)  # fmt: skip
    built = calls[0]
    assert built == 1  # the graph's own update at build time
    dg = pruner.DG
    groups = list(dg.get_all_groups(ignored_layers=[model[4]]))
    assert len(groups) >= 2 and calls[0] == built  # widths unchanged: no update
    before = model[0].out_channels
    dg.get_pruning_group(model[0], tp.prune_conv_out_channels, [0]).prune()
    assert model[0].out_channels == before - 1
    dg.get_pruning_group(model[0], tp.prune_conv_out_channels, [1])
    assert calls[0] == built + 1  # a shape changed: updated once, then reused
    dg.get_pruning_group(model[0], tp.prune_conv_out_channels, [2])
    assert calls[0] == built + 1

    # the same progressive prune with and without the shortcut: identical models
    monkeypatch.setattr(_tp_fixes, "_update_index_mapping", original)
    results = []
    for update in (_tp_fixes._widths_index_mapping, original):
        monkeypatch.setattr(tp.dependency.index_mapping, "update_index_mapping", update)
        pruned = copy.deepcopy(_splat())
        history = progressive_prune(pruned, x, 1.6, steps=10, ignored_layers=[pruned[4]])
        results.append((history, pruned.state_dict()))
    (h1, a), (h2, b) = results
    assert h1 == h2 and h1[-1].reached and h1[-1].step > 1
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)

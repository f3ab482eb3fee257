"""Tests for metaprune.pruning.structure: attention heads, the dry run, frozen groups."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metaprune.errors import InvalidInputError
from metaprune.models import apply_channel_plan, channel_plan_of
from metaprune.pruning.progressive import progressive_prune
from metaprune.pruning.structure import attention_heads, check_prunable, sync_heads

timm_layers = pytest.importorskip("timm.layers")


class _TinyViT(nn.Module):
    """Patch conv, two timm attention blocks with layer scale, a pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 4, 32) * 0.1)
        self.blocks = nn.ModuleList(timm_layers.Attention(32, num_heads=4, qkv_bias=True)
                                    for _ in range(2))  # fmt: skip
        self.gammas = nn.ParameterList(nn.Parameter(torch.rand(32)) for _ in range(2))
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for block, gamma in zip(self.blocks, self.gammas):
            x = x + gamma * block(x)
        x = x + self.mlp(x)
        return self.head(x.mean(1))


class _HardCoded(nn.Module):
    """conv1's width is read back as a constant in forward: pruning conv1 breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], 8, x.shape[2], x.shape[3]).relu()
        x = self.conv3(self.conv2(x).relu()).relu()
        return self.fc(x.mean((2, 3)))


def test_timm_attention_keeps_its_heads_and_rebuilds_exactly() -> None:
    torch.manual_seed(0)
    model = _TinyViT().eval()
    x = torch.randn(1, 3, 8, 8)
    heads = attention_heads(model)
    assert heads == {model.blocks[0].qkv: 4, model.blocks[1].qkv: 4}
    structure = check_prunable(model, x)
    assert structure.frozen == () and structure.groups >= 3
    base = copy.deepcopy(model)
    history = progressive_prune(model, x, 1.6, steps=10, normalizer="sum")
    assert history[-1].reached
    for block in model.blocks:
        assert block.num_heads == 4 and block.qkv.out_features == 3 * 4 * block.head_dim
        assert block.attn_dim == 4 * block.head_dim == block.proj.in_features
        assert block.head_dim < 8 and block.scale == pytest.approx(block.head_dim**-0.5)
    assert model.gammas[0].shape == (model.patch.out_channels,) < (32,)
    plan = channel_plan_of(model, base)
    assert plan["blocks.0"]["head_dim"] == model.blocks[0].head_dim
    width = [model.patch.out_channels]
    assert plan["gammas"] == {"0": width, "1": width}  # a ParameterList's bare parameters
    rebuilt = apply_channel_plan(_TinyViT().eval(), plan)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_sync_heads_only_touches_consistent_widths() -> None:
    attn = timm_layers.Attention(16, num_heads=4)
    sync_heads(attn)
    assert (attn.head_dim, attn.attn_dim) == (4, 16)


def test_a_group_whose_width_forward_hard_codes_is_frozen_by_name() -> None:
    torch.manual_seed(0)
    model = _HardCoded().eval()
    x = torch.randn(1, 3, 8, 8)
    structure = check_prunable(model, x)
    assert [g.modules for g in structure.frozen] == [("conv1",)]
    assert "shape" in structure.frozen[0].reason and "8" in structure.frozen[0].reason
    assert structure.frozen_modules == ("conv1",)
    assert structure.to_dict()["frozen"][0]["modules"] == ["conv1"]
    before = copy.deepcopy(model)
    history = progressive_prune(model, x, 1.3, steps=10, frozen=structure.frozen_modules)
    assert model.conv1.out_channels == 8
    assert model.conv2.out_channels + model.conv3.out_channels < 16
    assert history[-1].macs < history[0].macs
    assert torch.isfinite(model(x)).all() and channel_plan_of(model, before)


def test_nothing_prunable_is_refused_before_any_work() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(InvalidInputError, match="Sequential has no prunable layer"):
        check_prunable(model, torch.randn(1, 3, 2, 2))


def test_a_model_whose_every_group_breaks_is_refused_naming_the_module() -> None:
    class OnlyHardCoded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv1(x)
            return self.fc(x.reshape(x.shape[0], 8, -1).mean(2))

    with pytest.raises(InvalidInputError, match="cannot be pruned structurally: pruning 'conv1' breaks it"):
        check_prunable(OnlyHardCoded(), torch.randn(1, 3, 6, 6))


def test_frozen_names_must_exist() -> None:
    with pytest.raises(InvalidInputError, match="frozen layer 'nope'"):
        progressive_prune(_HardCoded(), torch.randn(1, 3, 8, 8), 1.5, steps=2, frozen=["nope"])


def test_dry_run_does_not_touch_the_model() -> None:
    model = _TinyViT()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check_prunable(model, torch.randn(1, 3, 8, 8))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.blocks[0].head_dim == 8 and not any(p.is_meta for p in model.parameters())


def test_a_forward_that_reads_tensor_values_is_dry_run_on_the_cpu() -> None:
    class ReadsValues(_HardCoded):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv2(self.conv1(x).relu()) * float(x.abs().max().item() > 0)
            return self.fc(self.conv3(x).mean((2, 3)))

    structure = check_prunable(ReadsValues().eval(), torch.randn(1, 3, 8, 8))
    assert structure.frozen == () and structure.groups == 3


class _Cached(nn.Module):
    """A conv whose eval passes cache a tensor derived from a parameter (LeViT's attention
    bias cache): filled with autograd on, it is a non-leaf tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bias2 = nn.Parameter(torch.rand(8))
        self.bias_cache: dict[str, torch.Tensor] = {}
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias2 * 2 if self.training else self.bias_cache.setdefault("b", self.bias2 * 2)
        return self.head((self.conv(x) + b[:, None, None]).mean((2, 3)))


def test_cached_tensors_are_forgotten_before_copies_and_after_steps() -> None:
    model = _Cached().eval()
    x = torch.randn(2, 3, 8, 8)
    model(x)  # autograd on: the cache holds a non-leaf tensor
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)
    history = progressive_prune(model, x, 1.5, steps=4, normalizer="mean", max_layer_ratio=0.9)
    assert history[-1].reached and model.conv.out_channels < 8
    assert model.bias_cache == {}  # stale after a step: refilled from the pruned bias
    with torch.no_grad():
        assert model(x).shape == (2, 2) and model.bias_cache["b"].shape == (model.conv.out_channels,)


def test_a_concat_of_unknown_width_is_left_unmapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Torch-Pruning sums the widths of a concatenation's inputs before it checks them for
    ``None`` (CSPNet): the wrapper leaves such a concat unmapped, other errors pass."""
    from types import SimpleNamespace

    from metaprune.pruning import _tp_fixes as structure

    def original(graph: object, node: SimpleNamespace) -> None:
        node.module.concat_sizes = node.sizes
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(structure, "_update_concat_index_mapping", original)
    node = SimpleNamespace(module=SimpleNamespace(concat_sizes=None), sizes=[8, None])
    structure._concat_index_mapping(None, node)  # no error: unmapped
    node = SimpleNamespace(module=SimpleNamespace(concat_sizes=None), sizes=[8, 8])
    with pytest.raises(TypeError):
        structure._concat_index_mapping(None, node)


def _tiny_mixnet() -> nn.Sequential:
    """timm's MixedConv2d twice: depthwise 3x3 + 5x5 on 7 + 6 channels, then two 1x1
    convolutions whose input split is the first one's concatenation."""
    mixed = timm_layers.MixedConv2d
    return nn.Sequential(
        nn.Conv2d(3, 13, 1), nn.BatchNorm2d(13), nn.ReLU(),
        mixed(13, 13, [3, 5], depthwise=True), nn.BatchNorm2d(13), nn.ReLU(),
        mixed(13, 16, [1, 1]), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip


def test_mixed_conv_splits_map_each_slice_to_its_convolution() -> None:
    """Torch-Pruning lists a split's outputs in trace order (here: swapped) and keeps its
    offsets from before pruning; both are corrected, and ``splits`` follows the convs."""
    torch.manual_seed(0)
    model = _tiny_mixnet().eval()
    assert model[3].splits == model[6].splits == [7, 6]  # unequal: a swap cannot fit
    x = torch.randn(1, 3, 16, 16)
    assert check_prunable(model, x).frozen == ()
    base = copy.deepcopy(model)
    history = progressive_prune(model, x, 2.0, steps=8, normalizer="sum")
    assert history[-1].reached and len(history) > 2  # several steps: offsets after pruning
    dw, pw = model[3].values(), model[6].values()
    assert [c.out_channels for c in dw] == [c.in_channels for c in dw] == model[3].splits
    assert [c.out_channels for c in dw] == [c.in_channels for c in pw] == model[6].splits
    assert sum(model[3].splits) < 13
    assert model[6].in_channels == sum(model[6].splits) == model[4].num_features
    rebuilt = apply_channel_plan(_tiny_mixnet().eval(), channel_plan_of(model, base))
    assert rebuilt[6].splits == model[6].splits
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def _tiny_nf() -> nn.Sequential:
    conv = timm_layers.ScaledStdConv2d
    return nn.Sequential(conv(3, 16, 3), nn.ReLU(), conv(16, 16, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))  # fmt: skip


def test_a_conv_subclass_gain_is_pruned_with_its_channels() -> None:
    """NF-ResNet's ScaledStdConv2d scales each output channel by ``gain``, which
    Torch-Pruning does not know: it loses the same channels as the weight."""
    torch.manual_seed(0)
    model = _tiny_nf().eval()
    with torch.no_grad():
        for i in (0, 2):  # the gain names the original channel
            model[i].gain.copy_(torch.arange(1.0, 17.0).view(16, 1, 1, 1))
    original = copy.deepcopy(model)
    x = torch.randn(1, 3, 12, 12)
    assert check_prunable(model, x).frozen == ()
    assert progressive_prune(model, x, 2.0, steps=8, normalizer="sum")[-1].reached
    first = model[0]
    assert first.gain.shape == (first.out_channels, 1, 1, 1) and first.out_channels < 16
    kept = first.gain.flatten().long() - 1
    assert torch.equal(first.weight, original[0].weight[kept])  # the same channels
    assert model[2].gain.shape == (model[2].out_channels, 1, 1, 1)
    assert torch.equal(model[2].weight, original[2].weight[model[2].gain.flatten().long() - 1][:, kept])
    rebuilt = apply_channel_plan(_tiny_nf().eval(), channel_plan_of(model, original))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_sliced_residuals_prune_without_freezing_and_rebuild() -> None:
    """ReXNet adds each block's input to the first ``in_channels`` of its output and
    concatenates the rest: Torch-Pruning inferred wrong concatenation widths (indices
    past a layer's width, a group walk that did not end on rexnet_100) and froze the
    stream; the widths are now recorded from the trace."""
    rexnet = pytest.importorskip("timm.models.rexnet")

    def build() -> nn.Module:
        return rexnet.RexNet(num_classes=4, initial_chs=8, final_chs=32, width_mult=0.25,
                             depth_mult=0.35).eval()  # fmt: skip

    torch.manual_seed(0)
    model, x = build(), torch.randn(1, 3, 32, 32)
    blocks = [m for m in model.modules() if isinstance(m, rexnet.LinearBottleneck)]
    assert sum(b.use_shortcut for b in blocks) >= 3
    assert check_prunable(model, x).frozen == ()
    base = copy.deepcopy(model)
    assert progressive_prune(model, x, 2.0, steps=8, normalizer="sum")[-1].reached
    for block in blocks:
        first = block.conv_exp or block.conv_dw
        assert block.in_channels == first.conv.in_channels
        assert block.out_channels == block.conv_pwl.conv.out_channels
    before = [m for m in base.modules() if isinstance(m, rexnet.LinearBottleneck)]
    assert any(b.use_shortcut and b.in_channels < c.in_channels for b, c in zip(blocks, before))
    rebuilt = apply_channel_plan(build(), channel_plan_of(model, base))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize(("before", "after", "merges"), [
    ((2, 8, 3, 3), (2, 72), True),  # flatten before a classifier
    ((2, 72), (2, 8, 3, 3), True),  # its reverse
    ((2, 8, 3, 3), (2, 2, 4, 3, 3), True),  # a channel shuffle's view: splits axis 1
    ((2, 6, 6, 8), (2, 3, 2, 3, 2, 8), False),  # a window partition, channels last
    ((2, 8, 3, 3), (2, 8, 9), False),  # flattens the spatial axes only
    ((8, 4, 4, 8), (2, 4, 4, 4, 8), False),  # another batch size
])  # fmt: skip
def test_only_reshapes_of_the_channel_axis_are_mapped(before, after, merges) -> None:
    from metaprune.pruning import _tp_reshape

    assert _tp_reshape._merges_channels(before, after) is merges


def test_traced_split_sizes_come_from_autograd() -> None:
    from metaprune.pruning import _tp_fixes

    x = torch.randn(2, 7, 3, requires_grad=True)
    assert _tp_fixes._traced_split_sizes(x.chunk(2, dim=1)[0].grad_fn) == [4, 3]
    assert _tp_fixes._traced_split_sizes(x.split([2, 5], dim=1)[0].grad_fn) == [2, 5]
    assert _tp_fixes._traced_split_sizes(x.chunk(3, dim=2)[0].grad_fn) is None  # not channels
    assert _tp_fixes._traced_split_sizes(None) is None


def _prune_and_rebuild(build, x: torch.Tensor, target: float) -> tuple[nn.Module, nn.Module]:
    """Dry run (nothing refused), prune to ``target`` MACs, rebuild from the channel plan;
    returns (pruned, unpruned)."""
    torch.manual_seed(0)
    model = build().eval()
    base = copy.deepcopy(model)
    structure = check_prunable(model, x)
    history = progressive_prune(model, x, target, steps=4, normalizer="sum",
                                frozen=structure.frozen_modules)  # fmt: skip
    assert history[-1].reached
    rebuilt = apply_channel_plan(build().eval(), channel_plan_of(model, base))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    return model, base


def test_torchvision_swin_prunes_its_mlps_through_window_partitions() -> None:
    """torchvision's Swin partitions channels-last windows with views that never touch
    the channel axis; Torch-Pruning mapped them as flattens (index lists that multiplied
    block after block: refused). They now pass channels through: the MLP hidden widths
    are pruned, the residual stream and the attention (called through ``F.linear`` on its
    weights, so Torch-Pruning cannot prune it) keep their widths."""
    from torchvision.models.swin_transformer import SwinTransformer

    def build() -> nn.Module:
        return SwinTransformer([2, 2], 16, [1, 1], [2, 2], [2, 2], num_classes=4)

    model, base = _prune_and_rebuild(build, torch.randn(1, 3, 16, 16), 1.3)
    mlps = [(n, m) for n, m in model.named_modules() if n.endswith("mlp.0")]
    assert len(mlps) == 2 and any(m.out_features < 64 for _, m in mlps)
    for name, mlp in mlps:
        assert model.get_submodule(name.replace("mlp.0", "mlp.3")).in_features == mlp.out_features
    for (name, new), old in zip(model.named_modules(), base.modules()):
        if isinstance(new, nn.LayerNorm) or name.endswith(("attn.qkv", "attn.proj")):
            assert new.weight.shape == old.weight.shape, name


def test_shufflenet_prunes_inside_its_branches_and_freezes_the_shuffle() -> None:
    """ShuffleNet-V2 interleaves two branches with a view, a transpose and a view back:
    no channel-by-channel mapping exists, so the groups stop there, the layers feeding
    the shuffle are frozen by name and the branches' inner widths are pruned."""
    from torchvision.models import ShuffleNetV2

    def build() -> nn.Module:
        return ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 64], num_classes=4)

    x = torch.randn(1, 3, 16, 16)
    frozen = check_prunable(build().eval(), x).frozen_modules
    assert "stage2.0.branch2.5" in frozen and "stage2.0.branch1.2" in frozen
    assert "stage2.0.branch2.0" not in frozen
    model, base = _prune_and_rebuild(build, x, 1.3)
    for stage, old in zip((model.stage2, model.stage3, model.stage4),
                          (base.stage2, base.stage3, base.stage4)):  # fmt: skip
        branch, was = stage[0].branch2, old[0].branch2
        assert branch[0].out_channels == branch[3].out_channels == branch[5].in_channels
        assert branch[5].out_channels == was[5].out_channels  # what enters the shuffle
    assert any(s[0].branch2[0].out_channels < o[0].branch2[0].out_channels
               for s, o in zip((model.stage2, model.stage3), (base.stage2, base.stage3)))  # fmt: skip


def test_a_group_walk_that_keeps_growing_is_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Torch-Pruning follows a layer again for every new index list reaching it (MaxViT:
    memory full after minutes); past ``MAX_WALKS_PER_LAYER`` the dry run refuses. The
    tiny ViT's heads reach its layers by up to 10 lists."""
    from metaprune.pruning import _tp_fixes

    model, x = _TinyViT().eval(), torch.randn(1, 3, 8, 8)
    assert check_prunable(model, x).frozen == ()  # the real bound leaves it alone
    monkeypatch.setattr(_tp_fixes, "MAX_WALKS_PER_LAYER", 8)
    with pytest.raises(InvalidInputError, match="Torch-Pruning cannot trace _TinyViT") as err:
        check_prunable(model, x)
    assert "reached one layer by more than 8 different index lists" in str(err.value)


class _HeadFirstAttention(nn.Module):
    """Patch conv, one timm MaxxViT ``AttentionCl`` with ``head_first`` (qkv laid out as
    heads x (q, k, v)), an MLP, a pooled head."""

    def __init__(self, head_first: bool) -> None:
        super().__init__()
        from timm.models.maxxvit import AttentionCl

        self.patch = nn.Conv2d(3, 16, 2, stride=2)
        self.attn = AttentionCl(16, dim_head=8, head_first=head_first)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).permute(0, 2, 3, 1)
        x = x + self.attn(x)
        return self.head((x + self.mlp(x)).mean((1, 2)))


def test_a_head_first_qkv_keeps_its_width() -> None:
    """Torch-Pruning's head groups take the same positions from each head's chunk of
    the qkv output: right for timm's ``(q, k, v) x heads`` layout, wrong for
    ``head_first``'s ``heads x (q, k, v)`` (MaxxViT's ``rw`` models crashed mid-job)."""
    assert len(attention_heads(_HeadFirstAttention(head_first=False))) == 1
    model = _HeadFirstAttention(head_first=True).eval()
    assert attention_heads(model) == {}
    x = torch.randn(1, 3, 8, 8)
    assert progressive_prune(model, x, 1.2, steps=4, normalizer="sum")[-1].reached
    assert model.attn.qkv.out_features == 48 and model.attn.num_heads == 2
    assert model.mlp[0].out_features < 32

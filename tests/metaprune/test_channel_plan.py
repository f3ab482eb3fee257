"""Tests for metaprune.models.channel_plan beyond standard layers: bare tensors and heads."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from metaprune.models import ArchSpec, SpecError, apply_channel_plan, channel_plan_of
from metaprune.models.channel_plan import MAX_TENSOR_DIMS, head_attrs, set_heads

timm_layers = pytest.importorskip("timm.layers")


class _Scaled(nn.Module):
    """A conv, a ConvNeXt-style layer scale (bare parameter) and a bare buffer."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 1)
        self.gamma = nn.Parameter(torch.rand(c))
        self.register_buffer("shift", torch.rand(c, 1, 1))
        self.fc = nn.Linear(c, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x) * self.gamma[:, None, None] + self.shift
        return self.fc(x.mean((2, 3)))


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = timm_layers.Attention(16, num_heads=4, qkv_bias=True)
        self.pos = nn.Parameter(torch.rand(1, 5, 16))
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x + self.pos).mean(1))


def _shrink(module: nn.Module, name: str, keep: list[int], dim: int = 0) -> None:
    old = getattr(module, name)
    index = torch.tensor(keep)
    new = old.detach().index_select(dim, index)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new))
    else:
        setattr(module, name, new)


def test_bare_parameters_and_buffers_are_recorded_by_shape() -> None:
    base, model = _Scaled(), _Scaled()
    model.load_state_dict(base.state_dict())
    keep = [0, 2, 3, 7]
    _shrink(model.conv, "weight", keep)
    _shrink(model.conv, "bias", keep)
    model.conv.out_channels = 4
    _shrink(model, "gamma", keep)
    _shrink(model, "shift", keep)
    _shrink(model.fc, "weight", keep, dim=1)
    model.fc.in_features = 4
    plan = channel_plan_of(model, base)
    assert plan[""] == {"gamma": [4], "shift": [4, 1, 1]}
    assert plan["conv"]["out_channels"] == 4 and plan["fc"]["in_features"] == 4
    rebuilt = apply_channel_plan(_Scaled(), json.loads(json.dumps(plan)))
    assert isinstance(rebuilt.gamma, nn.Parameter) and "shift" in rebuilt._buffers
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(rebuilt(x), model(x))
    assert channel_plan_of(rebuilt, base) == plan


def test_attention_heads_are_recorded_and_replayed() -> None:
    base, model = _Attn(), _Attn()
    model.load_state_dict(base.state_dict())
    attn = model.attn
    assert head_attrs(attn) == {"num_heads": 4, "head_dim": 4}
    # keep head dims 0..2 of every head in q, k and v; the proj's inputs to match
    keep = [b * 16 + h * 4 + d for b in range(3) for h in range(4) for d in range(3)]
    _shrink(attn.qkv, "weight", keep)
    _shrink(attn.qkv, "bias", keep)
    attn.qkv.out_features = 36
    _shrink(attn.proj, "weight", [h * 4 + d for h in range(4) for d in range(3)], dim=1)
    attn.proj.in_features = 12
    set_heads(attn, 4, 3)
    assert (attn.head_dim, attn.attn_dim, attn.scale) == (3, 12, pytest.approx(3**-0.5))
    plan = channel_plan_of(model, base)
    assert plan["attn"] == {"num_heads": 4, "head_dim": 3}
    rebuilt = apply_channel_plan(_Attn(), plan)
    assert (rebuilt.attn.head_dim, rebuilt.attn.attn_dim) == (3, 12)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    with pytest.raises(ValueError, match="expected int head attribute"):
        apply_channel_plan(_Attn(), {"attn": {"num_heads": 4, "qk_dim": 3}})


def test_a_scale_that_is_not_the_default_is_kept() -> None:
    attn = timm_layers.Attention(16, num_heads=4)
    attn.scale = 0.1
    set_heads(attn, 4, 2)
    assert attn.scale == 0.1 and attn.head_dim == 2


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        ({"": {"gamma": [4, 1]}}, "cannot resize gamma of shape \\(8,\\) to \\(4, 1\\)"),
        ({"": {"gamma": 4}}, "tensor 'gamma' needs a shape"),
        ({"": {"width": 4}}, "no structural attributes, head geometry or tensors named \\['width'\\]"),
        ({"": {"gamma": [0]}}, "non-empty list of at most 8 positive ints"),
        ({"": {"gamma": [1] * (MAX_TENSOR_DIMS + 1)}}, "at most 8 positive ints"),
        ({"": {"gamma": [2.5]}}, "positive ints"),
    ],
)
def test_bad_tensor_entries(plan: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_channel_plan(_Scaled(), plan)


def test_a_plan_cannot_grow_a_tensor_past_the_limits() -> None:
    from metaprune.limits import Limits, check_spec

    spec = ArchSpec("torchvision/convnext_tiny", {"num_classes": 4},
                    {"features.1.0": {"layer_scale": [10**9, 1, 1]}})  # fmt: skip
    with pytest.raises(Exception, match="max_params"):
        check_spec(spec, Limits())
    with pytest.raises(SpecError, match="positive ints"):
        ArchSpec("cifar_resnet20", {}, {"": {"x": [-1]}})


def test_unchanged_models_have_empty_plans() -> None:
    model = _Attn()
    assert channel_plan_of(copy.deepcopy(model), model) == {}


def test_a_plan_replay_is_counted_once_by_the_build_guard() -> None:
    """Resizing a tensor replaces it: the guard counts the resized model, not both."""
    from metaprune.limits import Limits
    from metaprune.models.size import build_guard

    limits = Limits.from_dict({"max_params": 3 * 8 + 8 + 8 + 8 * 2 + 2 + 8})  # the model: 66
    with build_guard(limits):
        model = _Scaled(8)
        apply_channel_plan(model, {"conv": {"out_channels": 4}, "": {"gamma": [4], "shift": [4, 1, 1]},
                                   "fc": {"in_features": 4}})  # fmt: skip
    assert tuple(model.conv.weight.shape) == (4, 3, 1, 1) and tuple(model.gamma.shape) == (4,)


def test_torchvision_vit_hidden_dim_follows_its_patch_embedding() -> None:
    from torchvision.models import VisionTransformer

    def vit() -> VisionTransformer:
        return VisionTransformer(8, 4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8, num_classes=3)

    base, model = vit(), vit()
    apply_channel_plan(model, {"conv_proj": {"out_channels": 6}})
    assert model.hidden_dim == 6 and base.hidden_dim == 8
    assert "hidden_dim" not in json.dumps(channel_plan_of(model, base))  # derived, not recorded

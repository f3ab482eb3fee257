"""Tests for metaprune/pruning/targets.py: MACs counted on the meta device."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torchvision.models import VisionTransformer

from metaprune.pruning import measure_cost


class _ReadsValues(nn.Module):
    """A forward that branches on a tensor value: it cannot run on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if bool(y.sum() > -1e9):
            y = y.relu()
        return self.fc(y.mean((2, 3)))


def test_meta_count_equals_torch_prunings_count_on_real_data():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                            hidden_dim=16, mlp_dim=32, num_classes=3)  # fmt: skip
    models = [vit, _ReadsValues(), nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))]
    for model in models:
        model.train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        x = torch.randn(1, 3, 32, 32)
        macs, params = tp.utils.count_ops_and_params(model, x)
        cost = measure_cost(model, x)
        assert (cost.macs, cost.params) == (int(macs), int(params)) and cost.macs > 0
        assert model.training  # mode, weights and device untouched
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) and not after[k].is_meta for k in before)


class _Attention(nn.Module):
    """``nn.MultiheadAttention`` asked for its weights (the count's real-forward path)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.act = nn.GELU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).permute(2, 0, 1)
        out, weights = self.attn(t, t, t)
        return self.fc(self.act(out).mean(0)) + weights.mean()


def _small_models() -> dict[str, nn.Module]:
    from timm import create_model
    from torchvision.models import ConvNeXt, mobilenet_v2, resnet18
    from torchvision.models.convnext import CNBlockConfig

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                            hidden_dim=16, mlp_dim=32, num_classes=3)  # fmt: skip
    return {
        "resnet18": resnet18(num_classes=3),
        "convnext": ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3),
        "vit": vit,
        "mobilenet_v2": mobilenet_v2(num_classes=3, width_mult=0.25),
        "timm_efficientnet": create_model("test_efficientnet", num_classes=3),  # BatchNormAct2d
        "attention_weights": _Attention(),
    }


def test_count_equals_torch_prunings_before_and_after_pruning():
    """Bit for bit, on the unpruned models and after every pruning step (widths change,
    spatial sizes and token counts do not)."""
    from metaprune.pruning import progressive_prune

    x = torch.randn(1, 3, 32, 32)
    for name, model in _small_models().items():
        model.eval()
        checked = []

        def on_step(info, pruned, name=name, checked=checked):
            macs, params = tp.utils.count_ops_and_params(pruned, x)
            assert (info.macs, info.params) == (int(macs), int(params)), (name, info.step)
            assert measure_cost(pruned, x) == measure_cost(pruned, x)  # deterministic
            checked.append(info.macs)

        progressive_prune(model, x, 1.6, steps=10, on_step=on_step)
        assert len(checked) >= 2, name
        assert checked[-1] < checked[0] or name == "attention_weights", name  # pruned (not MHA's)
        assert not any(t.is_meta for t in model.state_dict().values()), name

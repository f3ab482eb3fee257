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

"""Tiny, seeded networks whose graphs can be written down by hand."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "MixedKernels",
    "TinyMLP",
    "TinyResidual",
    "TinyConvNet",
    "permute_hidden_conv",
    "randomize_norms",
]


class TinyMLP(nn.Module):
    """Linear(2->3) -> ReLU -> Linear(3->2): 7 nodes, 12 edges."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TinyResidual(nn.Module):
    """fc1 (2->2), then ``h + fc2(h)``: the add merges into fc2's nodes with identity edges."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return h + self.fc2(h)


class TinyConvNet(nn.Module):
    """conv-BN-ReLU x2 with a projection-shortcut block, pool, linear head."""

    def __init__(self, in_channels: int = 3, width: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width + 1, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width + 1)
        self.proj = nn.Conv2d(width, width + 1, 1, bias=False)
        self.bnp = nn.BatchNorm2d(width + 1)
        self.fc = nn.Linear(width + 1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + self.bnp(self.proj(h)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if getattr(m, "weight", None) is not None and isinstance(
                m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
            ):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model


def permute_hidden_conv(model: TinyConvNet, perm: torch.Tensor) -> TinyConvNet:
    """Permute conv1's output channels and everything that reads them; function unchanged."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        out.conv1.weight.copy_(model.conv1.weight[perm])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out.bn1, name).copy_(getattr(model.bn1, name)[perm])
        out.conv2.weight.copy_(model.conv2.weight[:, perm])
        out.proj.weight.copy_(model.proj.weight[:, perm])
    return out


class MixedKernels(nn.Module):
    """11x11, 7x7, 3x3, depthwise 3x3 and 1x1 convs and a linear head, with BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 11, padding=5, bias=False)
        self.conv7 = nn.Conv2d(4, 6, 7, padding=3, bias=False)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.conv1 = nn.Conv2d(6, 8, 1, bias=False)
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in (4, 6, 6, 6, 8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in zip((self.stem, self.conv7, self.conv3, self.dw, self.conv1), self.bns):
            x = torch.relu(bn(conv(x)))
        return self.fc(x.mean((2, 3)))

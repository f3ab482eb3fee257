"""CIFAR-style ResNets (He et al., 2016, section 4.2): ``cifar_resnet{20,32,56,110}``.

Depth ``6n + 2``: a 3x3 stem, three stages of ``n`` BasicBlocks with ``16/32/64``
channels (times ``width``), stride 2 at the first block of stages 2 and 3, global
average pooling and a linear classifier ``fc``. Shortcuts that change the shape are
1x1-conv + BN projections (option B); the others are an empty ``nn.Sequential``, so
the forward pass has no data-dependent control flow and is ``torch.fx``-traceable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaprune.models.registry import register_model

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "cifar_resnet110",
    "scaled_width",
]


def scaled_width(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest int, at least 1."""
    if not width > 0:
        raise ValueError(f"width multiplier must be > 0 (found {width!r})")
    return max(1, round(channels * width))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + sc(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return torch.relu(out)


class CifarResNet(nn.Module):
    """ResNet for small images with ``blocks_per_stage`` BasicBlocks in each of 3 stages.

    Args:
        blocks_per_stage: ``n`` in depth ``6n + 2``.
        num_classes: size of the classifier output.
        in_channels: channels of the input images.
        width: multiplier applied to the stage widths 16/32/64.

    Shapes:
        input ``(N, in_channels, H, W)`` with any ``H, W >= 1``; output ``(N, num_classes)``.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1 (found {blocks_per_stage})")
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        widths = [scaled_width(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convs and classifier (fan-out for convs), unit BN, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(self.avgpool(out), 1)
        return self.fc(out)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (found {value!r})")


def _resnet(n: int, num_classes: int, in_channels: int, width: float) -> CifarResNet:
    return CifarResNet(n, num_classes=num_classes, in_channels=in_channels, width=width)


@register_model("cifar_resnet20")
def cifar_resnet20(
    *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
) -> CifarResNet:
    """ResNet-20 (3 blocks per stage, 0.27 M parameters at width 1)."""
    return _resnet(3, num_classes, in_channels, width)


@register_model("cifar_resnet32")
def cifar_resnet32(
    *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
) -> CifarResNet:
    """ResNet-32 (5 blocks per stage)."""
    return _resnet(5, num_classes, in_channels, width)


@register_model("cifar_resnet56")
def cifar_resnet56(
    *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
) -> CifarResNet:
    """ResNet-56 (9 blocks per stage)."""
    return _resnet(9, num_classes, in_channels, width)


@register_model("cifar_resnet110")
def cifar_resnet110(
    *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
) -> CifarResNet:
    """ResNet-110 (18 blocks per stage)."""
    return _resnet(18, num_classes, in_channels, width)

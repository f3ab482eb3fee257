"""VGG with batch norm for small images: ``cifar_vgg11_bn`` (config A), ``cifar_vgg19_bn`` (E).

``features`` is a stack of conv3x3-BN-ReLU layers and ``MaxPool2d(2, ceil_mode=True)``
(so a 1x1 map stays 1x1 and 8x8 inputs work), followed by ``AdaptiveAvgPool2d(1)``,
flatten and a single linear ``classifier`` of ``512 * width`` inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaprune.models.cifar_resnet import scaled_width
from metaprune.models.registry import register_model

__all__ = ["CONFIGS", "CifarVGG", "cifar_vgg11_bn", "cifar_vgg19_bn"]

#: Layer configurations (channels, or "M" for a max-pool), from Simonyan & Zisserman (2015).
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}  # fmt: skip


class CifarVGG(nn.Module):
    """VGG-BN for small images.

    Args:
        config: a key of :data:`CONFIGS`.
        num_classes: size of the classifier output.
        in_channels: channels of the input images.
        width: multiplier applied to every conv width.

    Shapes:
        input ``(N, in_channels, H, W)`` with any ``H, W >= 1``; output ``(N, num_classes)``.
    """

    def __init__(
        self, config: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
    ) -> None:
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"unknown VGG config {config!r} (expected one of {sorted(CONFIGS)})")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int (found {value!r})")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = scaled_width(int(item), width)
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convs (fan-out), unit BN, small-normal classifier, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(out)


@register_model("cifar_vgg11_bn")
def cifar_vgg11_bn(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarVGG:
    """VGG-11 with batch norm (config A, 8 conv layers)."""
    return CifarVGG("A", num_classes=num_classes, in_channels=in_channels, width=width)


@register_model("cifar_vgg19_bn")
def cifar_vgg19_bn(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarVGG:
    """VGG-19 with batch norm (config E, 16 conv layers)."""
    return CifarVGG("E", num_classes=num_classes, in_channels=in_channels, width=width)

"""Architectures metaprune can build: a registry, CIFAR ResNet/VGG, torchvision models, specs."""

from metaprune.models import cifar_resnet, cifar_vgg, torchvision_models  # noqa: F401 (registers)
from metaprune.models.channel_plan import (
    ChannelPlan,
    apply_channel_plan,
    channel_plan_of,
    structural_attrs,
)
from metaprune.models.registry import (
    UnknownModelError,
    create_model,
    is_model,
    list_models,
    register_model,
)
from metaprune.models.size import SpecSize, spec_size
from metaprune.models.spec import ArchSpec, SpecError

__all__ = [
    "ArchSpec",
    "ChannelPlan",
    "SpecError",
    "SpecSize",
    "UnknownModelError",
    "apply_channel_plan",
    "channel_plan_of",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    "spec_size",
    "structural_attrs",
]

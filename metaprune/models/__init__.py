"""Architectures metaprune can build: a registry, CIFAR ResNet/VGG, torchvision models, specs."""

from metaprune.models import (  # noqa: F401 (registers)
    cifar_resnet,
    cifar_vgg,
    timm_models,
    torchvision_models,
)
from metaprune.models.channel_plan import (
    ChannelPlan,
    apply_channel_plan,
    channel_plan_of,
    structural_attrs,
)
from metaprune.models.inputs import InputConfig, preferred_input
from metaprune.models.registry import (
    UnknownModelError,
    create_model,
    is_model,
    list_models,
    list_sources,
    register_model,
    set_enabled_sources,
)
from metaprune.models.size import SpecSize, spec_size
from metaprune.models.spec import ArchSpec, SpecError

__all__ = [
    "ArchSpec",
    "ChannelPlan",
    "InputConfig",
    "SpecError",
    "SpecSize",
    "UnknownModelError",
    "apply_channel_plan",
    "channel_plan_of",
    "create_model",
    "is_model",
    "list_models",
    "list_sources",
    "preferred_input",
    "register_model",
    "set_enabled_sources",
    "spec_size",
    "structural_attrs",
]

"""A spec's preferred input: the size and normalisation its architecture was made for.

Callers (the CLI, the service, a job) use it when the user did not say otherwise:
timm's ``pretrained_cfg`` (input size, mean, std; ``img_size`` / ``in_chans`` applied),
torchvision's default weights' transforms (crop size, mean, std; ``image_size`` and
``in_channels`` applied), nothing for the built-in CIFAR models (any size works).
"""

from __future__ import annotations

from metaprune.models.spec import ArchSpec
from metaprune.models.timm_models import PREFIX as TIMM_PREFIX
from metaprune.models.timm_models import InputConfig, timm_input
from metaprune.models.torchvision_models import PREFIX as TV_PREFIX

__all__ = ["InputConfig", "preferred_input"]


def preferred_input(spec: ArchSpec) -> InputConfig | None:
    """The input ``spec``'s architecture expects, or ``None`` where any size works.

    Raises:
        ValueError: if the architecture's source cannot say (e.g. timm is missing).
    """
    if spec.name.startswith(TIMM_PREFIX):
        return timm_input(spec.name[len(TIMM_PREFIX) :], spec.kwargs)
    if spec.name.startswith(TV_PREFIX):
        return _torchvision_input(spec.name[len(TV_PREFIX) :], spec.kwargs)
    return None


def _torchvision_input(name: str, kwargs: dict) -> InputConfig:
    import torchvision

    side, mean, std = 224, None, None
    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        side = int(transforms.crop_size[0])
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    except (ValueError, AttributeError, KeyError, TypeError):  # no weights entry: defaults
        pass
    side = int(kwargs.get("image_size", side))
    channels = int(kwargs.get("in_channels", 3))
    if channels != 3:
        mean = std = None
    return InputConfig((channels, side, side), mean, std)

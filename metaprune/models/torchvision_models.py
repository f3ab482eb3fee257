"""Every torchvision *classification* model, registered as ``torchvision/<name>``.

Models are always built with ``weights=None`` (nothing is downloaded); other kwargs
(``num_classes``, ``dropout``, ...) are passed to the torchvision builder unchanged.

``in_channels`` (default 3) is supported by replacing the *first* ``nn.Conv2d`` in
module order (the stem: ``conv1`` of ResNets, ``features.0.0`` of MobileNets,
``conv_proj`` of ViTs, ...) with a freshly Kaiming-initialised conv of the same
hyper-parameters and ``in_channels`` inputs. A :class:`ValueError` is raised where that
cannot be applied: no ``nn.Conv2d``, a stem that is grouped or does not take 3 channels,
or ``transform_input=True`` (GoogLeNet/Inception), which hard-codes RGB statistics.

GoogLeNet and Inception-v3 default to ``init_weights=True`` (torchvision's current
behaviour, without its deprecation warning).
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from metaprune.models.registry import register_model

__all__ = ["PREFIX", "replace_first_conv", "torchvision_model_names"]

PREFIX = "torchvision/"

_INIT_WEIGHTS_MODELS = frozenset({"googlenet", "inception_v3"})


def torchvision_model_names() -> list[str]:
    """torchvision's classification model names (no detection/segmentation/video/quantized)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def replace_first_conv(model: nn.Module, in_channels: int, model_name: str = "model") -> str:
    """Replace the first ``nn.Conv2d`` of ``model`` by one taking ``in_channels`` inputs.

    Returns:
        The module path of the replaced conv.

    Raises:
        ValueError: if the model has no ``nn.Conv2d`` or its first conv is grouped or does
            not take 3 input channels.
    """
    found = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ValueError(
            f"{model_name}: cannot apply in_channels={in_channels}, no nn.Conv2d found"
        )
    path, module = found
    if module.in_channels != 3 or module.groups != 1:
        raise ValueError(
            f"{model_name}: cannot apply in_channels={in_channels}: first conv {path!r} has "
            f"in_channels={module.in_channels}, groups={module.groups} (expected 3 and 1)"
        )
    new = nn.Conv2d(
        in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=1,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)
    return path


def _build(tv_name: str, *, in_channels: int = 3, **kwargs: object) -> nn.Module:
    name = PREFIX + tv_name
    if kwargs.pop("weights", None) is not None:
        raise ValueError(
            f"{name}: only weights=None is supported (pretrained weights are never downloaded)"
        )
    if tv_name in _INIT_WEIGHTS_MODELS:
        kwargs.setdefault("init_weights", True)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"{name}: in_channels must be a positive int (found {in_channels!r})")
    if in_channels != 3 and kwargs.get("transform_input"):
        raise ValueError(
            f"{name}: transform_input=True requires in_channels=3 (found {in_channels})"
        )
    model = torchvision.models.get_model(tv_name, weights=None, **kwargs)
    if in_channels != 3:
        replace_first_conv(model, in_channels, name)
    return model


def _make_factory(tv_name: str) -> Callable[..., nn.Module]:
    def factory(*, in_channels: int = 3, **kwargs: object) -> nn.Module:
        return _build(tv_name, in_channels=in_channels, **kwargs)

    factory.__name__ = factory.__qualname__ = tv_name
    factory.__doc__ = f"``torchvision.models.{tv_name}`` with ``weights=None`` (see module docs)."
    return factory


def _register_all() -> None:
    for tv_name in torchvision_model_names():
        register_model(PREFIX + tv_name)(_make_factory(tv_name))


_register_all()

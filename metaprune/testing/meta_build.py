"""The graph structure of a registered architecture without allocating its weights.

``registered_layer_table(name)`` builds the model with every parameter and buffer moved to
the **meta** device as it is registered (so RegNets, whose constructors compute widths
with real tensors, build too) and traces it on a meta input: the encoder's plan (node
sets, blocks, kernel sizes) depends only on shapes. All 86 registered architectures,
``vit_h_14`` and ``regnet_y_128gf`` included, take about 35 s on one core this way,
against many minutes and gigabytes at full size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

__all__ = ["input_side_of", "on_meta_device", "registered_layer_table"]


def _param_to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
    if param is None or param.device.type == "meta":
        return None
    return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


def _buffer_to_meta(module: nn.Module, name: str, buffer: Tensor | None) -> Tensor | None:
    if buffer is None or buffer.device.type == "meta":
        return None
    return buffer.to("meta")


@contextlib.contextmanager
def on_meta_device() -> Iterator[None]:
    """Every parameter and buffer registered inside is replaced by a meta tensor."""
    hooks = (
        register_module_parameter_registration_hook(_param_to_meta),
        register_module_buffer_registration_hook(_buffer_to_meta),
    )
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def input_side_of(name: str) -> int:
    """The input side used to trace a registered architecture (CIFAR models 32)."""
    from metaprune.testing.torchvision_sweep import input_side

    prefix = "torchvision/"
    return input_side(name[len(prefix) :]) if name.startswith(prefix) else 32


def registered_layer_table(name: str, num_classes: int = 10) -> Tensor:
    """The ``layer_table`` of registered architecture ``name`` (3 input channels), traced
    on the meta device (see module doc)."""
    from graph_encoding.encode import plan_for
    from metaprune.models import create_model

    with on_meta_device():
        model = create_model(name, num_classes=num_classes).eval()
    side = input_side_of(name)
    plan = plan_for(model, torch.empty(1, 3, side, side, device="meta"))
    return plan.layer_table.clone()

"""What pruning measures: MACs, parameters, per-layer widths, and the classifier to keep.

MACs and parameters come from Torch-Pruning's ``count_ops_and_params`` (multiply-
accumulates of one forward pass on the example inputs), run on a copy on the meta device:
the counts follow from shapes alone, so measuring a ResNet-50 at 224 after every pruning
step costs a traversal, not a forward pass (a model whose forward reads tensor values is
measured on real data). The paper's "speed-up" is base MACs / pruned MACs. The parameter ratio is defined the same way round (base /
pruned), so every target is a number ``>= 1`` that grows as the model shrinks.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["Cost", "find_classifier", "forget_cached_tensors", "layer_widths", "measure_cost", "meta_copy"]


@dataclasses.dataclass(frozen=True)
class Cost:
    """MACs of one forward pass on the example inputs, and the parameter count."""

    macs: int
    params: int


def forget_cached_tensors(model: nn.Module) -> None:
    """Empty the tensor caches some modules keep between eval passes (LeViT's and
    EfficientFormer's ``attention_bias_cache``): they go stale when the model is pruned,
    and a cache filled by a pass with autograd on holds non-leaf tensors, which
    ``copy.deepcopy`` refuses. The modules refill them on their next eval pass."""
    for module in model.modules():
        for name, value in vars(module).items():
            tensors = isinstance(value, dict) and all(isinstance(v, Tensor) for v in value.values())
            if "cache" in name and tensors and value:
                value.clear()


def measure_cost(model: nn.Module, example_inputs: Tensor | tuple[Tensor, ...]) -> Cost:
    """MACs and parameters of ``model`` (the model is not modified; it is copied)."""
    forget_cached_tensors(model)  # Torch-Pruning deep-copies the model
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        meta = meta_copy(model)
        macs, params = tp.utils.count_ops_and_params(meta, tuple(x.to("meta") for x in inputs))
    except Exception:  # noqa: BLE001 (an op without a meta kernel, a value read): real data
        was_training = model.training
        try:
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
        finally:
            model.train(was_training)
    return Cost(macs=int(macs), params=int(params))


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with its parameters and buffers on the meta device."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv (``out_channels``), linear (``out_features``) and
    attention (``embed_dim``) layer, keyed by module path; the report's per-layer view."""
    widths: dict[str, int] = {}
    for path, module in model.named_modules():
        if isinstance(module, _ConvNd):
            widths[path] = int(module.out_channels)
        elif isinstance(module, nn.Linear):
            widths[path] = int(module.out_features)
        elif isinstance(module, nn.MultiheadAttention):
            widths[path] = int(module.embed_dim)
    return widths


def find_classifier(model: nn.Module, example_inputs: Tensor | tuple[Tensor, ...]) -> nn.Module:
    """The layer that produces the network's output (its outputs must never be pruned).

    Found by running the model once with hooks on every conv/linear layer: the last one
    called whose output has the shape of the model's output (else, for a model pooling
    a conv classifier's maps, the last conv with as many channels as the output).

    Raises:
        ValueError: if no conv/linear layer produces an output of that shape.
    """
    calls: list[tuple[nn.Module, torch.Size]] = []
    hooks = [
        m.register_forward_hook(
            lambda mod, _inp, out: (
                calls.append((mod, out.shape)) if isinstance(out, Tensor) else None
            )
        )
        for m in model.modules()
        if isinstance(m, (_ConvNd, nn.Linear))
    ]
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = model(*inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if not isinstance(output, Tensor):
        raise ValueError(
            f"{type(model).__name__} returns {type(output).__name__}; pruning needs a model "
            "that returns one logits tensor"
        )
    for module, shape in reversed(calls):
        if shape == output.shape:
            return module
    for module, shape in reversed(calls):  # a conv classifier pooled afterwards (SqueezeNet)
        if output.dim() == 2 and len(shape) > 2 and shape[:2] == output.shape:
            return module
    raise ValueError(
        f"cannot find the classifier of {type(model).__name__}: no conv/linear layer outputs "
        f"the model's output shape {tuple(output.shape)}; pass ignored_layers explicitly"
    )

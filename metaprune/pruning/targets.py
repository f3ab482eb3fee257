"""What pruning measures: MACs, parameters, per-layer widths, and the classifier to keep.

MACs and parameters are Torch-Pruning's ``count_ops_and_params`` (multiply-accumulates
of one forward pass on the example inputs, by its per-module-type hooks), counted on a copy
on the meta device: the counts follow from shapes alone, so measuring a ResNet-50 at 224
after every pruning step costs a traversal, not a forward pass. The traversal calls
Torch-Pruning's own hooks, but layers whose output shape is known without running them
(normalisations, activations, dropout, ``nn.MultiheadAttention`` without weights) return
a tensor of that shape: on the meta device their forwards are Python decompositions, and
with Torch-Pruning's own deep copy they were most of a count (ResNet-50 at 224: 0.131 CPU s
a count before, 0.025 now; benchmarks/RESULTS.md, issue 18). A model whose forward reads
tensor values is measured on real data by Torch-Pruning's counter itself.

The paper's "speed-up" is base MACs / pruned MACs. The parameter ratio is defined the same
way round (base / pruned), so every target is a number ``>= 1`` that grows as the model
shrinks.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd
from torch_pruning.utils import op_counter

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
    """MACs and parameters of ``model`` (the model is not modified; it is copied).

    Equal to ``torch_pruning.utils.count_ops_and_params(model, example_inputs)``."""
    forget_cached_tensors(model)  # the copies are deep copies
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        macs = _count_on_meta(model, tuple(x.to("meta") for x in inputs))
        params = sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 (an op without a meta kernel, a value read): real data
        was_training = model.training
        try:
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
        finally:
            model.train(was_training)
    return Cost(macs=int(macs), params=int(params))


#: leaf layers whose output has their input's shape whatever their weights: on the meta
#: device their forward only costs time (normalisations run through Python decompositions)
_SAME_SHAPE = (
    nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)  # fmt: skip
_NORMS = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _shape_only(module: nn.Module) -> Callable[..., Any] | None:
    """A forward giving ``module``'s output shape without computing it, or ``None``.

    Activations, dropout and ``nn.Linear`` by exact type (a subclass may reshape; Torch-
    Pruning's linear hook reads only shapes); normalisation layers
    by ``isinstance`` (subclasses such as a channels-first ``LayerNorm2d`` keep the shape),
    but only leaves: a layer with children (timm's ``BatchNormAct2d``) calls them, and
    Torch-Pruning counts what they do."""
    if type(module) is nn.MultiheadAttention:  # exact type, as Torch-Pruning's hook
        return functools.partial(_attention_shape, module)
    if type(module) is nn.Linear:  # exact type, as Torch-Pruning's hook
        return functools.partial(_linear_shape, module)
    if next(module.children(), None) is not None:
        return None
    if type(module) in _SAME_SHAPE or isinstance(module, _NORMS):
        return _same_shape
    return None


def _same_shape(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return x


def _linear_shape(module: nn.Linear, x: Tensor) -> Tensor:
    """``nn.Linear``'s output: its input's shape with the weight's rows as the last axis
    (on the meta device ``F.linear`` of a 3-d input runs Python decompositions: most of a
    ViT-B/16 count). A width mismatch raises, as the real layer would."""
    out_features, in_features = module.weight.shape
    if x.shape[-1:] != (in_features,):
        raise ValueError(f"linear layer of {in_features} inputs got shape {tuple(x.shape)}")
    return x.new_empty((*x.shape[:-1], out_features))


def _attention_shape(module: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                     *args: Any, need_weights: bool = True, **kwargs: Any) -> Any:  # fmt: skip
    """``nn.MultiheadAttention``'s output: the query's shape with the output projection's
    width (its forward never calls ``out_proj`` as a module, so no hook is skipped); with
    ``need_weights`` the real forward (the weights' shape depends on more options)."""
    if need_weights:
        return nn.MultiheadAttention.forward(module, query, key, value, *args, need_weights=True, **kwargs)
    width = module.out_proj.weight.shape[0]
    return query.new_empty((*query.shape[:-1], width)), None


def _count_on_meta(model: nn.Module, inputs: tuple[Tensor, ...]) -> float:
    """Torch-Pruning's MACs count of ``model`` on ``inputs`` (on the meta device), on a
    meta copy: its per-type hooks on the layers it knows, called on every call of each
    (a known layer's children are its own business, as in Torch-Pruning), divided by the
    batch size."""
    meta = meta_copy(model).eval()
    total = [0]

    def count(hook: Callable[..., None], module: nn.Module, args: Any, output: Any) -> None:
        module.__flops__ = 0
        hook(module, args, output)
        total[0] += module.__flops__

    def visit(module: nn.Module) -> None:
        hook = op_counter.MODULES_MAPPING.get(type(module))
        if hook is not None:
            module.register_forward_hook(functools.partial(count, hook))
        shape = _shape_only(module)
        if shape is not None:
            module.forward = shape  # the copy's own (an instance attribute)
        if hook is None:
            for child in module.children():
                visit(child)

    visit(meta)
    with torch.no_grad():
        meta(*inputs)
    return total[0] / len(inputs[0])


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

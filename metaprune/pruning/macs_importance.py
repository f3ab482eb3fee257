"""Importance per MAC: a criterion's scores divided by what each channel costs.

A global ranking by magnitude (or by loss change) removes the channels that matter
least, whatever they cost. For a MACs target that is the wrong exchange rate: in a
``cifar_vgg19_bn`` on 8x8 images every layer costs about the same MACs, so a channel of
a 16-wide first-stage layer costs ~8x the MACs of one of a 128-wide late layer, and a
MACs-blind ranking removes half of every late layer and none of the early ones to reach
2x. Dividing a channel's score by the MACs its removal saves ranks channels by
importance per unit of cost, the greedy answer to the knapsack the target poses (as in
resource-aware pruning, e.g. Shen et al., HALP, NeurIPS 2022).

The cost of a channel of a Torch-Pruning group is the MACs of every conv/linear slice
the group removes with it: its output slice (``in / groups * kh * kw`` per output
position) and its input slice in each consumer (``out / groups * kh * kw`` per
position), at the layers' **current** widths, so the exchange rate follows the network
as it shrinks. Output positions (``H * W`` of a conv, tokens of a linear) do not change
when channels are removed: they are recorded once, on one input, at construction.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import Tensor, nn

__all__ = ["MacsAwareImportance"]

_fn = tp.pruner.function
_OUT = (_fn.prune_conv_out_channels, _fn.prune_linear_out_channels,
        _fn.prune_depthwise_conv_out_channels)  # fmt: skip
_IN = (_fn.prune_conv_in_channels, _fn.prune_linear_in_channels,
       _fn.prune_depthwise_conv_in_channels)  # fmt: skip


class MacsAwareImportance(tp.importance.Importance):
    """``base``'s scores for a group divided by ``cost ** alpha``, ``cost`` the MACs one
    channel of the group accounts for.

    Args:
        base: the criterion (its normaliser has already been applied to its scores).
        model: the model that will be pruned (its output positions are recorded now).
        example: one input batch of the model's shape.
        alpha: the exponent of the cost (1: score per MAC; 0: ``base`` unchanged).
    """

    def __init__(
        self, base: tp.importance.Importance, model: nn.Module, example: Tensor, alpha: float = 1.0
    ) -> None:
        self.base, self.alpha = base, float(alpha)
        self.positions = _output_positions(model, example)

    def __call__(self, group: tp.dependency.Group) -> Tensor | None:
        scores = self.base(group)
        if scores is None:
            return None
        cost = self.channel_cost(group)
        return scores / cost**self.alpha if cost > 0 else scores

    def channel_cost(self, group: tp.dependency.Group) -> float:
        """MACs removed with one channel of ``group`` (every conv/linear slice it owns)."""
        total = 0.0
        for dep, _ in group:
            layer, fn = dep.layer, dep.pruning_fn
            positions = self.positions.get(layer)
            if positions is None or not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            weight = layer.weight
            kernel = weight[0, 0].numel() if weight.dim() > 2 else 1
            groups = getattr(layer, "groups", 1)
            if fn in _OUT:  # one output channel: its whole filter, at every position
                total += weight[0].numel() * positions
            elif fn in _IN:  # one input channel: its slice of every filter that reads it
                total += weight.shape[0] // max(groups, 1) * kernel * positions
        return total


@torch.no_grad()
def _output_positions(model: nn.Module, example: Tensor) -> dict[nn.Module, float]:
    """Output positions per conv/linear layer (``H * W``, tokens), from one forward pass."""
    positions: dict[nn.Module, float] = {}

    def hook(module: nn.Module, _: tuple, out: Tensor) -> None:
        if isinstance(out, Tensor) and out.dim() >= 2:
            positions[module] = out.numel() / (out.shape[0] * module.weight.shape[0])

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return positions

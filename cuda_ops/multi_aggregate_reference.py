"""Pure-torch reference of ``metaprune::multi_aggregate`` (see
:mod:`cuda_ops.multi_aggregate_op`): :func:`multi_aggregate_reference` is plain
differentiable torch (autograd through it is the tests' ground truth),
:func:`multi_aggregate_backward_reference` the explicit gradient the C++ kernel computes
(an op's implementation cannot call autograd)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["multi_aggregate_reference", "multi_aggregate_backward_reference", "STD_EPS"]

STD_EPS = 1e-5  # the clamp of PyG's StdAggregation


def multi_aggregate_reference(
    stats: Tensor, counts: Tensor, factor: Tensor, eps: float = STD_EPS
) -> Tensor:
    """``[mean, std, max, min]`` (``[M, 4h]``) of the messages ``factor_m * y`` from the
    statistics ``[sum, sum of squares, max, -min]`` of ``y`` (``[M, 4, h]``) over
    ``counts`` (``[M]``) messages per row."""
    total, squares, hi, neg_lo = stats.unbind(-2)
    lo = -neg_lo
    n = counts.clamp(min=1).unsqueeze(-1)
    mean_y = total / n
    var_y = squares / n - mean_y * mean_y
    mean = factor * mean_y
    # PyG's std: var clamped at eps before the sqrt, then values at the floor set to 0; the
    # factor enters before the clamp so that the clamp sees the message variance.
    std = (factor * factor * var_y).clamp(min=eps).sqrt()
    std = std.masked_fill(std <= math.sqrt(eps), 0.0)
    positive = factor >= 0
    top, bottom = factor * hi, factor * lo
    return torch.cat(
        [mean, std, torch.where(positive, top, bottom), torch.where(positive, bottom, top)], dim=-1
    )


def multi_aggregate_backward_reference(
    stats: Tensor, counts: Tensor, factor: Tensor, grad: Tensor, eps: float = STD_EPS
) -> tuple[Tensor, Tensor]:
    """``(d stats, d factor)`` of :func:`multi_aggregate_reference` given ``grad``
    (``[M, 4h]``)."""
    total, squares, hi, neg_lo = stats.unbind(-2)
    g_mean, g_std, g_max, g_min = grad.view_as(stats).unbind(-2)
    n = counts.clamp(min=1).unsqueeze(-1)
    mean_y = total / n
    var_y = squares / n - mean_y * mean_y
    v = factor * factor * var_y
    std = v.clamp(min=eps).sqrt()
    # clamp passes the gradient where v >= eps; the floor mask removes it where std <= floor
    g_v = torch.where((v >= eps) & (std > math.sqrt(eps)), g_std * 0.5 / std, 0.0)
    g_var = g_v * (factor * factor)
    positive = factor >= 0
    g_hi_f = torch.where(positive, g_max, g_min)  # what reaches factor * hi
    g_lo_f = torch.where(positive, g_min, g_max)  # ... and factor * lo
    d_stats = torch.stack(
        [
            (g_mean * factor - 2 * mean_y * g_var) / n,
            g_var / n,
            g_hi_f * factor,
            -(g_lo_f * factor),
        ],
        dim=-2,
    )
    d_factor = g_mean * mean_y + g_v * (2 * factor * var_y) + g_hi_f * hi - g_lo_f * neg_lo
    return d_stats, d_factor

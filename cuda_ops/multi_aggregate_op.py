"""``metaprune::multi_aggregate``: PyG's ``aggr=["mean", "std", "max", "min"]`` of messages
``factor_i * y_ij`` computed from per-node statistics of ``y``.

The metanetwork's messages are ``z_i * x_j * e_ij``: the receiver's factor ``z_i`` is
pulled out of the edge reductions (:func:`cuda_ops.meta_blocks` returns the statistics
``[sum, sum of squares, max, -min]`` of ``y = x_j * e_ij`` per node), and this op puts it
back: ``mean = z * s / n``, ``std = sqrt(max(z^2 var(y), eps))`` (0 at the floor, as PyG's
``StdAggregation``), and ``max``/``min`` = ``z * max y`` / ``z * min y``, swapped where
``z < 0``. Rows with no messages (``n = 0``) must carry zero statistics and give 0.

One elementwise pass forward and one backward, instead of about 20 torch ops each way: in
C++ on CPU (``cpu/multi_aggregate.cpp``), in Triton on CUDA
(:mod:`cuda_ops.triton_multi_aggregate`); the pure-torch reference
(:mod:`cuda_ops.multi_aggregate_reference`) for anything else or when forced. First-order
autograd through ``metaprune::multi_aggregate_backward`` (no double backward).
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor

from . import dispatch
from .dispatch import SUFFIX, kernel_library, ptr, use_triton
from .multi_aggregate_reference import (
    STD_EPS,
    multi_aggregate_backward_reference,
    multi_aggregate_reference,
)

__all__ = ["multi_aggregate", "native_available", "STD_EPS"]

_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_SIGNATURES = {
    "multi_aggregate_forward": [_P] * 3 + [_I] * 2 + [_D] * 2 + [_P],
    "multi_aggregate_backward": [_P] * 4 + [_I] * 2 + [_D] * 2 + [_P] * 2,
}


def native_available() -> bool:
    """Whether the C++ kernel of ``multi_aggregate`` is built and loaded."""
    return dispatch.native_available("multi_aggregate", _SIGNATURES)


def _check(stats: Tensor, counts: Tensor, factor: Tensor) -> None:
    m, hidden = factor.shape if factor.dim() == 2 else (-1, -1)
    if stats.shape != (m, 4, hidden) or counts.shape != (m,):
        raise ValueError(
            f"multi_aggregate: expected stats [M, 4, h], counts [M] and factor [M, h], found "
            f"{list(stats.shape)}, {list(counts.shape)} and {list(factor.shape)}"
        )
    if not (stats.dtype == counts.dtype == factor.dtype):
        raise ValueError(
            f"multi_aggregate: stats, counts and factor must share a dtype, found "
            f"{stats.dtype}, {counts.dtype}, {factor.dtype}"
        )


@torch.library.custom_op("metaprune::multi_aggregate", mutates_args=())
def _multi_aggregate(stats: Tensor, counts: Tensor, factor: Tensor, eps: float) -> Tensor:
    _check(stats, counts, factor)
    stats, counts, factor = stats.contiguous(), counts.contiguous(), factor.contiguous()
    if use_triton(stats.device.type, stats.dtype):
        from .triton_multi_aggregate import forward_triton

        return forward_triton(stats, counts, factor, eps)
    lib = kernel_library("multi_aggregate", _SIGNATURES, stats)
    if lib is None:
        return multi_aggregate_reference(stats, counts, factor, eps)
    m, hidden = factor.shape
    out = factor.new_empty(m, 4 * hidden)
    getattr(lib, f"multi_aggregate_forward_{SUFFIX[stats.dtype]}")(
        ptr(stats), ptr(counts), ptr(factor), m, hidden, eps, math.sqrt(eps), ptr(out)
    )
    return out


@_multi_aggregate.register_fake
def _(stats: Tensor, counts: Tensor, factor: Tensor, eps: float) -> Tensor:
    return factor.new_empty(factor.size(0), 4 * factor.size(1))


@torch.library.custom_op("metaprune::multi_aggregate_backward", mutates_args=())
def _multi_aggregate_backward(
    stats: Tensor, counts: Tensor, factor: Tensor, grad: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    _check(stats, counts, factor)
    if grad.shape != (factor.size(0), 4 * factor.size(1)) or grad.dtype != factor.dtype:
        raise ValueError(
            f"multi_aggregate_backward: expected grad [{factor.size(0)}, {4 * factor.size(1)}] "
            f"{factor.dtype}, found {list(grad.shape)} {grad.dtype}"
        )
    args = [t.contiguous() for t in (stats, counts, factor, grad)]
    stats, counts, factor, grad = args
    if use_triton(stats.device.type, stats.dtype):
        from .triton_multi_aggregate import backward_triton

        return backward_triton(*args, eps)
    lib = kernel_library("multi_aggregate", _SIGNATURES, stats)
    if lib is None:
        return multi_aggregate_backward_reference(*args, eps)
    m, hidden = factor.shape
    d_stats, d_factor = torch.empty_like(stats), torch.empty_like(factor)
    getattr(lib, f"multi_aggregate_backward_{SUFFIX[stats.dtype]}")(
        *(ptr(t) for t in args), m, hidden, eps, math.sqrt(eps), ptr(d_stats), ptr(d_factor)
    )
    return d_stats, d_factor


@_multi_aggregate_backward.register_fake
def _(stats: Tensor, counts: Tensor, factor: Tensor, grad: Tensor, eps: float):  # noqa: ANN202
    return torch.empty_like(stats), torch.empty_like(factor)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    stats, counts, factor, eps = inputs
    ctx.save_for_backward(stats, counts, factor)
    ctx.eps = eps


def _backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    stats, counts, factor = ctx.saved_tensors
    d_stats, d_factor = _multi_aggregate_backward(stats, counts, factor, grad, ctx.eps)
    return d_stats, None, d_factor, None


_multi_aggregate.register_autograd(_backward, setup_context=_setup_context)


def multi_aggregate(stats: Tensor, counts: Tensor, factor: Tensor, eps: float = STD_EPS) -> Tensor:
    """``[mean, std, max, min]`` (``[..., 4h]``) of the messages ``factor * y`` from the
    statistics ``[sum, sum of squares, max, -min]`` of ``y`` (``[..., 4, h]``) and message
    ``counts`` (``[...]``, any dtype). Differentiable in ``stats`` and ``factor``."""
    lead, hidden = factor.shape[:-1], factor.size(-1)
    if stats.shape != (*lead, 4, hidden) or counts.shape not in (lead, (*lead, 1)):
        raise ValueError(
            f"multi_aggregate: expected stats [..., 4, h], counts [...] or [..., 1] and factor "
            f"[..., h], found {list(stats.shape)}, {list(counts.shape)} and {list(factor.shape)}"
        )
    out = _multi_aggregate(
        stats.reshape(-1, 4, hidden),
        counts.reshape(-1).to(factor.device, factor.dtype),
        factor.reshape(-1, hidden),
        float(eps),
    )
    return out.view(*lead, 4 * hidden)

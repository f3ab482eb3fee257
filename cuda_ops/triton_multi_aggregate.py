"""Triton kernels of ``metaprune::multi_aggregate`` for CUDA tensors: one elementwise pass
each way over ``(row, channel)``, the formulas of ``cpu/multi_aggregate.cpp`` (tests run
them under ``TRITON_INTERPRET=1``)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["forward_triton", "backward_triton"]

BLOCK = 256


@triton.jit
def _moments(stats, counts, factor, row, c, m, H):
    """Per element: factor, mean and variance of y, the clamped message variance, max, -min."""
    n = tl.maximum(tl.load(counts + row, mask=m, other=1.0), 1.0)
    base = stats + row * 4 * H + c
    f = tl.load(factor + row * H + c, mask=m, other=0.0)
    mean_y = tl.load(base, mask=m, other=0.0) / n
    var_y = tl.load(base + H, mask=m, other=0.0) / n - mean_y * mean_y
    hi = tl.load(base + 2 * H, mask=m, other=0.0)
    neg = tl.load(base + 3 * H, mask=m, other=0.0)
    return n, f, mean_y, var_y, f * f * var_y, hi, neg


@triton.jit
def _forward_kernel(stats, counts, factor, out, M, H, eps, floor, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < M * H
    row, c = i // H, i % H
    n, f, mean_y, var_y, v, hi, neg = _moments(stats, counts, factor, row, c, m, H)
    sd = tl.sqrt(tl.maximum(v, eps))
    top, bottom = f * hi, f * -neg
    o = out + row * 4 * H + c
    tl.store(o, f * mean_y, mask=m)
    tl.store(o + H, tl.where(sd <= floor, 0.0, sd), mask=m)
    tl.store(o + 2 * H, tl.where(f >= 0, top, bottom), mask=m)
    tl.store(o + 3 * H, tl.where(f >= 0, bottom, top), mask=m)


@triton.jit
def _backward_kernel(
    stats, counts, factor, grad, d_stats, d_factor, M, H, eps, floor, BLOCK: tl.constexpr
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < M * H
    row, c = i // H, i % H
    n, f, mean_y, var_y, v, hi, neg = _moments(stats, counts, factor, row, c, m, H)
    sd = tl.sqrt(tl.maximum(v, eps))
    g = grad + row * 4 * H + c
    g_mean = tl.load(g, mask=m, other=0.0)
    g_std = tl.load(g + H, mask=m, other=0.0)
    g_max = tl.load(g + 2 * H, mask=m, other=0.0)
    g_min = tl.load(g + 3 * H, mask=m, other=0.0)
    g_v = tl.where((v >= eps) & (sd > floor), g_std * 0.5 / sd, 0.0)
    g_var = g_v * (f * f)
    pos = f >= 0
    g_hi_f = tl.where(pos, g_max, g_min)
    g_lo_f = tl.where(pos, g_min, g_max)
    d = d_stats + row * 4 * H + c
    tl.store(d, (g_mean * f - 2.0 * mean_y * g_var) / n, mask=m)
    tl.store(d + H, g_var / n, mask=m)
    tl.store(d + 2 * H, g_hi_f * f, mask=m)
    tl.store(d + 3 * H, -(g_lo_f * f), mask=m)
    d_f = g_mean * mean_y + g_v * (2.0 * f * var_y) + g_hi_f * hi - g_lo_f * neg
    tl.store(d_factor + row * H + c, d_f, mask=m)


def forward_triton(stats: Tensor, counts: Tensor, factor: Tensor, eps: float) -> Tensor:
    """``[M, 4h]`` from contiguous ``stats [M, 4, h]``, ``counts [M]``, ``factor [M, h]``."""
    m, hidden = factor.shape
    out = factor.new_empty(m, 4 * hidden)
    if m * hidden:
        _forward_kernel[(triton.cdiv(m * hidden, BLOCK),)](
            stats, counts, factor, out, m, hidden, eps, math.sqrt(eps), BLOCK=BLOCK
        )
    return out


def backward_triton(
    stats: Tensor, counts: Tensor, factor: Tensor, grad: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """``(d stats, d factor)`` for contiguous inputs."""
    m, hidden = factor.shape
    d_stats, d_factor = torch.empty_like(stats), torch.empty_like(factor)
    if m * hidden:
        _backward_kernel[(triton.cdiv(m * hidden, BLOCK),)](
            stats, counts, factor, grad, d_stats, d_factor, m, hidden, eps, math.sqrt(eps),
            BLOCK=BLOCK,
        )  # fmt: skip
    return d_stats, d_factor

"""Triton kernels of ``metaprune::meta_blocks`` for CUDA tensors.

The op is symmetric in its two directions, so every kernel is one "walker": a program
owns one receiving node ``K`` and a ``BLOCK_H`` slice of channels, and walks that node's
edges ``E0 + t * stride`` from the sending nodes ``S0 + t`` (``t < length``). Rows walk
along the edges (``K`` an output node, ``stride = 1``), columns along the flipped edges
(``K`` an input node, ``stride = in / groups``). Nodes written by several blocks (a conv and
an identity residual) are combined with atomics. The C++ kernel in ``cpu/`` computes the
same thing on CPU; tests run these under ``TRITON_INTERPRET=1``.

Forward: the statistics of ``y = e * x_S`` at ``K`` (rows also write ``e_new``). Backward:
tie counts, then per edge ``dy`` (this direction, stats at ``K``) and ``dy2`` (the other
direction, message ``e * x_K``, stats at ``S``); rows write ``d e``, and each walker
reduces its receiver's factor gradients ``d x_K = sum dy2 * e``, ``d a_K = sum g_e e b_S``,
``d b_K = sum g_e e a_S``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .meta_blocks_reference import scaled_grads

__all__ = ["forward_triton", "backward_triton"]

BLOCK_T = 16


def _walkers(table: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(K, S0, E0, stride, length)`` per row and per column of every block."""
    edge, out, out_size, inp, in_size, groups = table.unbind(1)
    in_g, out_g = in_size // groups, out_size // groups
    # rows: output node out + r of group r // out_g reads inputs in + g * in_g + t
    b = torch.repeat_interleave(torch.arange(len(table), device=table.device), out_size)
    r = torch.arange(len(b), device=table.device) - torch.repeat_interleave(
        torch.cumsum(out_size, 0) - out_size, out_size
    )
    rows = (
        out[b] + r,
        inp[b] + (r // out_g[b]) * in_g[b],
        edge[b] + r * in_g[b],
        torch.ones_like(r),
        in_g[b],
    )
    # columns: input node in + j (group g = j // in_g, column i) is read by outputs out + g * out_g + t
    b = torch.repeat_interleave(torch.arange(len(table), device=table.device), in_size)
    j = torch.arange(len(b), device=table.device) - torch.repeat_interleave(
        torch.cumsum(in_size, 0) - in_size, in_size
    )
    g, i = j // in_g[b], j % in_g[b]
    cols = (
        inp[b] + j,
        out[b] + g * out_g[b],
        edge[b] + g * out_g[b] * in_g[b] + i,
        in_g[b],
        out_g[b],
    )
    return rows, cols


@triton.jit
def _walker(K, S0, E0, STRIDE, LENGTH, H, BLOCK_H: tl.constexpr):
    """This program's channels (and their mask), receiver, first sender, first edge, edge
    stride and edge count."""
    w = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    k, s0, e0 = tl.load(K + w), tl.load(S0 + w), tl.load(E0 + w)
    return c, c < H, k, s0, e0, tl.load(STRIDE + w), tl.load(LENGTH + w)


@triton.jit
def _factors(xab, k, c, cm, H):
    """``x``, ``a``, ``b`` of node ``k`` on channels ``c``."""
    row = xab + k * 3 * H + c
    x = tl.load(row, mask=cm, other=0.0)
    return x, tl.load(row + H, mask=cm, other=0.0), tl.load(row + 2 * H, mask=cm, other=0.0)


@triton.jit
def _stats_kernel(
    e, xab, stats, e_new, K, S0, E0, STRIDE, LENGTH, H,
    WRITE_E: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    c, cm, k, s0, e0, stride, length = _walker(K, S0, E0, STRIDE, LENGTH, H, BLOCK_H)
    xk, ak, bk = _factors(xab, k, c, cm, H)
    acc_s = tl.zeros([BLOCK_H], dtype=xk.dtype)
    acc_q = tl.zeros([BLOCK_H], dtype=xk.dtype)
    acc_m = tl.full([BLOCK_H], float("-inf"), dtype=xk.dtype)
    acc_n = tl.full([BLOCK_H], float("-inf"), dtype=xk.dtype)
    for t0 in range(0, length, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        m = (t < length)[:, None] & cm[None, :]
        edges = (e0 + t * stride)[:, None] * H + c[None, :]
        senders = (s0 + t)[:, None] * 3 * H + c[None, :]
        v = tl.load(e + edges, mask=m, other=0.0)
        y = v * tl.load(xab + senders, mask=m, other=0.0)
        acc_s += tl.sum(y, axis=0)
        acc_q += tl.sum(y * y, axis=0)
        acc_m = tl.maximum(acc_m, tl.max(tl.where(m, y, float("-inf")), axis=0))
        acc_n = tl.maximum(acc_n, tl.max(tl.where(m, -y, float("-inf")), axis=0))
        if WRITE_E:
            a_s = tl.load(xab + senders + H, mask=m, other=0.0)
            b_s = tl.load(xab + senders + 2 * H, mask=m, other=0.0)
            tl.store(e_new + edges, v + v * (a_s * bk[None, :] + ak[None, :] * b_s), mask=m)
    base = stats + k * 4 * H + c
    tl.atomic_add(base, acc_s, mask=cm)
    tl.atomic_add(base + H, acc_q, mask=cm)
    tl.atomic_max(base + 2 * H, acc_m, mask=cm)
    tl.atomic_max(base + 3 * H, acc_n, mask=cm)


@triton.jit
def _ties_kernel(
    e, xab, stats, ties, K, S0, E0, STRIDE, LENGTH, H,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    c, cm, k, s0, e0, stride, length = _walker(K, S0, E0, STRIDE, LENGTH, H, BLOCK_H)
    hi = tl.load(stats + k * 4 * H + 2 * H + c, mask=cm, other=0.0)
    neg = tl.load(stats + k * 4 * H + 3 * H + c, mask=cm, other=0.0)
    n_hi = tl.zeros([BLOCK_H], dtype=hi.dtype)
    n_lo = tl.zeros([BLOCK_H], dtype=hi.dtype)
    for t0 in range(0, length, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        m = (t < length)[:, None] & cm[None, :]
        v = tl.load(e + (e0 + t * stride)[:, None] * H + c[None, :], mask=m, other=0.0)
        y = v * tl.load(xab + (s0 + t)[:, None] * 3 * H + c[None, :], mask=m, other=0.0)
        n_hi += tl.sum(tl.where(m & (y == hi[None, :]), 1.0, 0.0), axis=0).to(hi.dtype)
        n_lo += tl.sum(tl.where(m & (-y == neg[None, :]), 1.0, 0.0), axis=0).to(hi.dtype)
    tl.atomic_add(ties + k * 2 * H + c, n_hi, mask=cm)
    tl.atomic_add(ties + k * 2 * H + H + c, n_lo, mask=cm)


@triton.jit
def _grad_kernel(
    e, xab, stats_k, stats_s, scaled_k, scaled_s, g_e, de, dxab, K, S0, E0, STRIDE, LENGTH, H,
    WRITE_DE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    c, cm, k, s0, e0, stride, length = _walker(K, S0, E0, STRIDE, LENGTH, H, BLOCK_H)
    xk, ak, bk = _factors(xab, k, c, cm, H)
    sk = scaled_k + k * 4 * H + c
    g0, g1 = tl.load(sk, mask=cm, other=0.0), tl.load(sk + H, mask=cm, other=0.0)
    g2, g3 = tl.load(sk + 2 * H, mask=cm, other=0.0), tl.load(sk + 3 * H, mask=cm, other=0.0)
    hi = tl.load(stats_k + k * 4 * H + 2 * H + c, mask=cm, other=0.0)
    neg = tl.load(stats_k + k * 4 * H + 3 * H + c, mask=cm, other=0.0)
    d_x = tl.zeros([BLOCK_H], dtype=xk.dtype)
    d_a = tl.zeros([BLOCK_H], dtype=xk.dtype)
    d_b = tl.zeros([BLOCK_H], dtype=xk.dtype)
    for t0 in range(0, length, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        m = (t < length)[:, None] & cm[None, :]
        s = s0 + t
        edges = (e0 + t * stride)[:, None] * H + c[None, :]
        node_s = s[:, None] * 3 * H + c[None, :]
        v = tl.load(e + edges, mask=m, other=0.0)
        xs = tl.load(xab + node_s, mask=m, other=0.0)
        a_s = tl.load(xab + node_s + H, mask=m, other=0.0)
        b_s = tl.load(xab + node_s + 2 * H, mask=m, other=0.0)
        y, y2 = v * xs, v * xk[None, :]
        dy = g0[None, :] + y * g1[None, :]
        dy += tl.where(y == hi[None, :], g2[None, :], 0.0) - tl.where(
            -y == neg[None, :], g3[None, :], 0.0
        )
        stat_s = s[:, None] * 4 * H + c[None, :]
        h0 = tl.load(scaled_s + stat_s, mask=m, other=0.0)
        h1 = tl.load(scaled_s + stat_s + H, mask=m, other=0.0)
        h2 = tl.load(scaled_s + stat_s + 2 * H, mask=m, other=0.0)
        h3 = tl.load(scaled_s + stat_s + 3 * H, mask=m, other=0.0)
        hi2 = tl.load(stats_s + stat_s + 2 * H, mask=m, other=0.0)
        neg2 = tl.load(stats_s + stat_s + 3 * H, mask=m, other=0.0)
        dy2 = h0 + y2 * h1 + tl.where(y2 == hi2, h2, 0.0) - tl.where(-y2 == neg2, h3, 0.0)
        ge = tl.load(g_e + edges, mask=m, other=0.0)
        gv = ge * v
        if WRITE_DE:
            coef = 1.0 + (a_s * bk[None, :] + ak[None, :] * b_s)
            tl.store(de + edges, dy * xs + dy2 * xk[None, :] + ge * coef, mask=m)
        d_x += tl.sum(tl.where(m, dy2 * v, 0.0), axis=0)
        d_a += tl.sum(tl.where(m, gv * b_s, 0.0), axis=0)
        d_b += tl.sum(tl.where(m, gv * a_s, 0.0), axis=0)
    base = dxab + k * 3 * H + c
    tl.atomic_add(base, d_x, mask=cm)
    tl.atomic_add(base + H, d_a, mask=cm)
    tl.atomic_add(base + 2 * H, d_b, mask=cm)


def _grid(walker: tuple[Tensor, ...], hidden: int, block_h: int) -> tuple[int, int]:
    return (walker[0].numel(), triton.cdiv(hidden, block_h))


def _block_h(hidden: int) -> int:
    return min(64, triton.next_power_of_2(hidden))


def _touched(walker: tuple[Tensor, ...], n: int, like: Tensor) -> Tensor:
    return torch.zeros(n, 1, 1, dtype=torch.bool, device=like.device).index_fill_(
        0, walker[0], True
    )


def forward_triton(e: Tensor, xab: Tensor, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(fwd, rev, e_new)`` of :func:`cuda_ops.meta_blocks` (contiguous inputs)."""
    n, hidden, table = xab.size(0), e.size(1), table.to(e.device)
    empty = torch.tensor([0.0, 0.0, -torch.inf, -torch.inf], dtype=e.dtype, device=e.device)
    fwd = empty.view(1, 4, 1).repeat(n, 1, hidden)
    rev = fwd.clone()
    e_new = torch.empty_like(e)
    rows, cols = _walkers(table)
    bh = _block_h(hidden)
    if rows[0].numel():
        _stats_kernel[_grid(rows, hidden, bh)](
            e, xab, fwd, e_new, *rows, hidden, WRITE_E=True, BLOCK_T=BLOCK_T, BLOCK_H=bh
        )
        _stats_kernel[_grid(cols, hidden, bh)](
            e, xab, rev, e_new, *cols, hidden, WRITE_E=False, BLOCK_T=BLOCK_T, BLOCK_H=bh
        )
    fwd = torch.where(_touched(rows, n, e), fwd, 0.0)
    rev = torch.where(_touched(cols, n, e), rev, 0.0)
    return fwd, rev, e_new


def backward_triton(
    e: Tensor, xab: Tensor, table: Tensor, fwd: Tensor, rev: Tensor,
    g_fwd: Tensor, g_rev: Tensor, g_e: Tensor,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(d e, d xab)`` of :func:`cuda_ops.meta_blocks` (contiguous inputs)."""
    n, hidden, table = xab.size(0), e.size(1), table.to(e.device)
    rows, cols = _walkers(table)
    de, dxab = torch.zeros_like(e), torch.zeros_like(xab)
    if not rows[0].numel():
        return de, dxab
    bh = _block_h(hidden)
    ties_f, ties_r = e.new_zeros(n, 2, hidden), e.new_zeros(n, 2, hidden)
    for walker, stats, ties in ((rows, fwd, ties_f), (cols, rev, ties_r)):
        _ties_kernel[_grid(walker, hidden, bh)](
            e, xab, stats, ties, *walker, hidden, BLOCK_T=BLOCK_T, BLOCK_H=bh
        )
    scaled_f, scaled_r = (
        scaled_grads(g_fwd, ties_f).contiguous(),
        scaled_grads(g_rev, ties_r).contiguous(),
    )
    _grad_kernel[_grid(rows, hidden, bh)](
        e, xab, fwd, rev, scaled_f, scaled_r, g_e, de, dxab, *rows, hidden,
        WRITE_DE=True, BLOCK_T=BLOCK_T, BLOCK_H=bh,
    )  # fmt: skip
    _grad_kernel[_grid(cols, hidden, bh)](
        e, xab, rev, fwd, scaled_r, scaled_f, g_e, de, dxab, *cols, hidden,
        WRITE_DE=False, BLOCK_T=BLOCK_T, BLOCK_H=bh,
    )  # fmt: skip
    return de, dxab

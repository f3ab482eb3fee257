"""Pure-torch reference of ``metaprune::meta_blocks`` (see :mod:`cuda_ops.meta_blocks_op`).

One block at a time, written for clarity: :func:`forward_reference` is plain differentiable
torch (autograd through it is a third opinion in the tests), :func:`backward_reference`
the explicit gradient that the C++ kernel computes, with the same tie rule (the gradient of
a node's max or min is split evenly between all of its edges that attain it).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["forward_reference", "backward_reference", "block_views", "scaled_grads"]


def block_views(
    e: Tensor, xab: Tensor, table: Tensor
) -> Iterator[tuple[tuple[int, int, int, int], Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]]:
    """Per block: ``(edge, out, in, edges)`` offsets/count, its edge states as
    ``(groups, out/g, in/g, h)``, and ``(x, a, b)`` of its input nodes as
    ``(groups, 1, in/g, h)`` and of its output nodes as ``(groups, out/g, 1, h)``."""
    hidden = e.size(1)
    for edge, out, out_size, inp, in_size, groups in table.tolist():
        out_g, in_g = out_size // groups, in_size // groups
        count = out_size * in_g
        ev = e[edge : edge + count].view(groups, out_g, in_g, hidden)
        src = xab[inp : inp + in_size].view(groups, 1, in_g, 3 * hidden).chunk(3, dim=-1)
        dst = xab[out : out + out_size].view(groups, out_g, 1, 3 * hidden).chunk(3, dim=-1)
        yield (edge, out, inp, count), ev, src, dst


def _stats(y: Tensor, dim: int) -> Tensor:
    """``[sum, sum of squares, max, -min]`` along ``dim`` -> ``(rows, 4, h)``."""
    s = torch.stack([y.sum(dim), y.square().sum(dim), y.amax(dim), (-y).amax(dim)], dim=-2)
    return s.reshape(-1, 4, y.size(-1))


def _combine(total: Tensor, start: int, part: Tensor) -> Tensor:
    """Add ``part``'s sums into rows ``start..`` of ``total`` and max its extrema in."""
    rows = total[start : start + part.size(0)]
    new = torch.cat([rows[:, :2] + part[:, :2], torch.maximum(rows[:, 2:], part[:, 2:])], dim=1)
    return torch.slice_scatter(total, new, 0, start, start + part.size(0))


def _touched(table: Tensor, num_nodes: int, column: int, size_column: int) -> Tensor:
    mask = torch.zeros(num_nodes, 1, 1, dtype=torch.bool, device=table.device)
    for start, size in table[:, [column, size_column]].tolist():
        mask[start : start + size] = True
    return mask


def forward_reference(e: Tensor, xab: Tensor, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(fwd, rev, e_new)`` of :func:`cuda_ops.meta_blocks`, block by block."""
    n, hidden = xab.size(0), e.size(1)
    empty = torch.tensor([0.0, 0.0, -torch.inf, -torch.inf], dtype=e.dtype, device=e.device)
    fwd = rev = empty.view(1, 4, 1).expand(n, 4, hidden)
    e_new = []
    for (_, out, inp, _), ev, (xs, as_, bs), (xd, ad, bd) in block_views(e, xab, table):
        fwd = _combine(fwd, out, _stats(ev * xs, 2))
        rev = _combine(rev, inp, _stats(ev * xd, 1))
        e_new.append((ev + ev * (as_ * bd + ad * bs)).reshape(-1, hidden))
    # nodes without incoming edges get 0 for all four statistics (PyG's convention)
    fwd = torch.where(_touched(table, n, 1, 2), fwd, 0.0)
    rev = torch.where(_touched(table, n, 3, 4), rev, 0.0)
    return fwd, rev, torch.cat(e_new) if e_new else e.clone()


def backward_reference(
    e: Tensor,
    xab: Tensor,
    table: Tensor,
    fwd: Tensor,
    rev: Tensor,
    g_fwd: Tensor,
    g_rev: Tensor,
    g_e: Tensor,
) -> tuple[Tensor, Tensor]:
    """``(d e, d xab)`` given the forward outputs and their gradients."""
    n, hidden = xab.size(0), e.size(1)
    blocks = list(block_views(e, xab, table))

    # ties per node: how many edges attain the max and the min
    ties_f = e.new_zeros(n, 2, hidden)
    ties_r = e.new_zeros(n, 2, hidden)
    for (_, out, inp, _), ev, (xs, _, _), (xd, _, _) in blocks:
        g, out_g, in_g, _ = ev.shape
        _, _, hi_f, neg_f = _node_rows(fwd, out, g, out_g, 2)
        _, _, hi_r, neg_r = _node_rows(rev, inp, g, in_g, 1)
        y, yr = ev * xs, ev * xd
        ties_f[out : out + g * out_g] += torch.stack(
            [(y == hi_f).sum(2), (-y == neg_f).sum(2)], dim=-2
        ).reshape(-1, 2, hidden)
        ties_r[inp : inp + g * in_g] += torch.stack(
            [(yr == hi_r).sum(1), (-yr == neg_r).sum(1)], dim=-2
        ).reshape(-1, 2, hidden)
    scaled_f = scaled_grads(g_fwd, ties_f)
    scaled_r = scaled_grads(g_rev, ties_r)

    de = torch.empty_like(e)
    dxab = torch.zeros_like(xab)
    for (edge, out, inp, count), ev, (xs, as_, bs), (xd, ad, bd) in blocks:
        g, out_g, in_g, _ = ev.shape
        y, yr = ev * xs, ev * xd
        dy = _dstats(y, fwd, scaled_f, out, g, out_g, 2)
        dyr = _dstats(yr, rev, scaled_r, inp, g, in_g, 1)
        ge = g_e[edge : edge + count].view_as(ev)
        de[edge : edge + count] = (dy * xs + dyr * xd + ge * (1 + (as_ * bd + ad * bs))).reshape(
            -1, hidden
        )
        gv = ge * ev
        src = torch.cat([(dy * ev).sum(1), (gv * bd).sum(1), (gv * ad).sum(1)], dim=-1)
        dst = torch.cat([(dyr * ev).sum(2), (gv * bs).sum(2), (gv * as_).sum(2)], dim=-1)
        dxab[inp : inp + g * in_g] += src.reshape(-1, 3 * hidden)
        dxab[out : out + g * out_g] += dst.reshape(-1, 3 * hidden)
    return de, dxab


def _node_rows(stats: Tensor, start: int, groups: int, rows: int, dim: int) -> tuple[Tensor, ...]:
    """Rows ``start..`` of ``[N, k, h]`` node data as ``k`` tensors broadcasting against a
    block's ``(groups, out/g, in/g, h)``: receivers along ``dim`` 2 are output nodes
    (``(g, out/g, 1, h)``), along ``dim`` 1 input nodes (``(g, 1, in/g, h)``)."""
    part = stats[start : start + groups * rows].view(groups, rows, stats.size(1), stats.size(2))
    return tuple(t.unsqueeze(dim) for t in part.unbind(2))


def scaled_grads(grad: Tensor, ties: Tensor) -> Tensor:
    """``[g_sum, 2 g_sq, g_max / ties, g_negmin / ties]`` (0 where nothing attains it)."""
    split = torch.where(ties > 0, grad[:, 2:] / ties.clamp(min=1), 0.0)
    return torch.cat([grad[:, :1], 2 * grad[:, 1:2], split], dim=1)


def _dstats(y: Tensor, stats: Tensor, scaled: Tensor, start: int, groups: int, rows: int, dim: int):
    """d loss / d y for the statistics of ``y`` reduced along ``dim``."""
    _, _, hi, neg = _node_rows(stats, start, groups, rows, dim)
    g_sum, g_sq, g_max, g_neg = _node_rows(scaled, start, groups, rows, dim)
    return g_sum + y * g_sq + (y == hi) * g_max - (-y == neg) * g_neg

"""``metaprune::meta_blocks``: the edge side of one metanetwork layer over all dense blocks.

For every block of the encoder's layer table (a dense ``out x in/groups`` weight block, or
an identity diagonal as a block with ``groups = out = in``) and hidden edge states ``e``,
with node factors ``[x | a | b]`` (``xab``), it computes in one pass over the edges

* ``fwd[i] = [sum, sum of squares, max, -min]_j (e_ij * x_j)`` per output node ``i``
  (messages along the edges, the receiver's factor ``z_i`` left out),
* ``rev[j]``, the same of ``e_ij * x_i`` per input node ``j`` (along the flipped edges),
* ``e_new_ij = e_ij * (1 + a_j b_i + a_i b_j)`` (both directions' edge updates; the
  reverse direction's sign vector cancels),

nodes without edges getting 0. Implementations: a fused C++ kernel for CPU tensors
(``cpu/meta_blocks.cpp``, one pass forward, two passes backward, threads from
``torch.get_num_threads()``), Triton kernels for CUDA tensors
(:mod:`cuda_ops.triton_meta_blocks`), and the pure-torch reference
(:mod:`cuda_ops.meta_blocks_reference`) for anything else or when forced with
:func:`cuda_ops.use_reference`. Registered with ``torch.library`` (fake tensors for
``torch.compile``, first-order autograd through ``metaprune::meta_blocks_backward``).
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from . import dispatch
from .dispatch import SUFFIX, kernel_library, ptr, use_triton
from .meta_blocks_reference import backward_reference, forward_reference

__all__ = ["meta_blocks", "native_available", "TABLE_COLUMNS"]

TABLE_COLUMNS = ("edge_offset", "out_offset", "out_size", "in_offset", "in_size", "groups")

_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "meta_blocks_forward": [_P] * 3 + [_I] * 3 + [_P] * 3 + [_I],
    "meta_blocks_backward": [_P] * 3 + [_I] * 3 + [_P] * 7 + [_I],
}


def _kernels(t: Tensor) -> ctypes.CDLL | None:
    return kernel_library("meta_blocks", _SIGNATURES, t)


def native_available() -> bool:
    """Whether the C++ kernel of ``meta_blocks`` is built and loaded (building it if needed)."""
    return dispatch.native_available("meta_blocks", _SIGNATURES)


def _check(e: Tensor, xab: Tensor, table: Tensor) -> None:
    """Validate shapes and that every block lies inside ``e`` and ``xab`` (the C++ kernel
    trusts its inputs)."""
    if e.dim() != 2 or xab.dim() != 2 or xab.size(1) != 3 * e.size(1):
        raise ValueError(
            f"meta_blocks: expected e [E, h] and xab [N, 3h], found e {list(e.shape)} and "
            f"xab {list(xab.shape)}"
        )
    if e.dtype != xab.dtype or e.device != xab.device:
        raise ValueError(
            f"meta_blocks: e is {e.dtype} on {e.device}, xab {xab.dtype} on {xab.device}"
        )
    if table.dim() != 2 or table.size(1) != len(TABLE_COLUMNS) or table.dtype != torch.int64:
        raise ValueError(
            f"meta_blocks: expected an int64 block table [B, {len(TABLE_COLUMNS)}] "
            f"({', '.join(TABLE_COLUMNS)}), found {table.dtype} {list(table.shape)}"
        )
    if table.numel() == 0:
        return
    edge, out, out_size, inp, in_size, groups = table.cpu().unbind(1)
    bad = (
        (groups < 1)
        | (out_size < 1)
        | (in_size < 1)
        | (out_size % groups != 0)
        | (in_size % groups != 0)
        | (edge < 0)
        | (out < 0)
        | (inp < 0)
        | (edge + out_size * (in_size // groups.clamp(min=1)) > e.size(0))
        | (out + out_size > xab.size(0))
        | (inp + in_size > xab.size(0))
    )
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"meta_blocks: block {row} {dict(zip(TABLE_COLUMNS, table[row].tolist()))} does not "
            f"fit {e.size(0)} edges and {xab.size(0)} nodes (or its sizes are not divisible by groups)"
        )


@torch.library.custom_op("metaprune::meta_blocks", mutates_args=())
def _meta_blocks(e: Tensor, xab: Tensor, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    _check(e, xab, table)
    e, xab, table = e.contiguous(), xab.contiguous(), table.contiguous()
    if use_triton(e.device.type, e.dtype):
        from .triton_meta_blocks import forward_triton

        return forward_triton(e, xab, table)
    lib = _kernels(e)
    if lib is None:
        return forward_reference(e, xab, table)
    table = table.cpu()
    n, hidden = xab.size(0), e.size(1)
    fwd = e.new_empty(n, 4, hidden)
    rev = e.new_empty(n, 4, hidden)
    e_new = torch.empty_like(e)
    getattr(lib, f"meta_blocks_forward_{SUFFIX[e.dtype]}")(
        ptr(e), ptr(xab), ptr(table), table.size(0), n, hidden,
        ptr(fwd), ptr(rev), ptr(e_new), torch.get_num_threads(),
    )  # fmt: skip
    return fwd, rev, e_new


@_meta_blocks.register_fake
def _(e: Tensor, xab: Tensor, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n, hidden = xab.size(0), e.size(1)
    return e.new_empty(n, 4, hidden), e.new_empty(n, 4, hidden), torch.empty_like(e)


@torch.library.custom_op("metaprune::meta_blocks_backward", mutates_args=())
def _meta_blocks_backward(
    e: Tensor,
    xab: Tensor,
    table: Tensor,
    fwd: Tensor,
    rev: Tensor,
    g_fwd: Tensor,
    g_rev: Tensor,
    g_e: Tensor,
) -> tuple[Tensor, Tensor]:
    _check(e, xab, table)
    stats_shape = (xab.size(0), 4, e.size(1))
    for name, t, shape in (
        ("fwd", fwd, stats_shape), ("rev", rev, stats_shape), ("g_fwd", g_fwd, stats_shape),
        ("g_rev", g_rev, stats_shape), ("g_e", g_e, tuple(e.shape)),
    ):  # fmt: skip
        if tuple(t.shape) != shape or t.dtype != e.dtype:
            raise ValueError(
                f"meta_blocks_backward: expected {name} {list(shape)} {e.dtype}, "
                f"found {list(t.shape)} {t.dtype}"
            )
    args = [t.contiguous() for t in (e, xab, table, fwd, rev, g_fwd, g_rev, g_e)]
    e, xab, table, fwd, rev, g_fwd, g_rev, g_e = args
    if use_triton(e.device.type, e.dtype):
        from .triton_meta_blocks import backward_triton

        return backward_triton(*args)
    lib = _kernels(e)
    if lib is None:
        return backward_reference(*args)
    table = table.cpu()
    de, dxab = torch.empty_like(e), torch.empty_like(xab)
    getattr(lib, f"meta_blocks_backward_{SUFFIX[e.dtype]}")(
        ptr(e), ptr(xab), ptr(table), table.size(0), xab.size(0), e.size(1),
        ptr(fwd), ptr(rev), ptr(g_fwd), ptr(g_rev), ptr(g_e), ptr(de), ptr(dxab),
        torch.get_num_threads(),
    )  # fmt: skip
    return de, dxab


@_meta_blocks_backward.register_fake
def _(e, xab, table, fwd, rev, g_fwd, g_rev, g_e) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    return torch.empty_like(e), torch.empty_like(xab)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    e, xab, table = inputs
    fwd, rev, _ = output
    ctx.save_for_backward(e, xab, table, fwd, rev)


def _backward(ctx, g_fwd: Tensor, g_rev: Tensor, g_e: Tensor):  # noqa: ANN001, ANN202
    e, xab, table, fwd, rev = ctx.saved_tensors
    de, dxab = _meta_blocks_backward(e, xab, table, fwd, rev, g_fwd, g_rev, g_e)
    return de, dxab, None


_meta_blocks.register_autograd(_backward, setup_context=_setup_context)


def meta_blocks(e: Tensor, xab: Tensor, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(fwd, rev, e_new)`` for edge states ``e`` ``[E, h]``, node factors ``xab``
    ``[N, 3h]`` and a block ``table`` ``[B, 6]`` (int64, columns :data:`TABLE_COLUMNS`):
    ``fwd``/``rev`` are ``[N, 4, h]`` statistics ``[sum, sum of squares, max, -min]``,
    ``e_new`` is ``[E, h]``. Differentiable in ``e`` and ``xab``."""
    return _meta_blocks(e, xab, table)

"""Kernel-size-agnostic edges: one encoder and one decoder for every edge kind and kernel.

Every edge is placed on a canonical, zero-padded, **centred** ``K x K`` grid
(``K = max_kernel``, default 7) and described by the feature vector

    ``[grid (K*K values) | one-hot edge kind | kernel_h / K | kernel_w / K]``

read by ONE ``Linear``; ONE decoder maps an edge state back to the ``K x K`` grid, of which
only the block's own kernel positions are kept. Placement of a ``kh x kw`` kernel: its
row ``r`` sits at grid row ``r + (K - kh) // 2`` (floor division, likewise for columns),
so odd kernels are exactly centred and even ones one position up/left of centre.

- A linear edge is a 1x1 kernel at the centre; an identity edge is the value 1.0 at the
  centre with the ``IDENTITY`` flag (never decoded: it holds no values).
- Kernels larger than the grid (AlexNet's 11x11 stem, ViT's 16x16 patch embedding): the
  centre ``K x K`` window is encoded and edited; positions outside it are not seen by the
  encoder and get an edit of exactly 0.
- A block whose ``width`` is not ``kernel_h * kernel_w`` (no registered model has one;
  e.g. a 3-D kernel) is treated as a ``1 x width`` kernel. A 1-D kernel of size ``k`` is
  already recorded by the encoder as ``k x 1``.

Zero-padded grid entries contribute nothing to a ``Linear``, so instead of materialising
``E x K*K`` padded grids, :class:`CanonicalEdges` multiplies each block's ``(E, kh*kw)``
values by the matching columns of the encoder weight, and its decoder computes only the
rows of the block's positions: the same function (tests compare it with the padded grid in
float64) at the cost of the per-type encoding. No Python loop runs over edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graph_encoding.schema import COL, EdgeKind

__all__ = [
    "DEFAULT_MAX_KERNEL",
    "VALUELESS_KINDS",
    "CanonicalEdges",
    "GridPlacement",
    "edge_signature",
    "kernel_shape",
    "placement",
]

DEFAULT_MAX_KERNEL = 7
#: kinds whose blocks hold no values (a constant 1.0 per edge); every other kind is dense,
#: ``width`` values per edge laid out as :func:`kernel_shape`
VALUELESS_KINDS = frozenset({EdgeKind.IDENTITY})


def kernel_shape(kind: int, kernel_h: int, kernel_w: int, width: int) -> tuple[int, int]:
    """The ``(kh, kw)`` a block's ``width`` values are laid out as (see module doc)."""
    if int(kind) in VALUELESS_KINDS:
        return 1, 1
    if kernel_h * kernel_w == width:
        return int(kernel_h), int(kernel_w)
    return 1, int(width)


def edge_signature(kind: int, kernel_h: int, kernel_w: int, width: int) -> str:
    """``"CONV:7x7"``, ``"LINEAR:1x1"``, ``"IDENTITY:1x1"``: an edge type by kind and kernel."""
    kh, kw = kernel_shape(kind, kernel_h, kernel_w, width)
    return f"{EdgeKind(int(kind)).name}:{kh}x{kw}"


@dataclass(frozen=True)
class GridPlacement:
    """Where a ``kh x kw`` kernel meets the ``K x K`` grid.

    Attributes:
        kernel: ``(kh, kw)``.
        rows, cols: the kernel's slice that lies on the grid (all of it unless larger).
        grid_index: flat grid positions (``row * K + col``) of those kernel values, in the
            kernel's row-major order.
        pad: ``F.pad`` amounts ``(left, right, top, bottom)`` that put the on-grid window
            back into the full kernel with zeros (all 0 unless the kernel is larger).
    """

    kernel: tuple[int, int]
    rows: slice
    cols: slice
    grid_index: Tensor
    pad: tuple[int, int, int, int]

    @property
    def cropped(self) -> bool:
        return any(self.pad)


@lru_cache(maxsize=256)
def placement(kh: int, kw: int, max_kernel: int) -> GridPlacement:
    """The :class:`GridPlacement` of a ``kh x kw`` kernel on a ``max_kernel`` grid."""
    if kh < 1 or kw < 1 or max_kernel < 1:
        raise ValueError(f"kernel {kh}x{kw} and grid {max_kernel} must be positive")

    def axis(k: int) -> tuple[slice, int, int, int]:
        offset = (max_kernel - k) // 2  # kernel position 0 -> grid position `offset`
        first = max(0, -offset)  # first kernel position on the grid
        last = min(k, max_kernel - offset)  # one past the last
        return slice(first, last), first + offset, first, k - last

    rows, row0, top, bottom = axis(kh)
    cols, col0, left, right = axis(kw)
    r = torch.arange(rows.stop - rows.start) + row0
    c = torch.arange(cols.stop - cols.start) + col0
    index = (r[:, None] * max_kernel + c[None, :]).reshape(-1)
    return GridPlacement((kh, kw), rows, cols, index, (left, right, top, bottom))


def mlp_decoder(hidden: int, out: int) -> nn.Sequential:
    """``LayerNorm -> Linear -> SiLU -> Linear``: every decoder of a metanetwork."""
    return nn.Sequential(
        nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out)
    )


class CanonicalEdges(nn.Module):
    r"""ONE edge encoder and ONE edge decoder for every edge kind and kernel size.

    .. math::
        e^0 = W_{enc} \, [\,g(w) \,|\, \mathrm{onehot}(kind) \,|\, k_h/K \,|\, k_w/K\,] + b,
        \qquad \Delta w = \mathrm{crop}\big(\mathrm{dec}(e^L)\big)

    with :math:`g(w)` the kernel on the centred zero-padded ``K x K`` grid (module doc).

    Args:
        hidden (int): Edge state size.
        max_kernel (int): Grid side ``K``.
        edge_kinds (Sequence[str]): ``EdgeKind`` names it has a flag for, in one-hot order
            (stored in the config so that a kind added later is named, never mis-coded).

    Shapes:
        - **encode:** a block's values :math:`(E, kh \cdot kw)` -> :math:`(E, h)`
        - **decode:** edge states :math:`(E, h)` -> edits :math:`(E, kh \cdot kw)`
    """

    def __init__(self, hidden: int, max_kernel: int, edge_kinds: Sequence[str]) -> None:
        super().__init__()
        unknown = sorted(set(edge_kinds) - set(EdgeKind.__members__))
        if unknown or not edge_kinds or len(set(edge_kinds)) != len(edge_kinds):
            raise ValueError(
                f"edge_kinds must be distinct EdgeKind names {list(EdgeKind.__members__)} "
                f"(found {list(edge_kinds)})"
            )
        if not isinstance(max_kernel, int) or max_kernel < 1:
            raise ValueError(f"max_kernel must be a positive int (found {max_kernel!r})")
        self.hidden, self.max_kernel, self.edge_kinds = hidden, max_kernel, list(edge_kinds)
        self.grid = max_kernel * max_kernel
        self.encoder = nn.Linear(self.grid + len(self.edge_kinds) + 2, hidden)
        self.decoder = mlp_decoder(hidden, self.grid)

    def _shape(self, row: Sequence[int]) -> tuple[int, int]:
        return kernel_shape(row[COL["kind"]], row[COL["kernel_h"]], row[COL["kernel_w"]],
                            row[COL["width"]])  # fmt: skip

    def _constants(self, rows: Sequence[Sequence[int]]) -> Tensor:
        """``[B, h]``: the encoder's bias plus its response to each block's constant
        features (kind flag, kernel size), one matmul for all blocks."""
        weight = self.encoder.weight
        features = torch.zeros(len(rows), len(self.edge_kinds) + 2, dtype=weight.dtype)
        for i, row in enumerate(rows):
            kh, kw = self._shape(row)
            features[i, self.edge_kinds.index(EdgeKind(row[COL["kind"]]).name)] = 1.0
            features[i, -2] = kh / self.max_kernel
            features[i, -1] = kw / self.max_kernel
        return F.linear(features.to(weight.device), weight[:, self.grid :], self.encoder.bias)

    def encode_blocks(
        self, rows: Sequence[Sequence[int]], values: Sequence[Tensor | None]
    ) -> list[Tensor]:
        """Edge states of each block: ``values[i]`` is block ``i``'s ``(E, width)`` values
        (``None`` for a valueless kind, whose ``out_size`` edges share one state)."""
        constants = self._constants(rows)
        weight, columns = self.encoder.weight, {}
        states = []
        for row, block, constant in zip(rows, values, constants):
            if row[COL["kind"]] in VALUELESS_KINDS:  # 1.0 at the centre
                centre = placement(1, 1, self.max_kernel).grid_index[0]
                states.append((constant + weight[:, centre]).expand(row[COL["out_size"]], -1))
                continue
            kh, kw = self._shape(row)
            place = placement(kh, kw, self.max_kernel)
            if place.cropped:  # only the centre window is on the grid
                block = block.view(-1, kh, kw)[:, place.rows, place.cols].reshape(block.size(0), -1)
            if (kh, kw) not in columns:  # the grid columns of its positions, once per shape
                columns[kh, kw] = weight[:, place.grid_index.to(weight.device)]
            states.append(F.linear(block, columns[kh, kw], constant))
        return states

    def decode_trunk(self, states: Tensor) -> Tensor:
        """The decoder's shared part (all but its last ``Linear``), ``(E, h) -> (E, h)``:
        run once over every edge state of a graph."""
        for module in list(self.decoder)[:-1]:
            states = module(states)
        return states

    def decode_heads(self, rows: Sequence[Sequence[int]], hidden: Sequence[Tensor]) -> list[Tensor]:
        """Edits ``(E, width)`` of each dense block from its :meth:`decode_trunk` output:
        only the last ``Linear``'s rows of the block's grid positions are computed."""
        last = self.decoder[-1]
        edits, rows_of = [], {}
        for row, part in zip(rows, hidden):
            kh, kw = self._shape(row)
            place = placement(kh, kw, self.max_kernel)
            if (kh, kw) not in rows_of:  # once per kernel shape
                index = place.grid_index.to(last.weight.device)
                rows_of[kh, kw] = (last.weight[index], last.bias[index])
            edit = F.linear(part, *rows_of[kh, kw])
            if place.cropped:  # positions off the grid: edit 0
                window = (place.rows.stop - place.rows.start, place.cols.stop - place.cols.start)
                edit = F.pad(edit.view(-1, *window), place.pad).reshape(edit.size(0), -1)
            edits.append(edit)
        return edits

    def encode(self, row: Sequence[int], values: Tensor | None) -> Tensor:
        """Edge states of one block (see :meth:`encode_blocks`)."""
        return self.encode_blocks([row], [values])[0]

    def decode(self, row: Sequence[int], states: Tensor) -> Tensor:
        """Edits of one dense block (see :meth:`decode_heads`)."""
        return self.decode_heads([row], [self.decode_trunk(states)])[0]

    def extra_repr(self) -> str:
        return f"max_kernel={self.max_kernel}, edge_kinds={self.edge_kinds}"

"""``BlockLayout``: a graph's dense per-layer blocks as the metanetwork layers read them.

Edge hidden states live in one ``[E, h]`` tensor, block after block in ``layer_table``
order (the order of ``edge_index``), each dense block out-major ``(out, in / groups)``.
An identity diagonal of ``n`` edges is a block with ``groups = out = in = n``, so one
kernel (:func:`cuda_ops.meta_blocks`) handles every block kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from graph_encoding.schema import COL, EdgeKind

__all__ = ["BlockLayout"]


@dataclass(frozen=True)
class BlockLayout:
    """Built once per ``layer_table`` (cached) by :meth:`from_table`.

    Attributes:
        num_nodes: Nodes of the graph (or batch).
        table: ``[B, 6]`` int64 rows ``(edge offset, out offset, out size, in offset,
            in size, groups)`` for :func:`cuda_ops.meta_blocks`.
        edge_counts: Edges of each block.
        counts: ``[2, N, 1]`` incoming edges per node along the edges and along the
            flipped edges (float64).
    """

    num_nodes: int
    table: Tensor
    edge_counts: tuple[int, ...]
    counts: Tensor

    @staticmethod
    def from_table(layer_table: Tensor, num_nodes: int) -> BlockLayout:
        rows = tuple(tuple(r) for r in layer_table.tolist())
        return _layout(rows, int(num_nodes))

    @property
    def num_edges(self) -> int:
        return sum(self.edge_counts)

    def split(self, edges: Tensor) -> tuple[Tensor, ...]:
        """``[E, h]`` edge states -> per-block ``[edges, h]`` views, in table order."""
        if edges.size(0) != self.num_edges:
            raise ValueError(
                f"expected edge states for {self.num_edges} edges (the layout's blocks), "
                f"found {edges.size(0)}"
            )
        return edges.split(self.edge_counts)


@lru_cache(maxsize=64)
def _layout(rows: tuple[tuple[int, ...], ...], num_nodes: int) -> BlockLayout:
    table, counts, edge = [], torch.zeros(2, num_nodes, 1, dtype=torch.float64), 0
    for r in rows:
        out, out_size, inp = r[COL["out_offset"]], r[COL["out_size"]], r[COL["in_offset"]]
        if r[COL["kind"]] == EdgeKind.IDENTITY:  # a diagonal: n groups of one edge
            in_size = groups = out_size
        else:
            in_size, groups = r[COL["in_size"]], r[COL["groups"]]
        table.append((edge, out, out_size, inp, in_size, groups))
        edge += out_size * (in_size // groups)
        counts[0, out : out + out_size] += in_size // groups
        counts[1, inp : inp + in_size] += out_size // groups
    return BlockLayout(
        num_nodes=num_nodes,
        table=torch.tensor(table, dtype=torch.int64).view(-1, 6),
        edge_counts=tuple(t[2] * (t[4] // t[5]) for t in table),
        counts=counts,
    )

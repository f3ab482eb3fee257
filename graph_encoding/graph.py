"""``ModelGraph``: a PyG ``Data`` holding one network as a typed graph."""

from __future__ import annotations

from typing import Any

import torch
from torch_geometric.data import Data

from .schema import COL, EdgeKind

__all__ = ["ModelGraph", "block_edge_index", "block_edge_attr"]

# Columns of ``layer_table`` that point into node, edge or value ranges; batching offsets them.
_NODE_COLS = [COL["out_offset"], COL["in_offset"]]
_EDGE_COLS = [COL["edge_offset"]]
_VALUE_COLS = [COL["value_offset"]]


class ModelGraph(Data):
    """A network as a graph.

    Stored attributes:
        x: ``[num_nodes, NODE_FEATURES]`` node features (see :mod:`graph_encoding.schema`).
        edge_flat: ``[num_values]`` every weight, block after block, out-major; a block is
            a view ``(out, in // groups, width)`` of it.
        layer_table: ``[num_blocks, len(LAYER_COLUMNS)]`` the block table.
        plan: the architecture's :class:`~graph_encoding.plan.Plan` (needed to decode).
        extras: state-dict tensors that the graph does not hold, carried alongside.

    Derived on first use (and then stored): ``edge_index`` (``[2, num_edges]``, source =
    input channel, target = output channel), ``edge_type`` (``[num_edges]`` EdgeKind) and
    ``edge_attr`` (``[num_edges, max width]``, zero padded; identity edges are 1.0).
    They cost memory proportional to the number of edges, which the blocks avoid.
    """

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "layer_table":
            inc = torch.zeros(value.size(-1), dtype=torch.long)
            inc[_NODE_COLS] = self.num_nodes
            inc[_EDGE_COLS] = self.num_edges
            inc[_VALUE_COLS] = self.edge_flat.numel()
            return inc
        return super().__inc__(key, value, *args, **kwargs)

    # ------------------------------------------------------------------ sizes
    @property
    def num_edges(self) -> int:
        table = self._store.get("layer_table")
        if table is None or table.numel() == 0:
            return 0
        return int(block_sizes(table).sum())

    @property
    def coverage(self) -> float:
        """Fraction of the network's parameters held in the graph (the rest is in ``extras``)."""
        plans = self.plan if isinstance(self.plan, list) else [self.plan]
        return min(p.coverage for p in plans)

    # ------------------------------------------------------------------ lazy edge views
    @property
    def edge_index(self) -> torch.Tensor:
        if "edge_index" not in self._store:
            self._store["edge_index"] = block_edge_index(self.layer_table)
        return self._store["edge_index"]

    @edge_index.setter
    def edge_index(self, value: torch.Tensor | None) -> None:
        self._store["edge_index"] = value

    @property
    def edge_type(self) -> torch.Tensor:
        if "edge_type" not in self._store:
            table = self.layer_table
            self._store["edge_type"] = table[:, COL["kind"]].repeat_interleave(block_sizes(table))
        return self._store["edge_type"]

    @edge_type.setter
    def edge_type(self, value: torch.Tensor | None) -> None:
        self._store["edge_type"] = value

    @property
    def edge_attr(self) -> torch.Tensor:
        if "edge_attr" not in self._store:
            self._store["edge_attr"] = block_edge_attr(self.layer_table, self.edge_flat)
        return self._store["edge_attr"]

    @edge_attr.setter
    def edge_attr(self, value: torch.Tensor | None) -> None:
        self._store["edge_attr"] = value

    def block(self, i: int) -> torch.Tensor:
        """Edge features of block ``i`` as an ``(out, in // groups, width)`` view."""
        return block_view(self.layer_table[i], self.edge_flat)

    def validate(self, raise_on_error: bool = True) -> bool:
        _ = self.edge_index  # materialise so PyG's checks see the edges
        return super().validate(raise_on_error=raise_on_error)


def block_sizes(table: torch.Tensor) -> torch.Tensor:
    """Edges per block."""
    identity = table[:, COL["kind"]] == EdgeKind.IDENTITY
    dense = table[:, COL["out_size"]] * (table[:, COL["in_size"]] // table[:, COL["groups"]])
    return torch.where(identity, table[:, COL["out_size"]], dense)


def block_view(row: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    out, inp, groups, width, start = (
        int(row[COL[c]]) for c in ("out_size", "in_size", "groups", "width", "value_offset")
    )
    if int(row[COL["kind"]]) == EdgeKind.IDENTITY:
        return flat.new_ones(out, 1, 1)
    n = out * (inp // groups) * width
    return flat[start : start + n].view(out, inp // groups, width)


def block_edge_index(table: torch.Tensor) -> torch.Tensor:
    parts = []
    for row in table.tolist():
        out_off, out, in_off, inp, groups = (
            row[COL[c]] for c in ("out_offset", "out_size", "in_offset", "in_size", "groups")
        )
        if row[COL["kind"]] == EdgeKind.IDENTITY:
            k = torch.arange(out)
            parts.append(torch.stack([in_off + k, out_off + k]))
            continue
        per = inp // groups
        o = torch.arange(out).repeat_interleave(per)
        i = torch.arange(per).repeat(out) + (o // (out // groups)) * per
        parts.append(torch.stack([in_off + i, out_off + o]))
    if not parts:
        return torch.empty(2, 0, dtype=torch.long)
    return torch.cat(parts, dim=1)


def block_edge_attr(table: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    width = int(table[:, COL["width"]].max()) if table.numel() else 1
    parts = []
    for row in table:
        v = block_view(row, flat).reshape(
            -1, int(row[COL["width"]]) if int(row[COL["kind"]]) != EdgeKind.IDENTITY else 1
        )
        parts.append(torch.nn.functional.pad(v, (0, width - v.size(1))))
    return torch.cat(parts) if parts else flat.new_zeros(0, width)

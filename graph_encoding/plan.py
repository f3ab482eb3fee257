"""The structure of one architecture's graph, computed once and reused for every model
of that architecture: where each state-dict tensor lives in the graph."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .schema import (
    COL,
    DEFAULT_SLOT_VALUES,
    DEPTH_COL,
    LAYER_COLUMNS,
    NODE_FEATURES,
    NODE_KIND_COL,
    NORM_KIND_COL,
    SLOTS_PER_ROLE,
    EdgeKind,
    NodeKind,
    NormKind,
)

__all__ = ["Block", "Carried", "NodePlacement", "NodeSetInfo", "Plan"]


@dataclass(frozen=True)
class Block:
    """One layer's edges (or one identity diagonal)."""

    name: str  # module path, with ":q"/":k"/":v" for attention projections
    kind: EdgeKind
    out_offset: int
    out_size: int
    in_offset: int
    in_size: int
    groups: int
    width: int
    edge_offset: int
    value_offset: int
    kernel: tuple[int, ...] = ()
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    depth: int = 0
    heads: int = 1

    @property
    def num_edges(self) -> int:
        if self.kind == EdgeKind.IDENTITY:
            return self.out_size
        return self.out_size * (self.in_size // self.groups)

    @property
    def num_values(self) -> int:
        return 0 if self.kind == EdgeKind.IDENTITY else self.num_edges * self.width

    def row(self) -> list[int]:
        kh = self.kernel[0] if len(self.kernel) >= 1 else 1
        kw = self.kernel[1] if len(self.kernel) >= 2 else 1
        values = {
            **{k: getattr(self, k) for k in LAYER_COLUMNS if hasattr(self, k)},
            "kind": int(self.kind),
            "kernel_h": kh,
            "kernel_w": kw,
        }
        return [int(values[c]) for c in LAYER_COLUMNS]


@dataclass(frozen=True)
class NodePlacement:
    """A per-channel state-dict vector stored in one column of ``x``."""

    key: str
    node_offset: int
    size: int
    column: int
    start: int = 0  # first element of the source vector (attention in_proj_bias rows)


@dataclass(frozen=True)
class NodeSetInfo:
    name: str
    kind: NodeKind
    offset: int
    size: int
    depth: int
    norms: tuple[NormKind, ...]


@dataclass
class Plan:
    """Everything needed to encode / decode a model of one architecture."""

    blocks: list[Block]
    node_sets: list[NodeSetInfo]
    placements: list[NodePlacement]
    weights: list[tuple[str, tuple[int, ...]]]  # edge_flat order: (state key, shape)
    carried: list[str]  # state keys kept beside the graph (not in it)
    param_keys: list[str]  # parameter (not buffer) keys, for coverage
    state_keys: list[str]  # every state-dict key, in the model's order
    num_nodes: int
    num_edges: int
    num_values: int
    dtype: torch.dtype
    _node_template: torch.Tensor | None = field(default=None, repr=False)
    _layer_table: torch.Tensor | None = field(default=None, repr=False)
    _coverage: float = 1.0

    @property
    def layer_table(self) -> torch.Tensor:
        if self._layer_table is None:
            rows = [b.row() for b in self.blocks]
            self._layer_table = torch.tensor(rows, dtype=torch.long).reshape(-1, len(COL))
        return self._layer_table

    def node_template(self) -> torch.Tensor:
        """Node features with defaults and flags filled in, values not yet placed."""
        if self._node_template is None:
            x = torch.empty(self.num_nodes, NODE_FEATURES, dtype=self.dtype)
            x[:, : len(DEFAULT_SLOT_VALUES)] = torch.tensor(DEFAULT_SLOT_VALUES, dtype=self.dtype)
            x[:, NODE_KIND_COL:] = 0
            max_depth = max((s.depth for s in self.node_sets), default=0) or 1
            for s in self.node_sets:
                rows = slice(s.offset, s.offset + s.size)
                x[rows, NODE_KIND_COL + int(s.kind)] = 1
                for role, norm in enumerate(s.norms):
                    x[rows, NORM_KIND_COL + role * len(NormKind) + int(norm)] = 1
                x[rows, DEPTH_COL] = s.depth / max_depth
            self._node_template = x
        return self._node_template

    @property
    def coverage(self) -> float:
        """Fraction of parameter elements held in the graph (0..1), set at plan time."""
        return self._coverage

    def set_coverage(self, numel: dict[str, int]) -> None:
        carried = set(self.carried)
        total = sum(numel[k] for k in self.param_keys)
        held = sum(numel[k] for k in self.param_keys if k not in carried)
        self._coverage = held / total if total else 1.0


def role_column(role: int, slot: int) -> int:
    return role * SLOTS_PER_ROLE + slot


class Carried:
    """State tensors kept beside the graph, by key (a read-only mapping).

    Deliberately not a ``Mapping`` subclass: PyG collates mappings key by key, which fails
    for graphs of different architectures; this object batches as one item per graph.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = dict(tensors)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def __iter__(self):  # noqa: ANN204
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def keys(self):  # noqa: ANN201
        return self._tensors.keys()

    def items(self):  # noqa: ANN201
        return self._tensors.items()

    def __repr__(self) -> str:
        return f"Carried({list(self._tensors)})"

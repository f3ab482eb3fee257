"""``MetaNetwork``: edge encoders, ``L`` :class:`MetaLayer` s and residual decoders over the
one graph schema of :mod:`graph_encoding` (METHOD.md section 3).

Two edge encodings (``edge_encoding``):

- ``"per-type"`` (the default; what ``resnet20-digits`` is): one ``Linear(width, h)``
  encoder and one decoder per edge-type key (``"CONV:9"``, ``"PROJECTION:1"``, ...), so
  it runs only on the edge types it was built for.
- ``"canonical"``: ONE encoder and ONE decoder for every edge kind and kernel size over a
  centred ``max_kernel x max_kernel`` grid with kind and kernel-size features
  (:mod:`metanet.canonical`), so it runs on every architecture the encoder supports.

Sizes: with ``num_layers=8, hidden=64`` the layers hold 8 x 33,088 = 264,704 parameters;
the node encoder/decoder 6,666 and each edge type ``w`` values wide ``4,352 + 129 w``
(CONV:9 5,513, LINEAR:1 4,481, IDENTITY:1 128: identity edges are never decoded), so a
CIFAR ResNet metanetwork (CONV:9, PROJECTION:1, LINEAR:1, IDENTITY:1) has 285,973, about
0.3 M.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from graph_encoding import COL, NODE_FEATURES, VALUE_SLOTS, EdgeKind, ModelGraph, edge_type_key

from .blocks import BlockLayout
from .canonical import DEFAULT_MAX_KERNEL, CanonicalEdges, edge_signature, mlp_decoder
from .layer import MetaLayer

__all__ = ["EDGE_ENCODINGS", "MetaNetwork", "edge_signatures_of", "edge_types_of"]

EDGE_ENCODINGS = ("per-type", "canonical")


def edge_types_of(graphs: Iterable[ModelGraph]) -> list[str]:
    """Sorted edge-type keys (``edge_type_key``, e.g. ``"CONV:9"``) occurring in ``graphs``:
    the ``edge_types`` a :class:`MetaNetwork` needs to handle them."""
    keys: set[str] = set()
    for graph in graphs:
        table = graph.layer_table
        keys.update(edge_type_key(k, w) for k, w in table[:, [COL["kind"], COL["width"]]].tolist())
    return sorted(keys)


def edge_signatures_of(graphs: Iterable[ModelGraph]) -> list[str]:
    """Sorted edge signatures (kind and kernel, e.g. ``"CONV:7x7"``, see
    :func:`metanet.canonical.edge_signature`) occurring in ``graphs``."""
    found: set[str] = set()
    for graph in graphs:
        found.update(_signatures(graph.layer_table))
    return sorted(found)


def _signatures(table: Tensor) -> set[str]:
    cols = [COL["kind"], COL["kernel_h"], COL["kernel_w"], COL["width"]]
    return {edge_signature(*row) for row in table[:, cols].tolist()}


def _module_key(edge_type: str) -> str:
    return edge_type.replace(".", "_")  # ModuleDict keys may not contain '.'


class MetaNetwork(nn.Module):
    r"""A graph metanetwork that rewrites a network's weights: ``W' = W + r * f(W)``.

    Node features are encoded by ``Linear(NODE_FEATURES, hidden)``, each edge type by its
    own ``Linear(width, hidden)``; ``num_layers`` :class:`MetaLayer` s run over the graph's
    dense blocks; decoders (``LayerNorm -> Linear -> SiLU -> Linear``) map back, and the
    outputs are residual:

    .. math::
        e' = e + r_e \, \mathrm{dec}_{type}(e_L), \qquad
        x'_{:, :10} = x_{:, :10} + r_n \, \mathrm{dec}(h_L)

    (only the ``VALUE_SLOTS`` value columns change; flags and depth are copied).

    Args:
        num_layers (int): Message-passing layers ``L``.
        hidden (int): Hidden size ``h``.
        edge_types (Sequence[str], optional): ``"per-type"`` only (required there): the
            edge-type keys it must handle; use :func:`edge_types_of` over the graphs it
            will see. ``"canonical"`` checks that their kinds are in ``edge_kinds`` and
            does not store them.
        node_ratio (float): Residual ratio ``r_n`` of node outputs.
        edge_ratio (float): Residual ratio ``r_e`` of edge outputs.
        edge_encoding (str): ``"per-type"`` (default) or ``"canonical"`` (module doc).
        max_kernel (int): ``"canonical"`` only: the grid side ``K`` (default 7).
        edge_kinds (Sequence[str], optional): ``"canonical"`` only: the ``EdgeKind`` names
            with a flag, in one-hot order (default: every ``EdgeKind``, in enum order).

    Shapes:
        - **input:** a :class:`~graph_encoding.ModelGraph` or a PyG ``Batch`` of them
        - **output:** node features :math:`(|V|, NODE\_FEATURES)`, edge values
          :math:`(|edge\_flat|,)`, ready for :func:`graph_encoding.decode_tensors`
    """

    def __init__(
        self,
        num_layers: int = 8,
        hidden: int = 64,
        *,
        edge_types: Sequence[str] | None = None,
        node_ratio: float = 0.01,
        edge_ratio: float = 0.01,
        edge_encoding: str = "per-type",
        max_kernel: int = DEFAULT_MAX_KERNEL,
        edge_kinds: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if edge_encoding not in EDGE_ENCODINGS:
            raise ValueError(
                f"edge_encoding must be one of {list(EDGE_ENCODINGS)} (found {edge_encoding!r})"
            )
        self.num_layers = num_layers
        self.hidden = hidden
        self.edge_encoding = edge_encoding
        self.node_ratio = float(node_ratio)
        self.edge_ratio = float(edge_ratio)
        self.node_encoder = nn.Linear(NODE_FEATURES, hidden)
        if edge_encoding == "canonical":
            kinds = list(EdgeKind.__members__) if edge_kinds is None else list(edge_kinds)
            self.edges = CanonicalEdges(hidden, max_kernel, kinds)
            self.edge_types: list[str] = []
            missing = sorted({t for t in edge_types or () if t.split(":")[0] not in kinds})
            if missing:
                raise ValueError(f"edge types {missing} have no flag in edge_kinds {kinds}")
        else:
            if edge_kinds is not None or max_kernel != DEFAULT_MAX_KERNEL:
                raise ValueError(
                    "max_kernel and edge_kinds are options of edge_encoding='canonical'"
                )
            if not edge_types:
                raise ValueError(
                    "MetaNetwork needs at least one edge type "
                    "(use edge_types=edge_types_of(graphs), or edge_encoding='canonical')"
                )
            self.edge_types = sorted(set(edge_types))
            widths = {t: int(t.rsplit(":", 1)[1]) for t in self.edge_types}
            self.edge_encoders = nn.ModuleDict(
                {_module_key(t): nn.Linear(w, hidden) for t, w in widths.items()}
            )
        # modules are created in the order they always were: seeded initialisations and
        # state_dict order of per-type networks are unchanged
        self.layers = nn.ModuleList(self._make_layer(hidden) for _ in range(num_layers))
        self.node_decoder = mlp_decoder(hidden, VALUE_SLOTS)
        if edge_encoding == "per-type":
            # identity edges hold no values, so they get no decoder
            self.edge_decoders = nn.ModuleDict(
                {
                    _module_key(t): mlp_decoder(hidden, w)
                    for t, w in widths.items()
                    if not t.startswith(f"{EdgeKind.IDENTITY.name}:")
                }
            )

    def _make_layer(self, hidden: int) -> nn.Module:
        return MetaLayer(hidden)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    # ------------------------------------------------------------------ config / export
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain JSON-able data (see :meth:`from_config`); a
        per-type network's config has no ``edge_encoding`` key (as before it existed)."""
        if self.edge_encoding == "canonical":
            return {
                "num_layers": self.num_layers,
                "hidden": self.hidden,
                "edge_encoding": "canonical",
                "max_kernel": self.edges.max_kernel,
                "edge_kinds": list(self.edges.edge_kinds),
                "node_ratio": self.node_ratio,
                "edge_ratio": self.edge_ratio,
            }
        return {
            "num_layers": self.num_layers,
            "hidden": self.hidden,
            "edge_types": list(self.edge_types),
            "node_ratio": self.node_ratio,
            "edge_ratio": self.edge_ratio,
        }

    def unsupported(self, graph_or_table: ModelGraph | Tensor) -> list[str]:
        """What in a graph (or its ``layer_table``) this network has no encoder for: sorted
        edge-type keys (``"CONV:49"``) for per-type, edge signatures for canonical (a kind
        without a flag); empty if it can run on it."""
        table = getattr(graph_or_table, "layer_table", graph_or_table)
        if self.edge_encoding == "canonical":
            kinds = set(self.edges.edge_kinds)
            return sorted(s for s in _signatures(table) if s.split(":")[0] not in kinds)
        keys = {edge_type_key(k, w) for k, w in table[:, [COL["kind"], COL["width"]]].tolist()}
        return sorted(keys - set(self.edge_types))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MetaNetwork:
        return cls(**config)

    # ------------------------------------------------------------------ forward
    def forward(self, graph: ModelGraph) -> tuple[Tensor, Tensor]:
        """New node features and edge values of ``graph`` (a ModelGraph or a Batch)."""
        table, x, flat = graph.layer_table, graph.x, graph.edge_flat
        unknown = self.unsupported(table)
        if unknown and self.edge_encoding == "canonical":
            raise ValueError(
                f"graph has edge kind(s) {unknown} that this MetaNetwork has no flag for "
                f"(edge_kinds {self.edges.edge_kinds}); build it with the default edge_kinds"
            )
        if unknown:
            raise ValueError(
                f"graph has edge type(s) {unknown} that this MetaNetwork has no encoder for "
                f"(it handles {self.edge_types}); construct it with "
                f"edge_types=edge_types_of(graphs) over every graph it must handle, or use "
                f"edge_encoding='canonical'"
            )
        rows = table.tolist()
        keys = [edge_type_key(r[COL["kind"]], r[COL["width"]]) for r in rows]
        h = self.node_encoder(x)
        layout = BlockLayout.from_table(table, graph.num_nodes)
        if self.edge_encoding == "canonical":
            values = [
                None if r[COL["kind"]] == EdgeKind.IDENTITY
                else _block_values(r, flat).reshape(-1, r[COL["width"]])
                for r in rows
            ]  # fmt: skip
            edges = torch.cat(self.edges.encode_blocks(rows, values))
        else:
            edges = torch.cat(
                [
                    self._encode_block(key, row, flat).reshape(-1, self.hidden)
                    for key, row in zip(keys, rows)
                ]
            )
        h, edges = self._message_passing(h, edges, graph, layout)
        blocks = layout.split(edges)

        x_new = torch.cat(
            [x[:, :VALUE_SLOTS] + self.node_ratio * self.node_decoder(h), x[:, VALUE_SLOTS:]], dim=1
        )
        dense = sorted(
            (row[COL["value_offset"]], i)
            for i, row in enumerate(rows)
            if row[COL["kind"]] != EdgeKind.IDENTITY
        )
        if self.edge_encoding == "canonical":  # one decoder: its trunk once over all edges
            # (identity edges too: far fewer than dense ones, and no copy of the states)
            hidden = layout.split(self.edges.decode_trunk(edges))
            changes = self.edges.decode_heads([rows[i] for _, i in dense],
                                              [hidden[i] for _, i in dense])  # fmt: skip
        else:
            changes = [self.edge_decoders[_module_key(keys[i])](blocks[i]) for _, i in dense]
        values = []
        for (_, i), change in zip(dense, changes):
            w_old = _block_values(rows[i], flat)
            values.append((w_old + self.edge_ratio * change.view_as(w_old)).reshape(-1))
        flat_new = torch.cat(values) if values else flat.clone()
        if flat_new.numel() != flat.numel():
            raise ValueError(
                f"graph's dense blocks hold {flat_new.numel()} values but edge_flat has {flat.numel()}"
            )
        return x_new, flat_new

    def _encode_block(self, key: str, row: list[int], flat: Tensor) -> Tensor:
        encoder = self.edge_encoders[_module_key(key)]
        if row[COL["kind"]] == EdgeKind.IDENTITY:  # constant feature 1.0 on a diagonal
            one = flat.new_ones(1, 1)
            return encoder(one).expand(row[COL["out_size"]], self.hidden)
        return encoder(_block_values(row, flat))

    def _message_passing(
        self, h: Tensor, edges: Tensor, graph: ModelGraph, layout: BlockLayout
    ) -> tuple[Tensor, Tensor]:
        """Run the layers over ``[E, h]`` edge states (blocks in table order)."""
        for layer in self.layers:
            h, edges = layer(h, edges, layout)
        return h, edges


def _block_values(row: list[int], flat: Tensor) -> Tensor:
    """The ``(out, in // groups, width)`` out-major view of a dense block's values."""
    out, inp, groups, width, start = (
        row[COL[c]] for c in ("out_size", "in_size", "groups", "width", "value_offset")
    )
    return flat[start : start + out * (inp // groups) * width].view(out, inp // groups, width)

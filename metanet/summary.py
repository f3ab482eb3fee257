"""What a metanetwork was trained on, as plain JSON: the summary that automatic choice
(:mod:`metanet.choice`) compares a model's graph with.

``training_summary(graphs)`` computes it from the zoo graphs (pass it to
:func:`metanet.export.export` as ``summary=``)::

    {"summary_version": 1, "graphs": 16, "architectures": ["cifar_resnet20"],
     "edge_types": ["CONV:9", ...],            # kind:width keys (what per-type nets key on)
     "edge_signatures": ["CONV:3x3", ...],     # kind:kernel (metanet.canonical.edge_signature)
     "nodes": [lo, hi], "layers": [lo, hi], "width": [lo, hi]}

per graph: ``nodes`` = graph nodes (channels), ``layers`` = dense blocks (conv / linear /
projection / gate / attention layers), ``width`` = the widest layer's output channels.

Exports written before summaries existed (``resnet20-digits``) get one derived by
:func:`derived_summary`: edge types from their per-type config, graph statistics from
the ``NAME.zoo.yaml`` shipped beside them (the zoo's architecture, traced on the meta
device, unpruned: its members were pruned lightly, so the range is a close upper bound),
marked ``"derived": "..."``; without a zoo file the statistics are ``None`` (unknown).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from graph_encoding import COL, EdgeKind, ModelGraph, edge_type_key

from .canonical import edge_signature

__all__ = [
    "STATS",
    "SUMMARY_VERSION",
    "derived_summary",
    "graph_stats",
    "training_summary",
    "zoo_summary",
]

SUMMARY_VERSION = 1
STATS = ("nodes", "layers", "width")


def graph_stats(graph: ModelGraph | Tensor, num_nodes: int | None = None) -> dict[str, Any]:
    """``{"nodes", "layers", "width", "edge_types", "edge_signatures"}`` of one graph (or of
    a ``layer_table`` with ``num_nodes``)."""
    table = getattr(graph, "layer_table", graph)
    nodes = int(graph.num_nodes if num_nodes is None else num_nodes)
    rows = table.tolist()
    dense = [r for r in rows if r[COL["kind"]] != EdgeKind.IDENTITY]
    return {
        "nodes": nodes,
        "layers": len(dense),
        "width": max((r[COL["out_size"]] for r in dense), default=0),
        "edge_types": sorted({edge_type_key(r[COL["kind"]], r[COL["width"]]) for r in rows}),
        "edge_signatures": sorted(
            {
                edge_signature(*(r[COL[c]] for c in ("kind", "kernel_h", "kernel_w", "width")))
                for r in rows
            }  # fmt: skip
        ),
    }


def training_summary(
    graphs: Iterable[ModelGraph], architectures: Sequence[str] = ()
) -> dict[str, Any]:
    """The summary of the graphs a metanetwork was trained on (module doc).

    Args:
        graphs: the meta-training zoo's graphs (one per member; a ``Batch`` is not split).
        architectures: optional names of the zoo's architectures, recorded as given.
    """
    stats = [graph_stats(g) for g in graphs]
    if not stats:
        raise ValueError("training_summary needs at least one graph")
    return {
        "summary_version": SUMMARY_VERSION,
        "graphs": len(stats),
        "architectures": sorted(set(architectures)),
        "edge_types": sorted({t for s in stats for t in s["edge_types"]}),
        "edge_signatures": sorted({t for s in stats for t in s["edge_signatures"]}),
        **{k: [min(s[k] for s in stats), max(s[k] for s in stats)] for k in STATS},
    }


def zoo_summary(zoo_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """:func:`training_summary` of the meta-train members of finished zoos (the graphs
    ``metaprune metanet fit`` trains on, encoded as :class:`~metanet.training.data.ZooDataModule`
    does); what ``metaprune metanet export --zoo DIR`` records."""
    from .training.data import ZooDataModule

    graphs, architectures = [], []
    for zoo in zoo_dirs:
        data = ZooDataModule(str(zoo))
        data.setup("fit")
        graphs.extend(member.graph for member in data.train_members)
        architectures.append(data.zoo.config.arch)
    return training_summary(graphs, architectures)


def derived_summary(config: Mapping[str, Any], export_base: Path | None) -> dict[str, Any]:
    """A summary for an export that has none (module doc)."""
    summary: dict[str, Any] = {
        "summary_version": SUMMARY_VERSION,
        "graphs": None,
        "architectures": [],
        "edge_types": sorted(config.get("edge_types") or []),
        "edge_signatures": None,  # per-type configs record widths, not kernel shapes
        **dict.fromkeys(STATS),
        "derived": "edge types from the config; no graph statistics",
    }
    zoo = None if export_base is None else export_base.with_name(export_base.name + ".zoo.yaml")
    if zoo is not None and zoo.is_file():
        stats = _zoo_stats(zoo)
        if stats is not None:
            arch, stats = stats
            summary.update({k: [stats[k], stats[k]] for k in STATS})
            summary["architectures"] = [arch]
            summary["edge_signatures"] = stats["edge_signatures"]
            summary["derived"] = (
                f"edge types from the config; graph statistics of {arch} (unpruned) from {zoo.name}"
            )
    return summary


def _zoo_stats(path: Path) -> tuple[str, dict[str, Any]] | None:
    """Statistics of a zoo config's architecture, traced on the meta device (no weights)."""
    from graph_encoding.encode import plan_for
    from metaprune.documents import parse_yaml
    from metaprune.models import create_model

    try:
        data = parse_yaml(path.read_bytes(), what=f"zoo config {path.name!r}")
        arch, kwargs = data["arch"], dict(data.get("arch_kwargs") or {})
        in_channels = int(kwargs.get("in_channels", 3))
        with torch.device("meta"):
            model = create_model(arch, **kwargs).eval()
        plan = plan_for(model, torch.empty(1, in_channels, 32, 32, device="meta"))
    except Exception:  # noqa: BLE001 (a zoo file that does not build leaves the stats unknown)
        return None
    return str(arch), graph_stats(plan.layer_table, plan.num_nodes)

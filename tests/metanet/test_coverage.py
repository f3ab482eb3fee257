"""Every edge type that any registered architecture emits has an encoder in the general
(canonical) metanetwork; the per-type one names what it cannot handle.

Graphs are traced on the meta device (:mod:`metaprune.testing.meta_build`): the fast test
takes one architecture per family (~5 s), the slow one all of ``list_models()`` (~35 s).
"""

from __future__ import annotations

import re
from functools import cache

import pytest
import torch

from graph_encoding.schema import COL, EdgeKind
from metanet import MetaNetwork
from metanet.canonical import VALUELESS_KINDS, edge_signature, kernel_shape
from metaprune.models import list_models
from metaprune.testing.meta_build import registered_layer_table

CIFAR_TYPES = ["CONV:9", "IDENTITY:1", "LINEAR:1", "PROJECTION:1"]


def _family(name: str) -> str:
    return re.match(r"(torchvision/)?[a-z]+", name).group(0)


def _one_per_family() -> list[str]:
    families: dict[str, str] = {}
    for name in sorted(list_models(), key=lambda n: (len(n), n)):
        families.setdefault(_family(name), name)
    return sorted(families.values())


@cache
def _table(name: str) -> torch.Tensor:
    return registered_layer_table(name)


@cache
def _general() -> MetaNetwork:
    torch.manual_seed(0)
    return MetaNetwork(1, 4, edge_encoding="canonical", edge_ratio=1.0).double()


def _check_architecture(name: str) -> None:
    table = _table(name)
    assert table.numel() > 0, name
    net = _general()
    rows = table.tolist()
    for row in rows:
        kind = row[COL["kind"]]
        assert EdgeKind(kind).name in net.edges.edge_kinds, (name, row)
        if kind in VALUELESS_KINDS:
            continue
        # the canonical layout reads `width` values as a kh x kw kernel
        kh, kw, width = row[COL["kernel_h"]], row[COL["kernel_w"]], row[COL["width"]]
        assert kh * kw == width, f"{name}: block {row} has width {width} != {kh} x {kw}"
    assert net.unsupported(table) == [], name
    # every distinct (kind, kernel) runs through the one encoder and decoder on a
    # two-edge block of its own row: right number of edits, finite, not all zero
    seen = {}
    for row in rows:
        seen.setdefault(tuple(row[COL[c]] for c in ("kind", "kernel_h", "kernel_w", "width")), row)
    for (kind, kh, kw, width), row in seen.items():
        row = list(row)
        row[COL["out_size"]] = 2
        values = None if kind in VALUELESS_KINDS else torch.randn(2, width, dtype=torch.float64)
        states = net.edges.encode(row, values)
        assert states.shape == (2, 4) and torch.isfinite(states).all(), (name, row)
        if kind in VALUELESS_KINDS:
            continue
        edit = net.edges.decode(row, states)
        assert edit.shape == (2, width) and torch.isfinite(edit).all(), (name, row)
        assert edit.abs().sum() > 0, (name, edge_signature(kind, kh, kw, width))
    # the per-type network of the CIFAR family names exactly what it has no encoder for
    per_type = MetaNetwork(1, 4, edge_types=CIFAR_TYPES)
    keys = {f"{EdgeKind(r[COL['kind']]).name}:{r[COL['width']]}" for r in rows}
    assert per_type.unsupported(table) == sorted(keys - set(CIFAR_TYPES)), name


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", _one_per_family())
def test_general_metanetwork_covers_one_architecture_per_family(name: str) -> None:
    _check_architecture(name)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_general_metanetwork_covers_every_registered_architecture() -> None:
    names = list_models()
    assert len(names) >= 86
    signatures: set[str] = set()
    for name in names:
        _check_architecture(name)
        cols = [COL["kind"], COL["kernel_h"], COL["kernel_w"], COL["width"]]
        signatures.update(edge_signature(*r) for r in _table(name)[:, cols].tolist())
    # what the zoo of registered models asks of the general encoding today (a new kind or
    # kernel shows up here first; the checks above say whether it is handled)
    assert {"CONV:1x1", "CONV:3x3", "CONV:7x7", "CONV:11x11", "DEPTHWISE_CONV:5x5",
            "GROUPED_CONV:3x3", "GATE:1x1", "ATTN_Q:1x1", "IDENTITY:1x1"} <= signatures  # fmt: skip


def test_per_type_network_names_the_kernels_it_lacks() -> None:
    table = _table("torchvision/resnet18")
    per_type = MetaNetwork(1, 4, edge_types=CIFAR_TYPES)
    assert per_type.unsupported(table) == ["CONV:49"]
    assert _general().unsupported(table) == []
    # a general network without a flag for a kind names it by kind and kernel
    no_gate = MetaNetwork(
        1, 4, edge_encoding="canonical", edge_kinds=[k for k in EdgeKind.__members__ if k != "GATE"]
    )
    assert no_gate.unsupported(_table("torchvision/efficientnet_b0")) == ["GATE:1x1"]


def test_kernel_shape_of_blocks_that_are_not_square() -> None:
    assert kernel_shape(EdgeKind.CONV, 3, 3, 9) == (3, 3)
    assert kernel_shape(EdgeKind.CONV, 7, 1, 7) == (7, 1)  # 1-D kernels as the encoder records them
    assert kernel_shape(EdgeKind.CONV, 3, 3, 27) == (1, 27)  # e.g. a 3-D kernel: 1 x width
    assert kernel_shape(EdgeKind.IDENTITY, 1, 1, 1) == (1, 1)
    assert edge_signature(EdgeKind.LINEAR, 49, 1, 49) == "LINEAR:49x1"

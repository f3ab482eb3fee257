"""What the tracer knows about each fx value and each node set, and small fx helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from .schema import EdgeKind, NodeKind, NormKind

__all__ = ["EncodingError", "Chan", "Contributor", "RawSet", "RawBlock", "TupleOf"]


class EncodingError(ValueError):
    """A model, or one of its ops, that the encoder cannot represent exactly."""


@dataclass
class Chan:
    """Channels of one fx value."""

    dim: int  # channel axis (non-negative)
    segs: tuple[tuple[int, int, int], ...]  # (node set id, start, stop)
    inner: int = 1  # features per channel folded in by a flatten
    fresh: int | None = None  # contributor id when this is a layer's sole, pass-through output

    @property
    def size(self) -> int:
        return sum(stop - start for _, start, stop in self.segs)


@dataclass
class Contributor:
    """A layer writing into a node set, with what it puts in the node features."""

    name: str
    block: int  # index into the tracer's raw blocks
    bias: str | None
    bias_start: int = 0
    # norm kind and the state keys it reads, by node-feature slot ("weight", "norm_bias",
    # "running_mean", "running_var"); a functional norm's keys need not share a module path
    norm: tuple[NormKind, dict[str, str]] | None = None


@dataclass
class RawSet:
    name: str
    size: int
    kind: NodeKind
    depth: int
    contributors: list[int] = field(default_factory=list)


@dataclass
class RawBlock:
    name: str
    kind: EdgeKind
    in_set: int
    in_start: int
    in_size: int
    out_set: int
    out_start: int
    out_size: int
    groups: int = 1
    width: int = 1
    weight: str | None = None
    kernel: tuple[int, ...] = ()
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    depth: int = 0
    heads: int = 1


class TupleOf:
    def __init__(self, items: object) -> None:
        self.items = list(items) if isinstance(items, (list, tuple)) else [items]


def map_args(a: object, env: dict) -> object:
    return torch.fx.node.map_arg(a, lambda n: env.get(n))


def flatten(a: object) -> list:
    if isinstance(a, (list, tuple)):
        return [y for x in a for y in flatten(x)]
    if isinstance(a, dict):
        return [y for x in a.values() for y in flatten(x)]
    if isinstance(a, TupleOf):
        return flatten(a.items)
    return [a]


def shape_of(node: object) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    if meta is None or not hasattr(meta, "shape"):
        raise EncodingError(f"{node}: no shape recorded for this value")
    return tuple(int(s) for s in meta.shape)


def rank_of(node: object) -> int:
    return len(shape_of(node))


def sole_user(node: object) -> bool:
    return isinstance(node, torch.fx.Node) and len(node.users) == 1


def describe(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    path = list(stack.values())[-1][0] if stack else ""
    op = getattr(node.target, "__name__", str(node.target))
    return f"{path + ': ' if path else ''}{node.name} ({op})"


def need(x: object, path: str, mod: nn.Module) -> Chan:
    if not isinstance(x, Chan):
        raise EncodingError(
            f"{path}: {type(mod).__name__} input does not come from the network input"
        )
    return x


def check_aligned(x: Chan, y: Chan, name: str) -> None:
    if x.size != y.size or x.inner != y.inner:
        raise EncodingError(f"{name}: operands have {x.size} and {y.size} channels")

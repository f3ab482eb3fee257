"""How the tracer follows channels through functions: shapes, concatenation, adds, gates."""

from __future__ import annotations

import math

import torch
import torch.fx

from .channels import (
    Chan,
    EncodingError,
    TupleOf,
    check_aligned,
    describe,
    rank_of,
    shape_of,
    sole_user,
)
from .schema import EdgeKind, NodeKind

__all__ = ["OpRules"]


class OpRules:
    """Mixin of :class:`~graph_encoding.trace.Tracer`: channel bookkeeping through ops."""

    def passthrough(self, node: torch.fx.Node, x: Chan) -> Chan:
        return Chan(x.dim, x.segs, x.inner, x.fresh if sole_user(node.args[0]) else None)

    def keep(self, node: torch.fx.Node, x: object) -> Chan | None:
        return Chan(x.dim, x.segs, x.inner) if isinstance(x, Chan) else None

    def reduce(self, node: torch.fx.Node, x: Chan) -> Chan:
        """Pools and reductions over non-channel axes."""
        in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
        if len(in_shape) == len(out_shape):
            if out_shape[x.dim] != in_shape[x.dim]:
                raise EncodingError(
                    f"{describe(node)}: reduction over the channel axis is not supported"
                )
            return Chan(x.dim, x.segs, x.inner)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        dims = [d % len(in_shape) for d in dims]
        if x.dim in dims:
            raise EncodingError(
                f"{describe(node)}: reduction over the channel axis is not supported"
            )
        return Chan(x.dim - sum(d < x.dim for d in dims), x.segs, x.inner)

    def reshape(self, node: torch.fx.Node, x: Chan, name: str) -> Chan:
        in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
        before = math.prod(in_shape[: x.dim])
        channels = in_shape[x.dim]
        for d in range(len(out_shape)):
            if math.prod(out_shape[:d]) != before:
                continue
            if out_shape[d] == channels and math.prod(out_shape[d + 1 :]) == math.prod(
                in_shape[x.dim + 1 :]
            ):
                return Chan(d, x.segs, x.inner, x.fresh if sole_user(node.args[0]) else None)
            # the channel axis merged with the axes after it (flatten)
            tail, e = channels, x.dim + 1
            while tail < out_shape[d] and e < len(in_shape):
                tail *= in_shape[e]
                e += 1
            if tail == out_shape[d]:
                return Chan(d, x.segs, x.inner * (tail // channels))
        raise EncodingError(
            f"{name}: cannot follow the channel axis {x.dim} through a reshape from "
            f"{tuple(in_shape)} to {tuple(out_shape)}"
        )

    def permute(self, node: torch.fx.Node, args: tuple, name: str) -> Chan:
        x, rest = args[0], args[1:]
        rank = rank_of(node.args[0])
        if node.target in {torch.transpose, "transpose"}:
            a, b = (int(r) % rank for r in rest[:2])
            order = list(range(rank))
            order[a], order[b] = order[b], order[a]
        else:
            order = (
                list(rest[0])
                if len(rest) == 1 and isinstance(rest[0], (list, tuple))
                else list(rest)
            )
            order = [int(o) % rank for o in order]
        return Chan(order.index(x.dim), x.segs, x.inner)

    def getitem(self, node: torch.fx.Node, args: tuple, name: str) -> object:
        x, index = args
        if isinstance(x, TupleOf):
            return x.items[index]
        if not isinstance(x, Chan):
            return None
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis or i is None or isinstance(i, Chan) for i in index):
            raise EncodingError(
                f"{name}: indexing with {index!r} is not supported on channel tensors"
            )
        if x.dim < len(index) and index[x.dim] != slice(None):
            raise EncodingError(f"{name}: indexing the channel axis is not supported")
        dropped = sum(isinstance(i, int) for i in index[: x.dim])
        return Chan(x.dim - dropped, x.segs, x.inner)

    def cat(self, node: torch.fx.Node, args: tuple, kwargs: dict, name: str) -> Chan:
        tensors = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        chans = [t for t in tensors if isinstance(t, Chan)]
        dim = dim % rank_of(node)
        if all(c.dim == dim for c in chans) and len(chans) == len(tensors):
            if any(c.inner != 1 for c in chans):
                raise EncodingError(f"{name}: concatenating flattened channels is not supported")
            return Chan(dim, tuple(s for c in chans for s in c.segs))
        first = chans[0]
        if any(c.dim != first.dim or c.segs != first.segs for c in chans) or first.dim == dim:
            raise EncodingError(f"{name}: concatenation mixes channel tensors on axis {dim}")
        return Chan(first.dim, first.segs, first.inner)

    def add(self, node: torch.fx.Node, args: tuple, name: str) -> Chan | None:
        chans = [(a, n) for a, n in zip(args, node.args) if isinstance(a, Chan)]
        if len(chans) == 1:
            return self.keep(node, chans[0][0])
        (x, xn), (y, yn) = chans[:2]
        check_aligned(x, y, name)
        fresh = [c.fresh for c, n in chans if c.fresh is not None and sole_user(n)]
        if fresh:
            target = self.set_of(fresh[0])
            for f in fresh[1:]:
                self.merge(target, self.set_of(f), EdgeKind.PROJECTION, name)
        else:
            target = self.new_set(f"{name}:sum", x.size, NodeKind.SUM)
        for c, n in chans:
            if c.fresh is None or not sole_user(n):
                self.identity_into(c, target, name)
        return Chan(x.dim, ((target, 0, x.size),), fresh=None)

    def mul(self, node: torch.fx.Node, args: tuple, name: str) -> Chan | None:
        chans = [(a, n) for a, n in zip(args, node.args) if isinstance(a, Chan)]
        if len(chans) == 1:
            return self.keep(node, chans[0][0])
        (x, xn), (y, yn) = chans[:2]
        gates = [c for c, n in chans if c.fresh is not None and sole_user(n)]
        kept = [c for c, n in chans if not (c.fresh is not None and sole_user(n))]
        if len(kept) != 1 or x.size != y.size:
            raise EncodingError(
                f"{name}: a product of channel tensors must be a gate (one operand a layer's own "
                f"output) applied to another tensor of the same channels"
            )
        base = kept[0]
        if (
            len(base.segs) != 1
            or base.segs[0][1] != 0
            or base.segs[0][2] != self.sets[self.find(base.segs[0][0])].size
        ):
            raise EncodingError(f"{name}: a gate must apply to a whole node set")
        self.merge(base.segs[0][0], self.set_of(gates[0].fresh), EdgeKind.GATE, name)
        return Chan(base.dim, base.segs, base.inner)

    # ------------------------------------------------------------ assembly

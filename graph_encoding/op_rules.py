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
from .vocab import POOL_FUNCTIONS, SWAPS

__all__ = ["OpRules", "take"]


def take(x: Chan, indices: range | list[int]) -> tuple[tuple[int, int, int], ...]:
    """Segments of ``x``'s channels ``indices`` (in that order), runs coalesced: a slice is
    a sub-range, a split several, a channel shuffle a permutation of the node indices."""
    nodes = [(s, i) for s, a, b in x.segs for i in range(a, b)]
    segs: list[list[int]] = []
    for k in indices:
        s, i = nodes[k]
        if segs and segs[-1][0] == s and segs[-1][2] == i:
            segs[-1][2] = i + 1
        else:
            segs.append([s, i, i + 1])
    return tuple((s, a, b) for s, a, b in segs)


class OpRules:
    """Mixin of :class:`~graph_encoding.trace.Tracer`: channel bookkeeping through ops."""

    def passthrough(self, node: torch.fx.Node, x: Chan) -> Chan:
        return Chan(x.dim, x.segs, x.inner, x.fresh if sole_user(node.args[0]) else None)

    def keep(self, node: torch.fx.Node, x: object) -> Chan | None:
        return Chan(x.dim, x.segs, x.inner) if isinstance(x, Chan) else None

    def pad(self, node: torch.fx.Node, args: tuple, kwargs: dict, name: str) -> Chan:
        """``F.pad`` over spatial / token axes keeps the channels; padding channels does not."""
        x = args[0]
        pad = args[1] if len(args) > 1 else kwargs["pad"]
        rank = rank_of(node.args[0])
        for k in range(len(pad) // 2):
            if rank - 1 - k == x.dim and (pad[2 * k] or pad[2 * k + 1]):
                raise EncodingError(f"{name}: padding the channel axis is not supported")
        return Chan(x.dim, x.segs, x.inner)

    def roll(self, node: torch.fx.Node, args: tuple, kwargs: dict, name: str) -> Chan:
        """``torch.roll`` over spatial / token axes (Swin's shifted windows)."""
        x = args[0]
        dims = args[2] if len(args) > 2 else kwargs.get("dims")
        rank = rank_of(node.args[0])
        dims = [dims] if isinstance(dims, int) else list(dims or range(rank))
        if x.dim in [d % rank for d in dims] or x.inner != 1:
            raise EncodingError(f"{name}: rolling the channel axis is not supported")
        return Chan(x.dim, x.segs)

    def reduce(self, node: torch.fx.Node, x: Chan) -> Chan | None:
        """Pools, resizes and reductions. Over other axes the channels stay; a reduction
        over the whole channel axis (``x.mean(1, keepdim=True)``, GRN's channel mean) is a
        statistic of all channels, invariant to their order, and carries none."""
        in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
        pool = node.op == "call_module" or node.target in POOL_FUNCTIONS
        if len(in_shape) == len(out_shape):
            if out_shape[x.dim] != in_shape[x.dim]:
                if not pool and out_shape[x.dim] == 1:
                    return None
                raise EncodingError(
                    f"{describe(node)}: reduction over the channel axis is not supported"
                )
            return Chan(x.dim, x.segs, x.inner)
        if node.target in {"norm", torch.norm}:  # norm(p, dim): the axes come second
            dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
        else:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        dims = [d % len(in_shape) for d in dims] or list(range(len(in_shape)))
        if x.dim in dims:
            if not pool:
                return None
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
        # axes before the channel axis merged into it (TResNet's space-to-depth): the
        # channels repeat once per position of those axes
        for d in range(len(out_shape)):
            for k in range(x.dim):
                outer = math.prod(in_shape[k : x.dim])
                if (
                    x.inner == 1
                    and math.prod(out_shape[:d]) == math.prod(in_shape[:k])
                    and out_shape[d] == outer * channels
                    and math.prod(out_shape[d + 1 :]) == math.prod(in_shape[x.dim + 1 :])
                ):
                    return Chan(d, x.segs * outer)
        raise EncodingError(
            f"{name}: cannot follow the channel axis {x.dim} through a reshape from "
            f"{tuple(in_shape)} to {tuple(out_shape)}"
        )

    def permute(self, node: torch.fx.Node, args: tuple, name: str) -> Chan:
        x, rest = args[0], args[1:]
        rank = rank_of(node.args[0])
        if node.target in SWAPS:
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
            picked = x.items[index]
            return TupleOf(picked) if isinstance(index, slice) else picked
        if not isinstance(x, Chan):
            return None
        index = index if isinstance(index, tuple) else (index,)
        if any(
            isinstance(i, Chan) or not isinstance(i, (int, slice, type(None), type(...)))
            for i in index
        ):
            raise EncodingError(
                f"{name}: indexing with {index!r} is not supported on channel tensors"
            )
        rank = rank_of(node.args[0])
        if ... in index:  # expand the ellipsis to full slices
            at = index.index(...)
            fill = rank - sum(i is not None for i in index if i is not ...)
            index = index[:at] + (slice(None),) * fill + index[at + 1 :]
        index = index + (slice(None),) * (rank - sum(i is not None for i in index))
        axis = out_axis = 0
        for i in index:
            if i is None:
                out_axis += 1
                continue
            if axis == x.dim:
                if isinstance(i, int):
                    raise EncodingError(
                        f"{name}: selecting a single channel (index {i}) is not supported"
                    )
                if i == slice(None):
                    return Chan(out_axis, x.segs, x.inner)
                if x.inner != 1:
                    raise EncodingError(f"{name}: slicing flattened channels is not supported")
                return Chan(out_axis, take(x, range(*i.indices(x.size))))
            axis += 1
            out_axis += not isinstance(i, int)
        raise EncodingError(f"{name}: cannot follow the channel axis through {index!r}")

    def split(self, node: torch.fx.Node, args: tuple, kwargs: dict, name: str) -> TupleOf:
        """``split`` / ``chunk`` / ``tensor_split`` / ``unbind``: on the channel axis every
        piece is a sub-range of the input's nodes; on another axis every piece keeps them."""
        x = args[0]
        rank = rank_of(node.args[0])
        unbind = node.target in {torch.unbind, "unbind"}
        dim = args[1 if unbind else 2] if len(args) > (1 if unbind else 2) else kwargs.get("dim", 0)
        dim = int(dim) % rank
        metas = node.meta["tensor_meta"]
        if dim != x.dim:
            shift = int(unbind and dim < x.dim)
            return TupleOf([Chan(x.dim - shift, x.segs, x.inner) for _ in metas])
        if unbind:
            raise EncodingError(f"{name}: unbinding the channel axis is not supported")
        if x.inner != 1:
            raise EncodingError(f"{name}: splitting flattened channels is not supported")
        pieces, start = [], 0
        for m in metas:
            size = int(m.shape[dim])
            pieces.append(Chan(dim, take(x, range(start, start + size))))
            start += size
        return TupleOf(pieces)

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
        if any(c.dim != first.dim for c in chans) or first.dim == dim:
            raise EncodingError(f"{name}: concatenation mixes channel tensors on axis {dim}")
        if any(c.segs != first.segs for c in chans):
            # tokens of different layers side by side (PiT's class token): the next layer
            # reads both with one weight, so their channels are tied like a residual sum
            return self.join(
                [(t, n) for t, n in zip(tensors, node.args[0]) if isinstance(t, Chan)], name
            )
        return Chan(first.dim, first.segs, first.inner)

    def add(self, node: torch.fx.Node, args: tuple, name: str) -> Chan | None:
        chans = [(a, n) for a, n in zip(args, node.args) if isinstance(a, Chan)]
        return self.join(chans, name)

    def join(self, chans: list[tuple[Chan, object]], name: str) -> Chan | None:
        """Channel tensors combined channel by channel: one node set (merged sets of the
        layers whose sole output they are, identity edges from the rest)."""
        if len(chans) == 1:
            c = chans[0][0]
            return Chan(c.dim, c.segs, c.inner)
        (x, xn), (y, yn) = chans[:2]
        check_aligned(x, y, name)
        if all(c.segs == x.segs and c.dim == x.dim for c, _ in chans):
            return Chan(x.dim, x.segs, x.inner)  # x + f(x), f channel-wise: the same nodes
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
        if x.segs == y.segs and x.dim == y.dim and x.inner == y.inner:
            return self.keep(node, x)  # a channel-wise product of the same channels (GRN)
        gates = [c for c, n in chans if c.fresh is not None and sole_user(n)]
        kept = [c for c, n in chans if not (c.fresh is not None and sole_user(n))]
        if not kept and len(gates) == 2:  # two layers' outputs multiplied (StarNet's star)
            kept = gates[:1]
            gates = gates[1:]
        if x.size != y.size or x.dim != y.dim or x.inner != y.inner:
            raise EncodingError(
                f"{name}: a product of channel tensors must be a gate (one operand a layer's own "
                f"output) applied to another tensor of the same channels"
            )
        if len(kept) != 1:
            # a product of branches none of which is one layer's whole output (MambaOut's,
            # GhostNet-V2's gated branches): their channels are tied one to one, as in a sum
            s = self.new_set(f"{name}:product", x.size, NodeKind.SUM)
            for c, _ in chans:
                self.identity_into(c, s, name)
            return Chan(x.dim, ((s, 0, x.size),), x.inner)
        base = kept[0]
        whole = (
            len(base.segs) == 1
            and base.segs[0][1] == 0
            and base.segs[0][2] == self.sets[self.find(base.segs[0][0])].size
        )
        if not whole:  # gating a slice or a concatenation: the gated channels get a node set
            s = self.new_set(f"{name}:gated", base.size, NodeKind.CONCAT)
            self.identity_into(base, s, name)
            base = Chan(base.dim, ((s, 0, base.size),), base.inner)
        self.merge(base.segs[0][0], self.set_of(gates[0].fresh), EdgeKind.GATE, name)
        return Chan(base.dim, base.segs, base.inner)

    def addcmul(self, node: torch.fx.Node, args: tuple, name: str) -> Chan:
        """``addcmul(b, a, x)``: a channel-wise affine (ResMLP, GRN) of one channel tensor;
        its parameters travel beside the graph like layer scales."""
        chans = [a for a in args[:3] if isinstance(a, Chan)]
        if any(c.segs != chans[0].segs or c.dim != chans[0].dim for c in chans):
            raise EncodingError(f"{name}: addcmul mixes tensors of different channels")
        return Chan(chans[0].dim, chans[0].segs, chans[0].inner)

    # ------------------------------------------------------------ assembly

"""Channels spread over several axes: attention heads, fused q/k/v, channel shuffles.

A reshape that splits the channel axis into factors (``(3, heads, head_dim)`` in timm's
``Attention``, ``(heads, 2 * key_dim + val_dim)`` in LeViT, ``(groups, C // groups)`` in a
channel shuffle) gives a :class:`Spread`: a tensor of node ids indexed by those factors,
and the axes where each factor lives. Permutes move the factor axes, indexing / ``split`` /
``chunk`` / ``unbind`` select along a factor, and a reshape that merges the factors back
into one axis returns an ordinary channel axis whose node order is whatever the factors'
order then is (a shuffle is a permutation of node indices, no new edges).

``q @ k^T`` (or ``scaled_dot_product_attention``) contracting a factor records the roles
of the nodes: the projection writing them is cut, in :meth:`Tracer.finish`, into q / k / v
attention blocks over contiguous runs of its rows, sharing its weight tensor. The
attention scores carry no channels.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F

from .channels import Chan, EncodingError, TupleOf, describe, rank_of, shape_of
from .schema import EdgeKind, NodeKind
from .vocab import ELEMENTWISE_MODULES, PERMUTES, SWAPS

__all__ = ["Spread", "SpreadRules", "has_spread", "ATTEND"]

_SHIFT = 32  # node id = set << _SHIFT | index
_MATMUL = {operator.matmul, torch.matmul, "matmul"}
_SCALE = {operator.mul, torch.mul, "mul", operator.truediv, torch.div, "div"}
_ATTEND = _MATMUL | {F.scaled_dot_product_attention}
ATTEND = _ATTEND  # products the tracer sends here even between plain channel tensors
_MUL = {operator.mul, torch.mul, "mul"}
_SUM = {torch.sum, "sum"}
_SOFTMAX = {torch.softmax, F.softmax, "softmax"}
_KEEP_METHODS = {"contiguous", "clone", "to", "float", "type_as", "detach"}
_RESHAPES = {torch.reshape, "reshape", "view", torch.flatten, "flatten", "reshape_as", "view_as"}


@dataclass(frozen=True)
class Spread:
    """``ids[i0, i1, ...]`` is the node of the channel at index ``i_k`` on axis ``axes[k]``."""

    ids: torch.Tensor
    axes: tuple[int, ...]

    def moved(self, order: list[int]) -> Spread:
        """After ``permute(order)``: axis ``a`` goes to position ``order.index(a)``."""
        return Spread(self.ids, tuple(order.index(a) for a in self.axes))

    def along(self, axis: int) -> int:
        return self.axes.index(axis)

    def drop(self, k: int, i: int) -> Spread:
        """Select index ``i`` of factor ``k`` (its axis disappears)."""
        gone = self.axes[k]
        axes = tuple(a - (a > gone) for j, a in enumerate(self.axes) if j != k)
        return Spread(self.ids.select(k, i), axes)

    def as_chan(self, dim: int) -> Chan:
        """The factors merged into one channel axis, in the order of their axes."""
        order = sorted(range(len(self.axes)), key=lambda k: self.axes[k])
        flat = self.ids.permute(order).reshape(-1).tolist()
        segs: list[list[int]] = []
        for node in flat:
            s, i = node >> _SHIFT, node & ((1 << _SHIFT) - 1)
            if segs and segs[-1][0] == s and segs[-1][2] == i:
                segs[-1][2] = i + 1
            else:
                segs.append([s, i, i + 1])
        return Chan(dim, tuple((s, a, b) for s, a, b in segs))


def has_spread(values: list) -> bool:
    return any(isinstance(v, Spread) for v in values)


def _ids(x: Chan) -> torch.Tensor:
    return torch.cat([(s << _SHIFT) + torch.arange(a, b, dtype=torch.long) for s, a, b in x.segs])


class SpreadRules:
    """Mixin of :class:`~graph_encoding.trace.Tracer`: channels spread over several axes."""

    def spread(self, node: torch.fx.Node, x: Chan) -> Spread | None:
        """A reshape splitting the channel axis into factors (None: not such a reshape)."""
        in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
        if x.inner != 1:
            return None
        before = math.prod(in_shape[: x.dim])
        after = math.prod(in_shape[x.dim + 1 :])
        for d in reversed(range(len(out_shape))):  # size-1 axes before belong to the prefix
            if math.prod(out_shape[:d]) != before:
                continue
            for n in range(2, len(out_shape) - d + 1):
                dims = out_shape[d : d + n]
                if math.prod(dims) == x.size and math.prod(out_shape[d + n :]) == after:
                    return Spread(_ids(x).reshape(dims), tuple(range(d, d + n)))
        return None

    def spread_op(self, node: torch.fx.Node, args: tuple, kwargs: dict) -> object:
        """One op on spread channels; a result left with one factor is plain channels."""
        out = self._spread_op(node, args, kwargs)
        if isinstance(out, TupleOf):
            return TupleOf([_plain(v) for v in out.items])
        return _plain(out)

    def _spread_op(self, node: torch.fx.Node, args: tuple, kwargs: dict) -> object:
        name = describe(node)
        target = node.target
        x = args[0] if args else None
        if node.op == "call_module":
            mod = self.modules[str(target)]
            if isinstance(mod, ELEMENTWISE_MODULES) and isinstance(x, Spread):
                return x  # q_norm / k_norm = Identity, dropout
            raise EncodingError(
                f"{target}: module {type(mod).__name__} on channels spread over several "
                "axes (attention heads) is not supported"
            )
        if target is getattr or (node.op == "call_method" and target in {"size", "dim"}):
            return None  # shapes carry no channels
        if target is torch.einsum:
            return self._einsum(node, args, name)
        if target in _MUL and all(isinstance(a, Spread) for a in args[:2]):
            return self._gate(args[0], args[1], name)
        if target in _SUM and isinstance(x, Spread):
            return self._sum(node, x, args, kwargs, name)
        if target in _SOFTMAX and isinstance(x, Spread):
            return x  # over a factor (SK / ResNeSt's radix): pairs channels already paired
        if target is operator.getitem and isinstance(x, TupleOf):
            picked = x.items[args[1]]
            return TupleOf(picked) if isinstance(args[1], slice) else picked
        if not isinstance(x, Spread) and target not in _ATTEND:
            raise EncodingError(f"{name}: channels spread over several axes used as an operand")
        if target in PERMUTES:
            return x.moved(_order(node, args))
        if target is operator.getitem:
            return self._index(node, x, args[1], name)
        if target in {torch.unbind, "unbind", torch.split, "split", torch.chunk, "chunk"}:
            return self._split(node, x, args, kwargs, name)
        if target in _SCALE and not has_spread(list(args[1:])):
            return x  # q * scale
        if node.op == "call_method" and target in _KEEP_METHODS:
            return x
        if target in _ATTEND:
            return self._attend(node, args, name)
        if target in _RESHAPES:
            return self._merge(node, x, name)
        op = getattr(target, "__name__", str(target))
        raise EncodingError(
            f"{name}: op '{op}' ({node.op}) on channels spread over several axes "
            "(attention heads) is not supported"
        )

    # ------------------------------------------------------------ branches (SK, ResNeSt)
    def stack(self, node: torch.fx.Node, args: tuple, kwargs: dict, name: str) -> Spread:
        """``torch.stack`` of branches with as many channels: a new factor over them."""
        tensors = args[0]
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % rank_of(node)
        if not all(isinstance(t, Chan) for t in tensors):
            raise EncodingError(f"{name}: stacking channel tensors with other tensors")
        first = tensors[0]
        if any(t.dim != first.dim or t.size != first.size or t.inner != 1 for t in tensors):
            raise EncodingError(f"{name}: stacking tensors of different channels")
        axis = first.dim + (dim <= first.dim)
        return Spread(torch.stack([_ids(t) for t in tensors]), (dim, axis))

    def _sum(self, node: torch.fx.Node, x: Spread, args: tuple, kwargs: dict, name: str) -> Chan:
        """A sum over a factor: the slices along it are added channel by channel."""
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
        if not isinstance(dim, int) or len(x.axes) != 2:
            raise EncodingError(f"{name}: a sum over channel factors {x.axes} is not supported")
        dim %= rank_of(node.args[0])
        if dim not in x.axes:
            raise EncodingError(f"{name}: a sum over another axis of channel factors")
        k = x.axes.index(dim)
        rest = x.axes[1 - k] - (not keep and x.axes[1 - k] > dim)
        slices = [Spread(x.ids.select(k, i), (rest,)).as_chan(rest) for i in range(x.ids.shape[k])]
        return self.join([(c, None) for c in slices], name)

    def _gate(self, a: Spread, b: Spread, name: str) -> Spread:
        """Branches times their attention (SK, ResNeSt): the later-made operand gates the
        other, node by node; branches not forming one node set in order get one first."""
        if a.axes != b.axes or a.ids.shape != b.ids.shape:
            raise EncodingError(f"{name}: a product of differently spread channels")
        base, gate = (a, b) if _set_of(a.ids) < _set_of(b.ids) else (b, a)
        if not self._whole(gate.ids):
            raise EncodingError(f"{name}: a gate must be one layer's output in order")
        if not self._whole(base.ids):
            flat = Spread(base.ids.reshape(-1), (0,)).as_chan(0)
            s = self.new_set(f"{name}:gated", flat.size, NodeKind.CONCAT)
            self.identity_into(flat, s, name)
            base = Spread(
                ((s << _SHIFT) + torch.arange(flat.size)).reshape(base.ids.shape), base.axes
            )
        self.merge(_set_of(base.ids), _set_of(gate.ids), EdgeKind.GATE, name)
        return base

    def _whole(self, ids: torch.Tensor) -> bool:
        """Whether ``ids`` are all nodes of one set, in order."""
        flat = ids.reshape(-1)
        s = int(flat[0]) >> _SHIFT
        return bool(
            self.sets[self.find(s)].size == flat.numel()
            and torch.equal(flat, (s << _SHIFT) + torch.arange(flat.numel()))
        )

    # ------------------------------------------------------------ selection
    def _index(self, node: torch.fx.Node, x: Spread, index: object, name: str) -> Spread:
        index = index if isinstance(index, tuple) else (index,)
        if any(i is None or i is ... for i in index):
            raise EncodingError(f"{name}: indexing channel factors with {index!r}")
        ids, axes, out = x.ids, list(x.axes), []
        for axis, i in enumerate(index):
            if axis in x.axes:
                k = x.axes.index(axis)
                if isinstance(i, int):
                    out.append((k, i))
                elif i != slice(None):
                    raise EncodingError(f"{name}: slicing a channel factor is not supported")
            elif not isinstance(i, (int, slice)):
                raise EncodingError(f"{name}: indexing with {i!r} is not supported")
        dropped = [a for a, i in enumerate(index) if isinstance(i, int) and a not in x.axes]
        for k, i in sorted(out, reverse=True):
            ids = ids.select(k, i)
            del axes[k]
        gone = dropped + [x.axes[k] for k, _ in out]
        return Spread(ids, tuple(a - sum(g < a for g in gone) for a in axes))

    def _split(
        self, node: torch.fx.Node, x: Spread, args: tuple, kwargs: dict, name: str
    ) -> TupleOf:
        rank = rank_of(node.args[0])
        unbind = node.target in {torch.unbind, "unbind"}
        at = 1 if unbind else 2
        dim = int(args[at] if len(args) > at else kwargs.get("dim", 0)) % rank
        metas = node.meta["tensor_meta"]
        if dim not in x.axes:
            shift = int(unbind)
            return TupleOf(
                [Spread(x.ids, tuple(a - (shift and a > dim) for a in x.axes)) for _ in metas]
            )
        k = x.axes.index(dim)
        if unbind:
            return TupleOf([x.drop(k, i) for i in range(x.ids.shape[k])])
        pieces, start = [], 0
        for m in metas:
            size = int(m.shape[dim])
            pieces.append(Spread(x.ids.narrow(k, start, size), x.axes))
            start += size
        return TupleOf(pieces)

    # ------------------------------------------------------------ attention
    def _attend(self, node: torch.fx.Node, args: tuple, name: str) -> Spread | None:
        args = tuple(_as_spread(a) for a in args)  # one head: plain channels are one factor
        if node.target is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            if not all(isinstance(t, Spread) for t in (q, k, v)):
                raise EncodingError(f"{name}: attention over tensors that are not q, k, v")
            kt = k.moved(_swap_last(rank_of(node.args[1])))
            self._scores(q, kt, rank_of(node.args[0]), name)
            return self._values(v, rank_of(node), name)
        a, b = args[:2]
        rank = rank_of(node)
        if isinstance(a, Spread) and isinstance(b, Spread):
            self._scores(a, b, rank, name)
            return None
        if a is None and isinstance(b, Spread):
            return self._values(b, rank, name)
        if isinstance(a, Spread) and b is None and rank - 1 not in a.axes and rank - 2 in a.axes:
            # v @ scores^T with channels before the tokens (LeViT's and SHViT's conv layout)
            heads = a.ids.numel() // a.ids.shape[a.along(rank - 2)]
            self.mark_roles(a.ids, EdgeKind.ATTN_V, heads, name)
            return a
        raise EncodingError(f"{name}: a product of channel factors that is not attention")

    def _einsum(self, node: torch.fx.Node, args: tuple, name: str) -> Spread | None:
        """``einsum`` written as ``q @ k^T`` or ``scores @ v`` (torchvision's MaxViT)."""
        equation = str(args[0]).replace(" ", "")
        operands = list(args[1] if isinstance(args[1], (list, tuple)) else args[1:])
        inputs, out = equation.split("->") if "->" in equation else (equation, None)
        subs = inputs.split(",")
        if out is None or len(subs) != 2 or len(operands) != 2 or "." in equation:
            raise EncodingError(f"{name}: einsum '{equation}' on channels is not supported")
        a, b = operands
        if isinstance(a, Spread) and isinstance(b, Spread):
            contracted = [c for c in subs[0] if c in subs[1] and c not in out]
            if len(contracted) == 1:
                c = contracted[0]
                if subs[0].index(c) in a.axes and subs[1].index(c) in b.axes:
                    ka, kb = a.along(subs[0].index(c)), b.along(subs[1].index(c))
                    heads = a.ids.numel() // a.ids.shape[ka]
                    if b.ids.shape[kb] == a.ids.shape[ka]:
                        self.mark_roles(a.ids, EdgeKind.ATTN_Q, heads, name)
                        self.mark_roles(b.ids, EdgeKind.ATTN_K, heads, name)
                        return None
        if a is None and isinstance(b, Spread):
            letters = [subs[1][axis] for axis in b.axes]
            if all(c in out for c in letters):  # no channel factor contracted
                heads = b.ids.numel() // b.ids.shape[b.along(max(b.axes))]
                self.mark_roles(b.ids, EdgeKind.ATTN_V, heads, name)
                return Spread(b.ids, tuple(out.index(c) for c in letters))
        raise EncodingError(f"{name}: einsum '{equation}' is not attention over channel factors")

    def _scores(self, q: Spread, k: Spread, rank: int, name: str) -> None:
        """``q @ k``: q's last axis and k's second-last are a contracted channel factor."""
        if rank - 1 not in q.axes or rank - 2 not in k.axes:
            raise EncodingError(
                f"{name}: attention must contract channels (q's last axis, k's second-last); "
                "an attention over tokens' channels (cross-covariance) is not supported"
            )
        heads = q.ids.numel() // q.ids.shape[q.along(rank - 1)]
        self.mark_roles(q.ids, EdgeKind.ATTN_Q, heads, name)
        self.mark_roles(k.ids, EdgeKind.ATTN_K, heads, name)

    def _values(self, v: Spread, rank: int, name: str) -> Spread:
        """``scores @ v``: v's channels stay on the last axis."""
        if rank - 1 not in v.axes or rank - 2 in v.axes:
            raise EncodingError(f"{name}: attention values must keep channels on the last axis")
        heads = v.ids.numel() // v.ids.shape[v.along(rank - 1)]
        self.mark_roles(v.ids, EdgeKind.ATTN_V, heads, name)
        return v

    def mark_roles(self, ids: torch.Tensor, kind: EdgeKind, heads: int, name: str) -> None:
        for node in ids.reshape(-1).tolist():
            key = (node >> _SHIFT, node & ((1 << _SHIFT) - 1))
            if self.roles.get(key, (kind, heads)) != (kind, heads):
                raise EncodingError(f"{name}: one channel used in two attention roles")
            self.roles[key] = (kind, heads)

    # ------------------------------------------------------------ merge
    def _merge(self, node: torch.fx.Node, x: Spread, name: str) -> Chan:
        in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
        lo, hi = min(x.axes), max(x.axes)
        between = [a for a in range(lo, hi + 1) if a not in x.axes]
        if all(in_shape[a] == 1 for a in between):  # the factors are adjacent (up to 1s)
            before = math.prod(in_shape[:lo])
            after = math.prod(in_shape[hi + 1 :])
            for d in range(len(out_shape)):
                if (
                    math.prod(out_shape[:d]) == before
                    and out_shape[d] == x.ids.numel()
                    and math.prod(out_shape[d + 1 :]) == after
                ):
                    return x.as_chan(d)
        raise EncodingError(
            f"{name}: cannot merge channel factors on axes {x.axes} through a reshape from "
            f"{tuple(in_shape)} to {tuple(out_shape)}"
        )


def _plain(value: object) -> object:
    if isinstance(value, Spread) and len(value.axes) == 1:
        return value.as_chan(value.axes[0])
    return value


def _as_spread(value: object) -> object:
    if isinstance(value, Chan) and value.inner == 1:
        return Spread(_ids(value), (value.dim,))
    return value


def _set_of(ids: torch.Tensor) -> int:
    return int(ids.reshape(-1)[0]) >> _SHIFT


def _order(node: torch.fx.Node, args: tuple) -> list[int]:
    rank = rank_of(node.args[0])
    rest = args[1:]
    if node.target in SWAPS:
        a, b = (int(r) % rank for r in rest[:2])
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
        return order
    dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
    return [int(o) % rank for o in dims]


def _swap_last(rank: int) -> list[int]:
    order = list(range(rank))
    order[-1], order[-2] = order[-2], order[-1]
    return order

"""``MetaLayer``: one bidirectional message-passing layer of the metanetwork, computed on
the encoder's dense per-layer blocks instead of scattering over ``edge_index``.

A dense block of ``out x in`` edges with hidden edge state ``e`` of shape
``(out, in // groups, h)`` is one tensor: messages into the block's output nodes are a
reduction along its ``in`` axis, messages into its input nodes (the reverse direction) a
reduction along its ``out`` axis. Factors that depend only on the receiving node are pulled
out of the reductions, and the statistics of several blocks writing into the same nodes are
combined on contiguous node ranges (slices and ``cat``, no scatter). Blocks of one shape
(the many 16x16, 32x32, 64x64 convs of a ResNet) are stacked into "classes" and processed
together. Each class's two directions and edge update run in one autograd function with a
hand-written backward (:class:`_DenseBlocks`). The result is the same function as
:class:`metanet.reference.ReferenceMetaLayer`, the plain PyG formulation (tests compare them
in float64 to 1e-12).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graph_encoding.schema import COL, EdgeKind

__all__ = ["MetaLayer", "BlockLayout", "BlockSpec", "BlockClass", "sign_vector", "compile_kernels"]

STD_EPS = 1e-5  # the clamp of PyG's StdAggregation; reproduced so both layers agree
_STD_FLOOR = math.sqrt(STD_EPS)


def sign_vector(hidden: int) -> Tensor:
    """``+1`` on the first ``hidden // 2`` channels, ``-1`` on the rest: multiplies the edge
    features of the reverse direction so that the shared layer can tell directions apart."""
    s = torch.ones(hidden)
    s[hidden // 2 :] = -1.0
    return s


# ---------------------------------------------------------------------------- layout

# Blocks of one shape are stacked up to this many edges: fewer, larger operations for small
# blocks, while a class's temporaries (edges x hidden floats each) stay near a core's L2
# cache. On ResNet-56 (h=64) stacking every same-shaped block into one class was 35% slower.
EDGES_PER_CLASS = 4096


@dataclass(frozen=True)
class BlockSpec:
    """Node ranges of one block (a row of ``layer_table``)."""

    identity: bool
    out_offset: int
    out_size: int
    in_offset: int
    in_size: int
    groups: int

    def target(self, reverse: bool) -> tuple[int, int]:
        """First node and number of nodes receiving messages in one direction (for the
        reverse direction: the block's input nodes)."""
        if reverse:
            return self.in_offset, (self.out_size if self.identity else self.in_size)
        return self.out_offset, self.out_size

    def count(self, reverse: bool) -> int:
        """Incoming edges per receiving node (the same for every node of the block)."""
        if self.identity:
            return 1
        return (self.out_size if reverse else self.in_size) // self.groups


@dataclass(frozen=True)
class BlockClass:
    """Blocks of one shape (at most ``EDGES_PER_CLASS`` edges together, unless one block is
    larger), whose edge states are stacked into one tensor."""

    identity: bool
    out_size: int
    in_size: int
    groups: int
    members: tuple[int, ...]  # block indices, in table order
    src_chunks: tuple[int, ...]  # node chunks holding the members' input rows, in order
    dst_chunks: tuple[int, ...]

    def edge_shape(self, hidden: int) -> tuple[int, ...]:
        if self.identity:
            return (len(self.members), self.out_size, hidden)
        return (len(self.members), self.out_size, self.in_size // self.groups, hidden)


@dataclass(frozen=True)
class Route:
    """How per-class statistics become one ``[N, 4, h]`` tensor. Each class's rows are split
    at ``splits``. Each of ``layers`` covers the node axis with pieces ``(nodes, feed)``,
    ``feed`` a (class, split part) pair or ``None`` (no edge): layer ``k`` holds the ``k``-th
    block writing each node, so a node written by two blocks (a conv and an identity
    residual) is fed by layers 0 and 1, and the layers are combined once, elementwise."""

    splits: tuple[tuple[int, ...], ...]
    layers: tuple[tuple[tuple[int, tuple[int, int] | None], ...], ...]


@dataclass(frozen=True)
class BlockLayout:
    """A graph's block structure as Python ints, built once per ``layer_table`` (cached) by
    :meth:`from_table`: the blocks, their classes (same shape -> stacked), the node "chunks"
    (ranges between all block boundaries) that node factors are split into, where each
    class's statistics land on the node axis in each direction, and incoming-edge counts."""

    num_nodes: int
    blocks: tuple[BlockSpec, ...]
    classes: tuple[BlockClass, ...]
    chunk_sizes: tuple[int, ...]
    forward: Route  # how class statistics land on the node axis, messages along edges
    reverse: Route  # ... and along flipped edges
    forward_counts: Tensor  # [num_nodes, 1] incoming edges per node (float64)
    reverse_counts: Tensor

    @staticmethod
    def from_table(layer_table: Tensor, num_nodes: int) -> BlockLayout:
        rows = tuple(tuple(r) for r in layer_table.tolist())
        return _layout(rows, int(num_nodes))

    def stack(self, blocks: Sequence[Tensor]) -> list[Tensor]:
        """Per-block edge states (in table order) -> one stacked tensor per class."""
        if len(blocks) != len(self.blocks):
            raise ValueError(
                f"expected {len(self.blocks)} block tensors (one per layer_table row), found {len(blocks)}"
            )
        return [torch.stack([blocks[i] for i in cls.members]) for cls in self.classes]

    def unstack(self, edges: Sequence[Tensor]) -> list[Tensor]:
        """Per-class edge states -> per-block views, in table order."""
        out: list[Tensor] = [None] * len(self.blocks)  # type: ignore[list-item]
        for cls, t in zip(self.classes, edges):
            for i, view in zip(cls.members, t.unbind(0)):
                out[i] = view
        return out


@lru_cache(maxsize=64)
def _layout(rows: tuple[tuple[int, ...], ...], num_nodes: int) -> BlockLayout:
    blocks = tuple(
        BlockSpec(
            identity=r[COL["kind"]] == EdgeKind.IDENTITY,
            out_offset=r[COL["out_offset"]],
            out_size=r[COL["out_size"]],
            in_offset=r[COL["in_offset"]],
            in_size=r[COL["out_size"]]
            if r[COL["kind"]] == EdgeKind.IDENTITY
            else r[COL["in_size"]],
            groups=r[COL["groups"]],
        )
        for r in rows
    )
    ranges = [b.target(reverse) for b in blocks for reverse in (True, False)]  # src, dst
    cuts = sorted({0, num_nodes, *(s for s, _ in ranges), *(s + n for s, n in ranges)})
    index = {c: k for k, c in enumerate(cuts)}
    spans = [tuple(range(index[s], index[s + n])) for s, n in ranges]

    same_shape: dict[tuple[bool, int, int, int], list[int]] = {}
    for i, b in enumerate(blocks):
        same_shape.setdefault((b.identity, b.out_size, b.in_size, b.groups), []).append(i)
    units = []
    for key, m in same_shape.items():
        edges = key[1] if key[0] else key[1] * (key[2] // key[3])
        step = max(1, EDGES_PER_CLASS // edges)
        units += [(key, m[k : k + step]) for k in range(0, len(m), step)]
    classes = tuple(
        BlockClass(
            *key,
            members=tuple(m),
            src_chunks=tuple(k for i in m for k in spans[2 * i]),
            dst_chunks=tuple(k for i in m for k in spans[2 * i + 1]),
        )
        for key, m in units
    )
    return BlockLayout(
        num_nodes,
        blocks,
        classes,
        chunk_sizes=tuple(b - a for a, b in zip(cuts[:-1], cuts[1:])),
        forward=_route(blocks, classes, num_nodes, reverse=False),
        reverse=_route(blocks, classes, num_nodes, reverse=True),
        forward_counts=_counts(blocks, num_nodes, reverse=False),
        reverse_counts=_counts(blocks, num_nodes, reverse=True),
    )


def _route(
    blocks: Sequence[BlockSpec], classes: Sequence[BlockClass], num_nodes: int, reverse: bool
) -> Route:
    """Cut the node axis where any class's target ranges start or end; the k-th block
    writing a piece goes to layer k. Within a layer, adjacent pieces fed by contiguous rows
    of one class (or by nothing) are merged, and each class is split once at the rows its
    pieces need."""
    ranges = []  # (first node, rows, class, first row)
    for c, cls in enumerate(classes):
        for k, i in enumerate(cls.members):
            start, n = blocks[i].target(reverse)
            ranges.append((start, n, c, k * n))
    cuts = sorted({0, num_nodes, *(s for s, *_ in ranges), *(s + n for s, n, *_ in ranges)})
    pieces = [
        (b - a, [(c, row + a - s) for s, n, c, row in ranges if s <= a and b <= s + n])
        for a, b in zip(cuts[:-1], cuts[1:])
    ]
    layers: list[list[tuple[int, tuple[int, int] | None]]] = []
    for k in range(max((len(f) for _, f in pieces), default=0) or 1):
        layer: list[tuple[int, tuple[int, int] | None]] = []
        for n, feeds in pieces:
            feed = feeds[k] if k < len(feeds) else None
            if layer and _continues(layer[-1], feed):
                m, prev = layer[-1]
                layer[-1] = (m + n, prev)
            else:
                layer.append((n, feed))
        layers.append(layer)
    bounds: list[set[int]] = [
        {0, len(cls.members) * _rows(blocks, cls, reverse)} for cls in classes
    ]
    for layer in layers:
        for n, feed in layer:
            if feed is not None:
                bounds[feed[0]].update((feed[1], feed[1] + n))
    starts = [sorted(b) for b in bounds]
    part = [{r: k for k, r in enumerate(st[:-1])} for st in starts]
    return Route(
        splits=tuple(tuple(b - a for a, b in zip(st[:-1], st[1:])) for st in starts),
        layers=tuple(
            tuple((n, None if f is None else (f[0], part[f[0]][f[1]])) for n, f in layer)
            for layer in layers
        ),
    )


def _continues(prev: tuple[int, tuple[int, int] | None], feed: tuple[int, int] | None) -> bool:
    n, prev_feed = prev
    if prev_feed is None or feed is None:
        return prev_feed is None and feed is None
    return prev_feed[0] == feed[0] and prev_feed[1] + n == feed[1]


def _rows(blocks: Sequence[BlockSpec], cls: BlockClass, reverse: bool) -> int:
    return blocks[cls.members[0]].target(reverse)[1]


def _counts(blocks: Sequence[BlockSpec], num_nodes: int, reverse: bool) -> Tensor:
    counts = torch.zeros(num_nodes, 1, dtype=torch.float64)
    for b in blocks:
        start, n = b.target(reverse)
        counts[start : start + n] += b.count(reverse)
    return counts


class MetaLayer(nn.Module):
    r"""The metanetwork's message-passing layer (METHOD.md section 3), on dense blocks.

    With :math:`\bar{h} = \mathrm{LayerNorm}(h)` (no affine),
    :math:`x = \sigma(W_1\bar{h})`, :math:`z = \sigma(W_2\bar{h})`,
    :math:`a = \sigma(W_3\bar{h})`, :math:`b = \sigma(W_4\bar{h})` (:math:`\sigma` = SiLU),
    one direction over edges :math:`j \to i` with features :math:`e_{ij}` computes

    .. math::
        m_i = W_5 \big[\mathrm{mean}, \mathrm{std}, \max, \min\big]_{j \in N(i)}
              \left(z_i \odot x_j \odot e_{ij}\right), \qquad
        \Delta e_{ij} = a_j \odot b_i \odot e_{ij}

    and the layer applies it forward and, with the same weights, over the flipped edges
    with features :math:`s \odot e` (:math:`s` = :func:`sign_vector`):

    .. math::
        h \leftarrow h + m^{\rightarrow} + m^{\leftarrow}, \qquad
        e \leftarrow e + \Delta e^{\rightarrow} + s \odot \Delta e^{\leftarrow}.

    Aggregations follow PyG: ``std`` is :math:`\sqrt{\max(\mathrm{var}, 10^{-5})}`, set to 0
    at the floor; a node without incoming edges gets 0 for all four.

    Args:
        hidden (int): Size of node and edge hidden states.

    Shapes:
        - **input:** node states :math:`(|V|, h)`; edge states as
          :meth:`BlockLayout.stack` gives them, one tensor per block class:
          :math:`(B, out, in / groups, h)` for ``B`` dense blocks of one shape,
          :math:`(B, n, h)` for ``B`` identity blocks of size ``n``
          (:meth:`BlockLayout.unstack` returns per-block views); a :class:`BlockLayout`.
        - **output:** node states and edge states of the same shapes.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.lin1 = nn.Linear(hidden, hidden)  # x: source factor of messages
        self.lin2 = nn.Linear(hidden, hidden)  # z: receiver factor of messages
        self.lin3 = nn.Linear(hidden, hidden)  # a: source factor of edge updates
        self.lin4 = nn.Linear(hidden, hidden)  # b: target factor of edge updates
        self.lin_out = nn.Linear(4 * hidden, hidden)
        self.register_buffer("sign", sign_vector(hidden), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin1, self.lin2, self.lin3, self.lin4, self.lin_out):
            lin.reset_parameters()

    def node_factors(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``[x | a | b]`` (``[N, 3h]``, what blocks read; one matmul) and ``z``."""
        hn = self.norm(h)
        lins = (self.lin1, self.lin3, self.lin4)
        weight = torch.cat([lin.weight for lin in lins])
        bias = torch.cat([lin.bias for lin in lins])
        return F.silu(F.linear(hn, weight, bias)), F.silu(self.lin2(hn))

    def forward(
        self, h: Tensor, edges: Sequence[Tensor], layout: BlockLayout
    ) -> tuple[Tensor, list[Tensor]]:
        if len(edges) != len(layout.classes) or h.size(0) != layout.num_nodes:
            raise ValueError(
                f"MetaLayer got {h.size(0)} nodes and {len(edges)} edge tensors; the layout has "
                f"{layout.num_nodes} nodes and {len(layout.classes)} block classes "
                f"(build both from the same graph, edges with layout.stack)"
            )
        xab, z = self.node_factors(h)
        chunks = xab.split(layout.chunk_sizes)
        fwd: list[Tensor] = []
        rev: list[Tensor] = []
        new_edges: list[Tensor] = []
        for cls, e in zip(layout.classes, edges):
            src = _gather(chunks, cls.src_chunks)
            dst = _gather(chunks, cls.dst_chunks)
            if cls.identity:
                f, r, e_new = _identity_blocks(e, src, dst)
            else:
                f, r, e_new = _DenseBlocks.apply(e, src, dst, cls.groups)
            fwd.append(f)
            rev.append(r)
            new_edges.append(e_new)
        # both directions at once: [2, N, 4, h] statistics; reverse messages carry s * e, and
        # the sign is a per-channel constant, pulled out of the reductions with z
        stats = torch.stack([_place(layout.forward, fwd, h), _place(layout.reverse, rev, h)])
        counts = torch.stack([layout.forward_counts, layout.reverse_counts])  # [2, N, 1]
        aggregated = _aggregate(stats, counts, torch.stack([z, z * self.sign]))
        return h + self.lin_out(aggregated).sum(0), new_edges

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}"


# ---------------------------------------------------------------------------- node side
def _gather(chunks: Sequence[Tensor], spans: Sequence[int]) -> Tensor:
    """Rows of the node factors a block class reads, ``[B * rows, 3h]`` (a copy of a few
    node ranges; its backward is a cheap ``narrow`` per range)."""
    if len(spans) == 1:
        return chunks[spans[0]]
    return torch.cat([chunks[k] for k in spans])


def _place(route: Route, stats: Sequence[Tensor], like: Tensor) -> Tensor:
    """Per-node ``[sum, sum of squares, max, -min]`` (``[N, 4, h]``) over every block
    class: one ``split`` per class, one ``cat`` along the node axis per layer of the route,
    and layers combined elementwise (sums add, maxima take the max)."""
    hidden = like.size(-1)
    parts = [t.split(sizes) if len(sizes) > 1 else (t,) for t, sizes in zip(stats, route.splits)]
    # Layer 0 pads nodes without incoming edges with 0 (PyG's value for all four
    # aggregations); later layers pad with 0 sums and -inf extrema, neutral for max.
    zero = like.new_zeros(1, 1, 1)
    neutral = torch.tensor(
        [0.0, 0.0, -math.inf, -math.inf], dtype=like.dtype, device=like.device
    ).view(1, 4, 1)
    total: Tensor | None = None
    for k, layer in enumerate(route.layers):
        pad = neutral if k else zero
        pieces = [pad.expand(n, 4, hidden) if f is None else parts[f[0]][f[1]] for n, f in layer]
        full = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        total = full if total is None else _Combine.apply(total, full)
    assert total is not None
    return total


class _Combine(torch.autograd.Function):
    """``[a0 + b0, a1 + b1, max(a2, b2), max(a3, b3)]`` of two ``[N, 4, h]`` statistics.
    Autograd's ``maximum`` backward costs about 7x an add on this machine (boolean masks);
    here it is one float mask (ties go to ``a``, a valid subgradient)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        out = a + b
        torch.maximum(a[:, 2:], b[:, 2:], out=out[:, 2:])
        mask = torch.empty_like(a[:, 2:])
        torch.ge(a[:, 2:], b[:, 2:], out=mask)
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        ga, gb = g.clone(), g.clone()
        torch.mul(g[:, 2:], mask, out=ga[:, 2:])
        gb[:, 2:].sub_(ga[:, 2:])
        return ga, gb


def _aggregate(stats: Tensor, counts: Tensor, factor: Tensor) -> Tensor:
    """``[mean, std, max, min]`` of the messages ``factor_i * y_ij`` from the statistics of
    ``y`` (``[..., N, 4, h]``): ``factor``, the receiving node's part of the message, is
    pulled out of the reductions."""
    total, squares, hi, neg_lo = stats.unbind(-2)
    lo = -neg_lo
    counts = counts.to(total.device, total.dtype).clamp(min=1)
    mean_y = total / counts
    var_y = squares / counts - mean_y * mean_y
    mean = factor * mean_y
    # PyG's std: var clamped at 1e-5 before the sqrt, then values at the floor set to 0;
    # the factor enters before the clamp so that the clamp sees the message variance.
    std = (factor * factor * var_y).clamp(min=STD_EPS).sqrt()
    std = std.masked_fill(std <= _STD_FLOOR, 0.0)
    positive = factor >= 0
    top, bottom = factor * hi, factor * lo
    return torch.cat(
        [mean, std, torch.where(positive, top, bottom), torch.where(positive, bottom, top)], dim=-1
    )


# ---------------------------------------------------------------------------- edge side
def _identity_blocks(e: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``B`` diagonals of size ``n`` (``e``: ``(B, n, h)``): one incoming edge per node in
    each direction, so ``y`` is its own sum, max and min. Plain autograd: these are small."""
    batch, n, hidden = e.shape
    xs, as_, bs = src.view(batch, n, 3 * hidden).chunk(3, dim=-1)
    xd, ad, bd = dst.view(batch, n, 3 * hidden).chunk(3, dim=-1)
    yf, yr = e * xs, e * xd
    fwd = torch.stack([yf, yf.square(), yf, -yf], dim=-2).view(batch * n, 4, hidden)
    rev = torch.stack([yr, yr.square(), yr, -yr], dim=-2).view(batch * n, 4, hidden)
    # e + a_j b_i e + s * (a_i b_j (s e)) = e * (1 + a_j b_i + a_i b_j), since s * s = 1
    return fwd, rev, torch.addcmul(e, e, torch.addcmul(as_ * bd, ad, bs))


class _DenseBlocks(torch.autograd.Function):
    """Both directions and the edge update of ``B`` stacked dense blocks of one shape, with a
    hand-written backward.

    ``e`` (``(B, out, in/g, h)``) is viewed as ``(B*g, out/g, in/g, h)``: output ``o`` of
    group ``k`` reads inputs ``k*in/g .. (k+1)*in/g``, so both directions stay dense.
    ``src`` / ``dst`` hold ``[x | a | b]`` of the blocks' input / output nodes. With
    ``y = e * x_src`` (reduced along ``in``, dim 2) and ``y' = e * x_dst`` (reduced along
    ``out``, dim 1) it returns ``[sum, sum of squares, max, -min]`` of both per receiving
    node and ``e * (1 + a_src b_dst + a_dst b_src)``.

    Only the inputs and the small maxima / minima are saved; ``y`` is recomputed in the
    backward pass. (Autograd's ``amax`` / ``aminmax`` backward costs several full passes per
    reduction; here it is one mask per reduction, split evenly between ties as autograd does.)
    """

    @staticmethod
    def forward(
        ctx, e: Tensor, src: Tensor, dst: Tensor, groups: int
    ) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        fwd, rev, e_new = _KERNELS["forward"](e, src, dst, groups)
        ctx.save_for_backward(e, src, dst, fwd[:, 2:], rev[:, 2:])
        ctx.groups = groups
        return fwd, rev, e_new

    @staticmethod
    def backward(ctx, g_fwd: Tensor, g_rev: Tensor, g_e: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        e, src, dst, ext_f, ext_r = ctx.saved_tensors
        de, dsrc, ddst = _KERNELS["backward"](
            e, src, dst, ctx.groups, ext_f, ext_r, g_fwd, g_rev, g_e
        )
        return de, dsrc, ddst, None


def _blocks_forward(
    e: Tensor, src: Tensor, dst: Tensor, groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The forward kernel of :class:`_DenseBlocks` (plain tensor code, no autograd).

    One full-size scratch buffer is reused (``out=`` / in place): fresh large allocations
    cost page faults that are a noticeable part of these memory-bound loops."""
    ev, (xs, as_, bs), (xd, ad, bd) = _views(e, src, dst, groups)
    hidden = e.size(-1)
    buf = ev * xs  # y of the forward direction
    fwd = [buf.sum(2), None, buf.amax(2), buf.amin(2).neg_()]
    fwd[1] = buf.square_().sum(2)
    torch.mul(ev, xd, out=buf)  # y of the reverse direction
    rev = [buf.sum(1), None, buf.amax(1), buf.amin(1).neg_()]
    rev[1] = buf.square_().sum(1)
    coef = torch.mul(as_, bd, out=buf).addcmul_(ad, bs)  # a_src b_dst + a_dst b_src
    e_new = torch.addcmul(ev, ev, coef)
    return (
        torch.stack(fwd, dim=-2).reshape(dst.size(0), 4, hidden),
        torch.stack(rev, dim=-2).reshape(src.size(0), 4, hidden),
        e_new.view_as(e),
    )


def _blocks_backward(
    e: Tensor,
    src: Tensor,
    dst: Tensor,
    groups: int,
    ext_f: Tensor,
    ext_r: Tensor,
    g_fwd: Tensor,
    g_rev: Tensor,
    g_e: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward kernel of :class:`_DenseBlocks`: gradients of ``e``, ``src``, ``dst``.
    ``y`` is recomputed; four full-size buffers are reused throughout."""
    ev, (xs, as_, bs), (xd, ad, bd) = _views(e, src, dst, groups)
    bg, out_g, in_g, hidden = ev.shape
    g_e = g_e.reshape(ev.shape)
    y = ev * xs
    mask = torch.empty_like(y)

    g = g_fwd.reshape(bg, out_g, 4, hidden).unsqueeze(2).unbind(3)  # broadcast along `in`
    ext = ext_f.reshape(bg, out_g, 2, hidden).unsqueeze(2).unbind(3)
    de = _stats_grad(y, 2, g, ext, mask)  # dL/dy, turned into dL/de below
    dxs = torch.mul(de, ev, out=y).sum(1, keepdim=True)
    de.mul_(xs)

    g = g_rev.reshape(bg, in_g, 4, hidden).unsqueeze(1).unbind(3)  # broadcast along `out`
    ext = ext_r.reshape(bg, in_g, 2, hidden).unsqueeze(1).unbind(3)
    dy = _stats_grad(torch.mul(ev, xd, out=y), 1, g, ext, mask)
    de.addcmul_(dy, xd)
    dxd = torch.mul(dy, ev, out=y).sum(2, keepdim=True)

    # e_new = e * (1 + c) with c = a_src b_dst + a_dst b_src
    coef = torch.mul(as_, bd, out=y).addcmul_(ad, bs).add_(1.0)
    de.addcmul_(g_e, coef)
    ge = torch.mul(g_e, ev, out=dy)
    das, dbs = (
        torch.mul(ge, bd, out=y).sum(1, keepdim=True),
        torch.mul(ge, ad, out=y).sum(1, keepdim=True),
    )
    dad, dbd = (
        torch.mul(ge, bs, out=y).sum(2, keepdim=True),
        torch.mul(ge, as_, out=y).sum(2, keepdim=True),
    )
    dsrc = torch.cat([dxs, das, dbs], dim=-1).reshape(src.shape)
    ddst = torch.cat([dxd, dad, dbd], dim=-1).reshape(dst.shape)
    return de.view_as(e), dsrc, ddst


_KERNELS = {"forward": _blocks_forward, "backward": _blocks_backward}


def compile_kernels(enable: bool = True) -> None:
    """Run the dense-block kernels under ``torch.compile`` (inductor fuses each direction's
    elementwise work and reductions into a few loops); ``enable=False`` restores eager.

    Shapes are dynamic, and "duck shaping" (equal sizes sharing one symbol, which would
    recompile for every new pattern of equal block sizes) is switched off while enabled. The
    first call per shape pattern compiles (minutes on 2 cores); later processes reuse
    inductor's on-disk cache.
    """
    import torch.fx.experimental._config as fx_config

    fx_config.use_duck_shape = not enable
    if enable:
        _KERNELS["forward"] = torch.compile(_blocks_forward, dynamic=True, fullgraph=True)
        _KERNELS["backward"] = torch.compile(_blocks_backward, dynamic=True, fullgraph=True)
    else:
        _KERNELS.update(forward=_blocks_forward, backward=_blocks_backward)


def _views(
    e: Tensor, src: Tensor, dst: Tensor, groups: int
) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
    batch, out, in_g, hidden = e.shape
    bg, out_g = batch * groups, out // groups
    ev = e.reshape(bg, out_g, in_g, hidden)
    s = tuple(t.reshape(bg, 1, in_g, hidden) for t in src.chunk(3, dim=-1))
    d = tuple(t.reshape(bg, out_g, 1, hidden) for t in dst.chunk(3, dim=-1))
    return ev, s, d


def _stats_grad(
    y: Tensor, dim: int, grads: Sequence[Tensor], extrema: Sequence[Tensor], mask: Tensor
) -> Tensor:
    """d loss / d y for ``[sum, sum of squares, max, -min]`` of ``y`` along ``dim`` (a new
    tensor; ``mask`` is scratch). The gradient of an extremum is split evenly between ties,
    as autograd's ``amax`` does."""
    g_sum, g_sq, g_max, g_neg_min = grads
    hi, neg_lo = extrema
    dy = torch.addcmul(g_sum, y, g_sq, value=2.0)
    torch.eq(y, hi, out=mask)  # a float mask: cheaper than a bool mask and a cast
    dy.addcmul_(mask, g_max / mask.sum(dim, keepdim=True))
    torch.eq(y, neg_lo.neg(), out=mask)
    dy.addcmul_(mask, g_neg_min / mask.sum(dim, keepdim=True), value=-1.0)
    return dy

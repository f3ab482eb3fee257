"""Trace a model with torch.fx and follow its channels to build a :class:`Plan`.

Every fx value that carries channels gets a :class:`Chan`: which channel axis it has and
which graph nodes its channels are (segments of node sets). Layers read one contiguous
node range and write a fresh node set; a residual add or a gate merges the sets of the
layers that feed it (union-find), and values that are not a layer's own output reach a
merged set through identity edges. Nothing here touches parameter values.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision import ops as tv_ops

from .plan import Block, NodePlacement, NodeSetInfo, Plan, role_column
from .schema import ROLES, SLOT, EdgeKind, NodeKind, NormKind

__all__ = ["EncodingError", "build_plan"]


class EncodingError(ValueError):
    """A model, or one of its ops, that the encoder cannot represent exactly."""


# ---------------------------------------------------------------- op vocabularies
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.PReLU,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Softmax,
    nn.LogSoftmax,
)
_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.sigmoid,
    F.tanh,
    F.hardswish,
    F.hardsigmoid,
    F.leaky_relu,
    F.elu,
    F.mish,
    F.softplus,
    F.hardtanh,
    F.dropout,
    F.softmax,
    F.log_softmax,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.softmax,
    torch.log_softmax,
    torch.clone,
    torch.nn.functional.relu_,
    torch.relu_,
    tv_ops.stochastic_depth,
}
_ELEMENTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "contiguous",
    "clone",
    "softmax",
    "log_softmax",
    "to",
    "float",
    "type_as",
    "detach",
}
_POOL_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_SHAPE_ONLY = {"size", "dim"}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


# ---------------------------------------------------------------- tracing state
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
    norm: tuple[NormKind, str, bool, bool] | None = None  # kind, module path, running stats, affine


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


class _Tracer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.sets: list[RawSet] = []
        self.parent: list[int] = []
        self.blocks: list[RawBlock] = []
        self.contributors: list[Contributor] = []
        self.weights: list[str] = []
        self.depth = 0
        self.used_params: set[str] = set()

    # ------------------------------------------------------------ node sets
    def new_set(self, name: str, size: int, kind: NodeKind) -> int:
        self.sets.append(RawSet(name, size, kind, self.depth))
        self.parent.append(len(self.parent))
        return len(self.sets) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def merge(self, keep: int, other: int, kind: EdgeKind, where: str) -> None:
        keep, other = self.find(keep), self.find(other)
        if keep == other:
            return
        if self.sets[keep].size != self.sets[other].size:
            raise EncodingError(
                f"{where}: cannot merge node sets of sizes {self.sets[keep].size} and "
                f"{self.sets[other].size}"
            )
        for c in self.sets[other].contributors:
            self.blocks[self.contributors[c].block].kind = kind
        self.sets[keep].contributors += self.sets[other].contributors
        self.parent[other] = keep

    def identity_into(self, chan: Chan, out_set: int, name: str) -> None:
        start = 0
        for s, a, b in chan.segs:
            self.blocks.append(
                RawBlock(
                    name, EdgeKind.IDENTITY, s, a, b - a, out_set, start, b - a, depth=self.depth
                )
            )
            start += b - a

    def contiguous(self, chan: Chan, name: str) -> tuple[int, int]:
        """(set, start) of a single node range holding ``chan``'s channels in order."""
        if len(chan.segs) == 1:
            return chan.segs[0][0], chan.segs[0][1]
        s = self.new_set(f"{name}:concat", chan.size, NodeKind.CONCAT)
        self.identity_into(chan, s, f"{name}:concat")
        return s, 0

    def add_layer(
        self,
        name: str,
        kind: EdgeKind,
        chan: Chan,
        out_size: int,
        weight: str,
        *,
        bias: str | None,
        bias_start: int = 0,
        set_kind: NodeKind = NodeKind.HIDDEN,
        **block_kw: object,
    ) -> int:
        """A conv/linear block reading ``chan`` and writing a new node set; returns the
        contributor id."""
        self.depth += 1
        in_set, in_start = self.contiguous(chan, name)
        out_set = self.new_set(name, out_size, set_kind)
        self.blocks.append(
            RawBlock(
                name,
                kind,
                in_set,
                in_start,
                chan.size,
                out_set,
                0,
                out_size,
                weight=weight,
                depth=self.depth,
                **block_kw,
            )  # type: ignore[arg-type]
        )
        self.contributors.append(Contributor(name, len(self.blocks) - 1, bias, bias_start))
        cid = len(self.contributors) - 1
        self.sets[out_set].contributors.append(cid)
        return cid

    def set_of(self, cid: int) -> int:
        return self.find(self.blocks[self.contributors[cid].block].out_set)

    # ------------------------------------------------------------ fx walk
    def run(self, gm: torch.fx.GraphModule) -> list[int]:
        env: dict[torch.fx.Node, object] = {}
        outputs: list[int] = []
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = self.placeholder(node)
            elif node.op == "get_attr":
                self.used_params.add(str(node.target))
                env[node] = None
            elif node.op == "output":
                for v in _flatten(_map_args(node.args, env)):
                    if isinstance(v, Chan):
                        outputs += [self.find(s) for s, _, _ in v.segs]
            else:
                env[node] = self.visit(node, env)
        return outputs

    def placeholder(self, node: torch.fx.Node) -> Chan | None:
        meta = node.meta.get("tensor_meta")
        if meta is None or len(meta.shape) < 2:
            return None
        size = int(meta.shape[1])
        s = self.new_set(f"input:{node.name}", size, NodeKind.INPUT)
        return Chan(1, ((s, 0, size),))

    def visit(self, node: torch.fx.Node, env: dict) -> object:
        args = _map_args(node.args, env)
        kwargs = _map_args(node.kwargs, env)
        chans = [v for v in _flatten((args, kwargs)) if isinstance(v, Chan)]
        if node.op == "call_module":
            return self.call_module(node, self.modules[str(node.target)], args, kwargs)
        if not chans:
            return None  # parameters, shapes: no channels
        target = node.target
        name = _where(node)
        if node.op == "call_function" and target is operator.getitem:
            return self.getitem(node, args, name)
        if node.meta.get("tensor_meta") is None:
            return None  # shapes, sizes, asserts: no channels flow through them
        if target in {F.layer_norm, torch.layer_norm}:
            return self.functional_layer_norm(node, args[0])
        if target in _ELEMENTWISE_FUNCTIONS or (
            node.op == "call_method" and target in _ELEMENTWISE_METHODS
        ):
            return self.passthrough(node, args[0])
        if (
            target in _POOL_FUNCTIONS
            or (node.op == "call_method" and target in {"mean", "sum", "amax"})
            or target in {torch.mean, torch.sum}
        ):
            return self.reduce(node, args[0])
        if target in _RESHAPE_FUNCTIONS or (
            node.op == "call_method" and target in _RESHAPE_METHODS
        ):
            return self.reshape(node, args[0], name)
        if node.op == "call_method" and target in _SHAPE_ONLY:
            return None
        if target in {torch.permute, torch.transpose} or (
            node.op == "call_method" and target in {"permute", "transpose"}
        ):
            return self.permute(node, args, name)
        if target is torch.cat or target is torch.concat:
            return self.cat(node, args, kwargs, name)
        if target in _ADD or (
            node.op == "call_method" and target in {"add", "add_", "sub", "sub_"}
        ):
            return self.add(node, args, name)
        if target in _MUL or (node.op == "call_method" and target in {"mul", "mul_"}):
            return self.mul(node, args, name)
        if target in {operator.truediv, torch.div} or (
            node.op == "call_method" and target in {"div", "div_"}
        ):
            if isinstance(args[1], Chan):
                raise EncodingError(f"{name}: division by a channel tensor is not supported")
            return self.keep(node, args[0])
        if node.op == "call_method" and target == "expand":
            return self.keep(node, args[0])
        op = getattr(target, "__name__", str(target))
        raise EncodingError(f"{name}: op '{op}' ({node.op}) on channel tensors is not supported")

    # ------------------------------------------------------------ modules
    def call_module(self, node: torch.fx.Node, mod: nn.Module, args: tuple, kwargs: dict) -> object:
        path = str(node.target)
        x = args[0] if args else None
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return self.conv(node, path, mod, _need(x, path, mod))
        if isinstance(mod, nn.Linear):
            return self.linear(node, path, mod, _need(x, path, mod))
        if isinstance(mod, _NORMS):
            return self.norm(node, path, mod, _need(x, path, mod))
        if isinstance(mod, nn.MultiheadAttention):
            return self.attention(node, path, mod, args, kwargs)
        if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
            raise EncodingError(f"{path}: per-channel PReLU is not supported")
        if isinstance(mod, _ELEMENTWISE_MODULES):
            return self.passthrough(node, x) if isinstance(x, Chan) else None
        if isinstance(mod, _POOL_MODULES):
            return self.reduce(node, x) if isinstance(x, Chan) else None
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return self.reshape(node, x, path) if isinstance(x, Chan) else None
        raise EncodingError(
            f"{path}: module {type(mod).__name__} is not supported by the graph encoder"
        )

    def conv(self, node: torch.fx.Node, path: str, mod: nn.Conv2d, x: Chan) -> Chan:
        if x.dim != 1 or x.inner != 1 or x.size != mod.in_channels:
            raise EncodingError(
                f"{path}: expected {mod.in_channels} input channels on axis 1, found "
                f"{x.size * x.inner} on axis {x.dim}"
            )
        if mod.groups == 1:
            kind = EdgeKind.CONV
        elif mod.groups == mod.in_channels == mod.out_channels:
            kind = EdgeKind.DEPTHWISE_CONV
        else:
            kind = EdgeKind.GROUPED_CONV
        kernel = tuple(mod.weight.shape[2:])
        padding = mod.padding[0] if isinstance(mod.padding, tuple) else -1  # -1: "same"/"valid"
        cid = self.add_layer(
            path,
            kind,
            x,
            mod.out_channels,
            f"{path}.weight",
            bias=f"{path}.bias" if mod.bias is not None else None,
            groups=mod.groups,
            width=math.prod(kernel),
            kernel=kernel,
            stride=mod.stride[0],
            dilation=mod.dilation[0],
            padding=padding,
        )
        return Chan(1, ((self.set_of(cid), 0, mod.out_channels),), fresh=cid)

    def linear(self, node: torch.fx.Node, path: str, mod: nn.Linear, x: Chan) -> Chan:
        rank = _rank(node.args[0])
        if x.dim != rank - 1 or x.size * x.inner != mod.in_features:
            raise EncodingError(
                f"{path}: expected {mod.in_features} features on the last axis, found "
                f"{x.size}x{x.inner} on axis {x.dim} of a rank-{rank} tensor"
            )
        cid = self.add_layer(
            path,
            EdgeKind.LINEAR,
            x,
            mod.out_features,
            f"{path}.weight",
            bias=f"{path}.bias" if mod.bias is not None else None,
            width=x.inner,
            kernel=(x.inner,) if x.inner > 1 else (),
        )
        return Chan(_rank(node) - 1, ((self.set_of(cid), 0, mod.out_features),), fresh=cid)

    def norm(self, node: torch.fx.Node, path: str, mod: nn.Module, x: Chan) -> Chan:
        if isinstance(mod, nn.LayerNorm):
            self._check_layer_norm(node, path, tuple(mod.normalized_shape), x)
            kind = NormKind.LAYER
        else:
            kind = NormKind.GROUP if isinstance(mod, nn.GroupNorm) else NormKind.BATCH
            if x.dim != 1:
                raise EncodingError(f"{path}: expected channels on axis 1, found axis {x.dim}")
        running = getattr(mod, "running_mean", None) is not None
        affine = getattr(mod, "weight", None) is not None
        return self.attach_norm(node, path, kind, running, affine, x)

    def functional_layer_norm(self, node: torch.fx.Node, x: Chan) -> Chan:
        weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
        bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
        shape = node.args[1] if len(node.args) > 1 else node.kwargs["normalized_shape"]
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        where = _where(node)
        params = [w for w in (weight, bias) if w is not None]
        if any(not (isinstance(w, torch.fx.Node) and w.op == "get_attr") for w in params):
            raise EncodingError(f"{where}: layer_norm weights must be module parameters")
        paths = {str(w.target).rsplit(".", 1)[0] for w in params}
        names = {str(w.target).rsplit(".", 1)[-1] for w in params}
        if len(params) == 1 or len(paths) != 1 or names != {"weight", "bias"}:
            raise EncodingError(f"{where}: layer_norm needs both weight and bias of one module")
        path = paths.pop() if params else f"{node.name}"
        self._check_layer_norm(node, path, shape, x)
        return self.attach_norm(node, path, NormKind.LAYER, False, bool(params), x)

    def _check_layer_norm(self, node: torch.fx.Node, path: str, shape: tuple, x: Chan) -> None:
        if len(shape) != 1 or x.dim != _rank(node.args[0]) - 1:
            raise EncodingError(
                f"{path}: LayerNorm must normalise exactly the channel axis (last); found "
                f"normalized_shape={shape}, channel axis {x.dim}"
            )

    def attach_norm(
        self, node: torch.fx.Node, path: str, kind: NormKind, running: bool, affine: bool, x: Chan
    ) -> Chan:
        """Norm values go into the node features of the layer whose output they normalise;
        a norm over channels that are not one layer's own output gets a node set."""
        if x.inner != 1:
            raise EncodingError(f"{path}: normalisation of flattened channels is not supported")
        norm = (kind, path, running, affine)
        owner = x.fresh if _sole_user(node.args[0]) else None
        if owner is not None and self.contributors[owner].norm is None:
            self.contributors[owner].norm = norm
            return Chan(x.dim, x.segs, fresh=owner)
        self.depth += 1
        s = self.new_set(path, x.size, NodeKind.NORM)
        self.identity_into(x, s, path)
        self.contributors.append(Contributor(path, len(self.blocks) - 1, None, 0, norm))
        self.sets[s].contributors.append(len(self.contributors) - 1)
        return Chan(x.dim, ((s, 0, x.size),), fresh=None)

    def attention(
        self, node: torch.fx.Node, path: str, mod: nn.MultiheadAttention, args: tuple, kwargs: dict
    ) -> _TupleOf:
        if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
            raise EncodingError(
                f"{path}: MultiheadAttention with separate kdim/vdim, bias_k/bias_v or "
                "add_zero_attn is not supported"
            )
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args) :])[:3]
        e = mod.embed_dim
        bias = f"{path}.in_proj_bias" if mod.in_proj_bias is not None else None
        chans = {}
        for i, (tag, kind, x) in enumerate(
            (("q", EdgeKind.ATTN_Q, q), ("k", EdgeKind.ATTN_K, k), ("v", EdgeKind.ATTN_V, v))
        ):
            x = _need(x, path, mod)
            if (
                x.dim
                != _rank(
                    node.args[i]
                    if i < len(node.args)
                    else node.kwargs[("query", "key", "value")[i]]
                )
                - 1
            ):
                raise EncodingError(
                    f"{path}: expected embeddings on the last axis, found axis {x.dim}"
                )
            cid = self.add_layer(
                f"{path}:{tag}",
                kind,
                x,
                e,
                f"{path}.in_proj_weight",
                bias=bias,
                bias_start=i * e,
                set_kind=NodeKind.ATTENTION,
                heads=mod.num_heads,
            )
            self.depth -= 1  # q, k and v are computed side by side
            chans[tag] = Chan(x.dim, ((self.set_of(cid), 0, e),))
        self.depth += 1
        out = mod.out_proj
        cid = self.add_layer(
            f"{path}.out_proj",
            EdgeKind.ATTN_OUT,
            chans["v"],
            out.out_features,
            f"{path}.out_proj.weight",
            bias=f"{path}.out_proj.bias" if out.bias is not None else None,
            heads=mod.num_heads,
        )
        rank = _rank(node.args[0] if node.args else node.kwargs["query"])
        return _TupleOf(
            [Chan(rank - 1, ((self.set_of(cid), 0, out.out_features),), fresh=cid), None]
        )

    # ------------------------------------------------------------ functions
    def passthrough(self, node: torch.fx.Node, x: Chan) -> Chan:
        return Chan(x.dim, x.segs, x.inner, x.fresh if _sole_user(node.args[0]) else None)

    def keep(self, node: torch.fx.Node, x: object) -> Chan | None:
        return Chan(x.dim, x.segs, x.inner) if isinstance(x, Chan) else None

    def reduce(self, node: torch.fx.Node, x: Chan) -> Chan:
        """Pools and reductions over non-channel axes."""
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if len(in_shape) == len(out_shape):
            if out_shape[x.dim] != in_shape[x.dim]:
                raise EncodingError(
                    f"{_where(node)}: reduction over the channel axis is not supported"
                )
            return Chan(x.dim, x.segs, x.inner)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        dims = [d % len(in_shape) for d in dims]
        if x.dim in dims:
            raise EncodingError(f"{_where(node)}: reduction over the channel axis is not supported")
        return Chan(x.dim - sum(d < x.dim for d in dims), x.segs, x.inner)

    def reshape(self, node: torch.fx.Node, x: Chan, name: str) -> Chan:
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        before = math.prod(in_shape[: x.dim])
        channels = in_shape[x.dim]
        for d in range(len(out_shape)):
            if math.prod(out_shape[:d]) != before:
                continue
            if out_shape[d] == channels and math.prod(out_shape[d + 1 :]) == math.prod(
                in_shape[x.dim + 1 :]
            ):
                return Chan(d, x.segs, x.inner, x.fresh if _sole_user(node.args[0]) else None)
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
        rank = _rank(node.args[0])
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
        if isinstance(x, _TupleOf):
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
        dim = dim % _rank(node)
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
        _check_aligned(x, y, name)
        fresh = [c.fresh for c, n in chans if c.fresh is not None and _sole_user(n)]
        if fresh:
            target = self.set_of(fresh[0])
            for f in fresh[1:]:
                self.merge(target, self.set_of(f), EdgeKind.PROJECTION, name)
        else:
            target = self.new_set(f"{name}:sum", x.size, NodeKind.SUM)
        for c, n in chans:
            if c.fresh is None or not _sole_user(n):
                self.identity_into(c, target, name)
        return Chan(x.dim, ((target, 0, x.size),), fresh=None)

    def mul(self, node: torch.fx.Node, args: tuple, name: str) -> Chan | None:
        chans = [(a, n) for a, n in zip(args, node.args) if isinstance(a, Chan)]
        if len(chans) == 1:
            return self.keep(node, chans[0][0])
        (x, xn), (y, yn) = chans[:2]
        gates = [c for c, n in chans if c.fresh is not None and _sole_user(n)]
        kept = [c for c, n in chans if not (c.fresh is not None and _sole_user(n))]
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
    def finish(
        self, outputs: list[int], state: dict[str, torch.Tensor], param_keys: list[str]
    ) -> Plan:
        for s in outputs:
            if self.sets[s].kind == NodeKind.HIDDEN:
                self.sets[s].kind = NodeKind.OUTPUT
        reps = [i for i in range(len(self.sets)) if self.find(i) == i]
        offsets, total = {}, 0
        for r in reps:
            offsets[r] = total
            total += self.sets[r].size
        placements: list[NodePlacement] = []
        infos = []
        for r in reps:
            rs = self.sets[r]
            if len(rs.contributors) > ROLES:
                names = [self.contributors[c].name for c in rs.contributors]
                raise EncodingError(
                    f"{rs.name}: {len(names)} layers write the same channels ({', '.join(names)}); "
                    f"the schema holds at most {ROLES}"
                )
            norms = []
            for role, c in enumerate(rs.contributors):
                con = self.contributors[c]
                if con.bias is not None:
                    placements.append(
                        NodePlacement(
                            con.bias,
                            offsets[r],
                            rs.size,
                            role_column(role, SLOT["bias"]),
                            con.bias_start,
                        )
                    )
                norms.append(con.norm[0] if con.norm else NormKind.NONE)
                if con.norm:
                    _, path, running, affine = con.norm
                    fields = [("weight", "weight"), ("bias", "norm_bias")] if affine else []
                    if running:
                        fields += [("running_mean", "running_mean"), ("running_var", "running_var")]
                    for attr, slot in fields:
                        placements.append(
                            NodePlacement(
                                f"{path}.{attr}", offsets[r], rs.size, role_column(role, SLOT[slot])
                            )
                        )
            norms += [NormKind.NONE] * (ROLES - len(norms))
            infos.append(NodeSetInfo(rs.name, rs.kind, offsets[r], rs.size, rs.depth, tuple(norms)))
        blocks, weights, seen = [], [], {}
        edge_offset = value_offset = 0
        for rb in self.blocks:  # creation order is topological
            if rb.weight is not None and rb.weight not in seen:
                seen[rb.weight] = value_offset
                weights.append((rb.weight, tuple(state[rb.weight].shape)))
            b = Block(
                rb.name,
                rb.kind,
                offsets[self.find(rb.out_set)] + rb.out_start,
                rb.out_size,
                offsets[self.find(rb.in_set)] + rb.in_start,
                rb.in_size,
                rb.groups,
                rb.width,
                edge_offset,
                value_offset,
                rb.kernel,
                rb.stride,
                rb.dilation,
                rb.padding,
                rb.depth,
                rb.heads,
            )
            blocks.append(b)
            edge_offset += b.num_edges
            value_offset += b.num_values
        placed = {w for w, _ in weights} | {p.key for p in placements}
        state_keys = list(state)
        carried = [k for k in state_keys if k not in placed]
        dtypes = {state[w].dtype for w, _ in weights}
        if len(dtypes) > 1:
            raise EncodingError(
                f"model weights mix dtypes {sorted(map(str, dtypes))}; cast the model first"
            )
        plan = Plan(
            blocks,
            infos,
            placements,
            weights,
            carried,
            param_keys,
            state_keys,
            total,
            edge_offset,
            value_offset,
            dtypes.pop() if dtypes else torch.float32,
        )
        plan.set_coverage({k: v.numel() for k, v in state.items()})
        return plan


# ---------------------------------------------------------------- helpers
class _TupleOf:
    def __init__(self, items: object) -> None:
        self.items = list(items) if isinstance(items, (list, tuple)) else [items]


def _map_args(a: object, env: dict) -> object:
    return torch.fx.node.map_arg(a, lambda n: env.get(n))


def _flatten(a: object) -> list:
    if isinstance(a, (list, tuple)):
        return [y for x in a for y in _flatten(x)]
    if isinstance(a, dict):
        return [y for x in a.values() for y in _flatten(x)]
    if isinstance(a, _TupleOf):
        return _flatten(a.items)
    return [a]


def _shape(node: object) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    if meta is None or not hasattr(meta, "shape"):
        raise EncodingError(f"{node}: no shape recorded for this value")
    return tuple(int(s) for s in meta.shape)


def _rank(node: object) -> int:
    return len(_shape(node))


def _sole_user(node: object) -> bool:
    return isinstance(node, torch.fx.Node) and len(node.users) == 1


def _where(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    path = list(stack.values())[-1][0] if stack else ""
    op = getattr(node.target, "__name__", str(node.target))
    return f"{path + ': ' if path else ''}{node.name} ({op})"


def _need(x: object, path: str, mod: nn.Module) -> Chan:
    if not isinstance(x, Chan):
        raise EncodingError(
            f"{path}: {type(mod).__name__} input does not come from the network input"
        )
    return x


def _check_aligned(x: Chan, y: Chan, name: str) -> None:
    if x.size != y.size or x.inner != y.inner:
        raise EncodingError(f"{name}: operands have {x.size} and {y.size} channels")


def build_plan(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Plan:
    """Trace ``model`` on ``example_inputs`` and compute its graph structure."""
    was_training = model.training
    model.eval()
    try:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as exc:  # fx raises many types; name the model and the cause
            raise EncodingError(
                f"{type(model).__name__}: torch.fx cannot trace this model ({type(exc).__name__}: {exc})"
            ) from exc
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
        tracer = _Tracer(model)
        outputs = tracer.run(gm)
        state = model.state_dict()
        param_keys = [k for k, _ in model.named_parameters()]
        return tracer.finish(outputs, state, param_keys)
    finally:
        model.train(was_training)

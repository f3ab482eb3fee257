"""How the tracer reads layers: conv, linear, norms and attention write node sets."""

from __future__ import annotations

import math

import torch
import torch.fx
from torch import nn

from .channels import (
    Chan,
    Contributor,
    EncodingError,
    TupleOf,
    describe,
    need,
    rank_of,
    sole_user,
)
from .schema import EdgeKind, NodeKind, NormKind
from .vocab import ELEMENTWISE_MODULES, NORMS, POOL_MODULES

__all__ = ["LayerRules"]


class LayerRules:
    """Mixin of :class:`~graph_encoding.trace.Tracer`: one method per supported layer."""

    def call_module(self, node: torch.fx.Node, mod: nn.Module, args: tuple, kwargs: dict) -> object:
        path = str(node.target)
        x = args[0] if args else None
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return self.conv(node, path, mod, need(x, path, mod))
        if isinstance(mod, nn.Linear):
            return self.linear(node, path, mod, need(x, path, mod))
        if isinstance(mod, NORMS):
            return self.norm(node, path, mod, need(x, path, mod))
        if isinstance(mod, nn.MultiheadAttention):
            return self.attention(node, path, mod, args, kwargs)
        if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
            raise EncodingError(f"{path}: per-channel PReLU is not supported")
        if isinstance(mod, ELEMENTWISE_MODULES):
            return self.passthrough(node, x) if isinstance(x, Chan) else None
        if isinstance(mod, POOL_MODULES):
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
        rank = rank_of(node.args[0])
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
        return Chan(rank_of(node) - 1, ((self.set_of(cid), 0, mod.out_features),), fresh=cid)

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
        where = describe(node)
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
        if len(shape) != 1 or x.dim != rank_of(node.args[0]) - 1:
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
        owner = x.fresh if sole_user(node.args[0]) else None
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
    ) -> TupleOf:
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
            x = need(x, path, mod)
            if (
                x.dim
                != rank_of(
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
        rank = rank_of(node.args[0] if node.args else node.kwargs["query"])
        return TupleOf(
            [Chan(rank - 1, ((self.set_of(cid), 0, out.out_features),), fresh=cid), None]
        )

    # ------------------------------------------------------------ functions
